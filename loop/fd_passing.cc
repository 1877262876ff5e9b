#include "loop/fd_passing.h"

#include <string.h>
#include <sys/socket.h>

#include <kj/debug.h>

#include "loop/scm_rights.h"

namespace nodeagent::loop {
namespace {

// SCM_RIGHTS carries at most this many fds per message (SCM_MAX_FD).
constexpr size_t kMaxFdsPerMessage = 253;

// Receive buffers and the msghdr pointing at them; lives until the promise
// is consumed (the request itself receives into its own copy and copies back
// when it resolves).
struct Inbox {
  Inbox(size_t maxBytes, size_t maxFds)
      : bytes(kj::heapArray<kj::byte>(maxBytes)),
        control(kj::heapArray<kj::byte>(maxFds > 0 ? CMSG_SPACE(maxFds * sizeof(int)) : 0)) {
    // Zeroed, so that before anything arrived it holds no SCM_RIGHTS entry.
    if (control.size() > 0) memset(control.begin(), 0, control.size());
    iov.iov_base = bytes.begin();
    iov.iov_len = bytes.size();
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.size() > 0 ? control.begin() : nullptr;
    msg.msg_controllen = control.size();
  }
  KJ_DISALLOW_COPY(Inbox);
  // The receive resolved but nobody consumed it: close what arrived.
  ~Inbox() { takeScmRights(msg); }

  kj::Array<kj::byte> bytes;
  kj::Array<kj::byte> control;
  struct iovec iov;
  struct msghdr msg;
};

}  // namespace

kj::Promise<ReceivedMessage> receiveWithFds(UringEventPort& port, int fd, size_t maxBytes,
                                            size_t maxFds) {
  KJ_REQUIRE(maxBytes > 0, "a zero-byte buffer cannot tell a message from EOF");
  KJ_REQUIRE(maxFds <= kMaxFdsPerMessage, maxFds);
  auto inbox = kj::heap<Inbox>(maxBytes, maxFds);
  auto received = port.recvmsg(fd, &inbox->msg, MSG_CMSG_CLOEXEC);
  return received.then([inbox = kj::mv(inbox), fd](size_t n) mutable {
    // Own the fds first so every path below closes what we will not return.
    auto fds = takeScmRights(inbox->msg);
    if (inbox->msg.msg_flags & MSG_TRUNC) {
      KJ_FAIL_REQUIRE("message larger than the receive buffer", fd, inbox->bytes.size());
    }
    if (inbox->msg.msg_flags & MSG_CTRUNC) {
      KJ_FAIL_REQUIRE("message carried more fds than allowed", fd, fds.size());
    }
    auto bytes = kj::heapArray<kj::byte>(inbox->bytes.slice(0, n));
    return ReceivedMessage{kj::mv(bytes), kj::mv(fds)};
  });
}

kj::Promise<void> sendWithFds(UringEventPort& port, int fd, kj::ArrayPtr<const kj::byte> bytes,
                              kj::ArrayPtr<const int> fds) {
  return kj::evalNow([&]() {
    KJ_REQUIRE(bytes.size() > 0, "an empty message reads as EOF on the other side");
    KJ_REQUIRE(fds.size() <= kMaxFdsPerMessage, fds.size());
    struct iovec iov;
    iov.iov_base = const_cast<kj::byte*>(bytes.begin());
    iov.iov_len = bytes.size();
    auto control =
        kj::heapArray<kj::byte>(fds.size() > 0 ? CMSG_SPACE(fds.size() * sizeof(int)) : 0);
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fds.size() > 0) {
      memset(control.begin(), 0, control.size());
      msg.msg_control = control.begin();
      msg.msg_controllen = control.size();
      cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
      cmsg->cmsg_level = SOL_SOCKET;
      cmsg->cmsg_type = SCM_RIGHTS;
      cmsg->cmsg_len = CMSG_LEN(fds.size() * sizeof(int));
      memcpy(CMSG_DATA(cmsg), fds.begin(), fds.size() * sizeof(int));
    }
    // The request copies msg, so the locals above may go away now.
    size_t expected = bytes.size();
    return port.sendmsg(fd, &msg, MSG_NOSIGNAL).then([fd, expected](size_t sent) {
      KJ_REQUIRE(sent == expected, "message sent in part", fd, sent, expected);
    });
  });
}

}  // namespace nodeagent::loop
