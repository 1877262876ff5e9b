#include "isolator/init_protocol.h"

#include <errno.h>
#include <string.h>

#include <capnp/serialize.h>
#include <kj/debug.h>

namespace nodeagent::isolator {
namespace {

constexpr size_t kControlBytes = CMSG_SPACE(sizeof(int) * kMaxInitMessageFds);

}  // namespace

kj::Array<kj::byte> encodeInitMessage(capnp::MessageBuilder& message) {
  size_t words = capnp::computeSerializedSizeInWords(message);
  KJ_REQUIRE(words * sizeof(capnp::word) <= kMaxInitMessageBytes, "init message too large",
             words * sizeof(capnp::word), kMaxInitMessageBytes);
  kj::Array<capnp::word> flat = capnp::messageToFlatArray(message);
  kj::Array<kj::byte> bytes = kj::heapArray<kj::byte>(flat.asBytes().size());
  memcpy(bytes.begin(), flat.begin(), bytes.size());
  return bytes;
}

kj::Own<capnp::MessageReader> decodeInitMessage(kj::ArrayPtr<const kj::byte> datagram) {
  KJ_REQUIRE(datagram.size() <= kMaxInitMessageBytes, "init message too large", datagram.size());
  KJ_REQUIRE(datagram.size() > 0 && datagram.size() % sizeof(capnp::word) == 0,
             "malformed init message: size is not a whole number of words", datagram.size());
  // Datagram buffers need not be word-aligned; capnp readers need alignment.
  auto words = kj::heapArray<capnp::word>(datagram.size() / sizeof(capnp::word));
  memcpy(words.begin(), datagram.begin(), datagram.size());
  capnp::ReaderOptions options;
  options.traversalLimitInWords = kMaxInitMessageBytes / sizeof(capnp::word) * 4;
  auto reader = kj::heap<capnp::FlatArrayMessageReader>(words.asPtr(), options);
  KJ_REQUIRE(reader->getEnd() == words.end(), "malformed init message: trailing bytes");
  return kj::Own<capnp::MessageReader>(reader.attach(kj::mv(words)));
}

void configureInitSocket(int fd) {
  // The kernel doubles the value for bookkeeping; unprivileged callers are capped at
  // net.core.wmem_max / rmem_max, so the FORCE variants are tried first.
  int size = int(kMaxInitMessageBytes + 64 * 1024);
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size)) != 0) {
    KJ_SYSCALL(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size)));
  }
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)) != 0) {
    KJ_SYSCALL(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size)));
  }
}

// ---------------------------------------------------------------------------------------
// InitDatagram

InitDatagram::InitDatagram(capnp::MessageBuilder& message) : bytes_(encodeInitMessage(message)) {}

void InitDatagram::attach(kj::AutoCloseFd fd) {
  KJ_REQUIRE(fds_.size() < kMaxInitMessageFds, "too many fds for one init message");
  fds_.add(fd.get());
  owned_.add(kj::mv(fd));
}

void InitDatagram::attachBorrowed(int fd) {
  KJ_REQUIRE(fds_.size() < kMaxInitMessageFds, "too many fds for one init message");
  fds_.add(fd);
}

const msghdr* InitDatagram::header() {
  memset(&msg_, 0, sizeof(msg_));
  iov_.iov_base = bytes_.begin();
  iov_.iov_len = bytes_.size();
  msg_.msg_iov = &iov_;
  msg_.msg_iovlen = 1;
  if (fds_.size() > 0) {
    size_t fdBytes = sizeof(int) * fds_.size();
    control_ = kj::heapArray<kj::byte>(CMSG_SPACE(fdBytes));
    memset(control_.begin(), 0, control_.size());
    msg_.msg_control = control_.begin();
    msg_.msg_controllen = control_.size();
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg_);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(fdBytes);
    memcpy(CMSG_DATA(cmsg), fds_.begin(), fdBytes);
  }
  return &msg_;
}

bool InitDatagram::sendTo(int socket, int flags) {
  const msghdr* msg = header();
  for (;;) {
    ssize_t n = sendmsg(socket, msg, MSG_NOSIGNAL | flags);
    if (n >= 0) {
      // SOCK_SEQPACKET sends a datagram whole or not at all.
      KJ_ASSERT(size_t(n) == bytes_.size(), "short sendmsg on a SOCK_SEQPACKET socket");
      return true;
    }
    int err = errno;
    if (err == EINTR) continue;
    if (err == EAGAIN || err == EWOULDBLOCK) return false;
    KJ_FAIL_SYSCALL("sendmsg(init message)", err, bytes_.size(), fds_.size());
  }
}

// ---------------------------------------------------------------------------------------
// InitDatagramReceiver

InitDatagramReceiver::InitDatagramReceiver()
    : buffer_(kj::heapArray<kj::byte>(kMaxInitMessageBytes)),
      control_(kj::heapArray<kj::byte>(kControlBytes)) {}

msghdr* InitDatagramReceiver::header() {
  memset(&msg_, 0, sizeof(msg_));
  iov_.iov_base = buffer_.begin();
  iov_.iov_len = buffer_.size();
  msg_.msg_iov = &iov_;
  msg_.msg_iovlen = 1;
  msg_.msg_control = control_.begin();
  msg_.msg_controllen = control_.size();
  return &msg_;
}

kj::Maybe<InitMessage> InitDatagramReceiver::finish(ssize_t n) {
  KJ_REQUIRE(n >= 0, "finish() takes a successful recvmsg result", n);
  InitMessage message;
  // Take ownership of every fd first, so that any error below closes them.
  if (msg_.msg_controllen > 0) {
    for (cmsghdr* cmsg = CMSG_FIRSTHDR(&msg_); cmsg != nullptr; cmsg = CMSG_NXTHDR(&msg_, cmsg)) {
      if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
        message.fds.add(fd);
      }
    }
  }
  KJ_REQUIRE(!(msg_.msg_flags & MSG_TRUNC), "init message truncated: larger than the limit",
             kMaxInitMessageBytes);
  KJ_REQUIRE(!(msg_.msg_flags & MSG_CTRUNC), "init message truncated: too many fds",
             kMaxInitMessageFds);
  if (n == 0) {
    KJ_REQUIRE(message.fds.size() == 0, "fds without an init message");
    return nullptr;
  }
  message.reader = decodeInitMessage(buffer_.slice(0, size_t(n)));
  return kj::mv(message);
}

// ---------------------------------------------------------------------------------------
// Blocking helpers

void sendInitMessage(int socket, capnp::MessageBuilder& message, kj::ArrayPtr<const int> fds) {
  InitDatagram datagram(message);
  for (int fd : fds) datagram.attachBorrowed(fd);
  datagram.sendTo(socket);
}

kj::Maybe<InitMessage> receiveInitMessage(int socket) {
  InitDatagramReceiver receiver;
  for (;;) {
    ssize_t n = recvmsg(socket, receiver.header(), MSG_CMSG_CLOEXEC);
    if (n >= 0) return receiver.finish(n);
    if (errno == EINTR) continue;
    // A peer that closes with our messages still unread resets the connection: an EOF too.
    if (errno == ECONNRESET) return nullptr;
    KJ_FAIL_SYSCALL("recvmsg(init message)", errno);
  }
}

}  // namespace nodeagent::isolator
