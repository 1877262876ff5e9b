// init's end of the control connection to the agent. Sends never block init: events wait
// in an outbox until the socket has room. When the agent goes away (EOF or error) the
// connection is dropped and init carries on; attach() takes a new connection.
#pragma once

#include <capnp/message.h>
#include <kj/io.h>
#include <kj/vector.h>

#include <deque>

#include "isolator/init_protocol.h"

namespace nodeagent::isolator::init {

class Control {
 public:
  Control() = default;
  KJ_DISALLOW_COPY(Control);

  // Takes a connected SOCK_SEQPACKET socket (made non-blocking here).
  void attach(kj::AutoCloseFd socket);
  void disconnect();
  bool connected() const { return socket_.get() >= 0; }
  int fd() const { return socket_.get(); }
  bool hasPendingOutput() const { return !outbox_.empty(); }

  // Queues an event with its fds (closed here once sent); dropped if disconnected.
  void send(capnp::MessageBuilder& event, kj::Vector<kj::AutoCloseFd> fds = {});
  // Sends queued events while the socket takes them (call on POLLOUT).
  void flush();
  // One request, or null if none is waiting or the connection just closed.
  kj::Maybe<InitMessage> receive();

 private:
  kj::AutoCloseFd socket_;
  std::deque<InitDatagram> outbox_;
  InitDatagramReceiver receiver_;
};

// Writes a line to init's stderr (the agent's log, or /dev/null).
void logError(const char* what, const char* detail);

}  // namespace nodeagent::isolator::init
