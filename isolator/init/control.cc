#include "isolator/init/control.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <kj/debug.h>

#include <cstring>
#include <string>

namespace nodeagent::isolator::init {

void logError(const char* what, const char* detail) {
  std::string line = std::string("nodeagent-init: ") + what + ": " + detail + "\n";
  ssize_t ignored = write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
}

void Control::attach(kj::AutoCloseFd socket) {
  int flags;
  KJ_SYSCALL(flags = fcntl(socket, F_GETFL));
  KJ_SYSCALL(fcntl(socket, F_SETFL, flags | O_NONBLOCK));
  KJ_SYSCALL(fcntl(socket, F_SETFD, FD_CLOEXEC));
  outbox_.clear();
  socket_ = kj::mv(socket);
}

void Control::disconnect() {
  outbox_.clear();
  socket_ = nullptr;
}

void Control::send(capnp::MessageBuilder& event, kj::Vector<kj::AutoCloseFd> fds) {
  if (!connected()) return;
  InitDatagram datagram(event);
  for (auto& fd : fds) datagram.attach(kj::mv(fd));
  outbox_.push_back(kj::mv(datagram));
  flush();
}

void Control::flush() {
  while (connected() && !outbox_.empty()) {
    try {
      if (!outbox_.front().sendTo(socket_, MSG_DONTWAIT)) return;  // full: wait for POLLOUT
    } catch (const kj::Exception& e) {
      logError("control connection lost", e.getDescription().cStr());
      disconnect();
      return;
    }
    outbox_.pop_front();
  }
}

kj::Maybe<InitMessage> Control::receive() {
  if (!connected()) return nullptr;
  ssize_t n = recvmsg(socket_, receiver_.header(), MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return nullptr;
    logError("control connection lost", strerror(errno));
    disconnect();
    return nullptr;
  }
  try {
    KJ_IF_MAYBE (message, receiver_.finish(n)) {
      return kj::mv(*message);
    }
  } catch (const kj::Exception& e) {
    // A bad datagram (fds already closed) is dropped; the connection stays.
    logError("bad request", e.getDescription().cStr());
    return nullptr;
  }
  disconnect();  // EOF: the agent went away. The sandbox lives on.
  return nullptr;
}

}  // namespace nodeagent::isolator::init
