// Framing of the agent <-> init protocol (schema/init.capnp): one Cap'n Proto message per
// SOCK_SEQPACKET datagram, with up to kMaxInitMessageFds descriptors beside it as
// SCM_RIGHTS. The encode/decode functions do no I/O, and InitDatagram /
// InitDatagramReceiver expose their msghdr, so an event loop (io_uring) can do the
// sendmsg/recvmsg itself; the blocking helpers are for init and tests.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <capnp/message.h>
#include <kj/array.h>
#include <kj/io.h>
#include <kj/memory.h>
#include <kj/vector.h>

#include "schema/init.capnp.h"

namespace nodeagent::isolator {

constexpr size_t kMaxInitMessageBytes = 256 * 1024;
// The most any message carries: a zygote request (sync, control, stderr, netns, listener).
constexpr size_t kMaxInitMessageFds = 5;

// The flat serialization of `message`; throws if it exceeds kMaxInitMessageBytes.
kj::Array<kj::byte> encodeInitMessage(capnp::MessageBuilder& message);

// Parses one datagram (copied into aligned storage). Throws on malformed or oversized input.
kj::Own<capnp::MessageReader> decodeInitMessage(kj::ArrayPtr<const kj::byte> datagram);

// Sets SO_SNDBUF/SO_RCVBUF so a kMaxInitMessageBytes datagram fits.
void configureInitSocket(int fd);

// An outgoing datagram: the encoded message and the fds that travel with it.
class InitDatagram {
 public:
  explicit InitDatagram(capnp::MessageBuilder& message);
  InitDatagram(InitDatagram&&) = default;
  InitDatagram& operator=(InitDatagram&&) = default;

  // The datagram owns attached fds and closes them when destroyed (the receiver gets its
  // own copies). At most kMaxInitMessageFds.
  void attach(kj::AutoCloseFd fd);
  // Fds the caller keeps owning; they must stay open until the datagram is sent.
  void attachBorrowed(int fd);

  // One sendmsg(MSG_NOSIGNAL | flags). Returns false if it would block (MSG_DONTWAIT);
  // throws on other errors.
  bool sendTo(int socket, int flags = 0);

  // For callers that submit sendmsg themselves; valid until this object is changed,
  // moved or destroyed.
  const msghdr* header();

  kj::ArrayPtr<const kj::byte> bytes() const { return bytes_; }

 private:
  kj::Array<kj::byte> bytes_;
  kj::Vector<kj::AutoCloseFd> owned_;
  kj::Vector<int> fds_;
  kj::Array<kj::byte> control_;
  iovec iov_;
  msghdr msg_;
};

// A received datagram.
struct InitMessage {
  kj::Own<capnp::MessageReader> reader;
  kj::Vector<kj::AutoCloseFd> fds;  // received with MSG_CMSG_CLOEXEC
};

// Buffers for receiving one datagram.
class InitDatagramReceiver {
 public:
  InitDatagramReceiver();
  KJ_DISALLOW_COPY(InitDatagramReceiver);

  // A msghdr ready for recvmsg(socket, header(), MSG_CMSG_CLOEXEC).
  msghdr* header();
  // Interprets the result of that recvmsg (n = its return value, after header() was used).
  // Returns null on EOF. Throws, after closing any received fds, if the datagram or its
  // control data was truncated (MSG_TRUNC / MSG_CTRUNC) or does not decode.
  kj::Maybe<InitMessage> finish(ssize_t n);

 private:
  kj::Array<kj::byte> buffer_;
  kj::Array<kj::byte> control_;
  iovec iov_;
  msghdr msg_;
};

// Blocking send; `fds` stay owned by the caller.
void sendInitMessage(int socket, capnp::MessageBuilder& message,
                     kj::ArrayPtr<const int> fds = nullptr);

// Blocking receive; null on EOF (or ECONNRESET: the peer closed without reading all we
// sent). Retries on EINTR.
kj::Maybe<InitMessage> receiveInitMessage(int socket);

}  // namespace nodeagent::isolator
