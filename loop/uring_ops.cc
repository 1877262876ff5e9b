// The io_uring requests behind UringEventPort's low-level operations. Each
// request copies the caller's data into memory it owns (or receives into it
// and copies out when the promise resolves), because a dropped promise's
// buffer may be freed while the kernel is still working on the request.
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <kj/array.h>
#include <kj/debug.h>

#include "loop/scm_rights.h"
#include "loop/uring_event_port.h"
#include "loop/uring_op.h"

namespace nodeagent::loop {
namespace {

using Pieces = kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>>;

// Concatenates at most `max` bytes of `pieces`.
kj::Array<kj::byte> gather(Pieces pieces, size_t max) {
  size_t total = 0;
  for (auto piece : pieces) total += piece.size();
  total = kj::min(total, max);
  auto out = kj::heapArray<kj::byte>(total);
  size_t pos = 0;
  for (auto piece : pieces) {
    size_t n = kj::min(piece.size(), total - pos);
    if (n == 0) continue;
    memcpy(out.begin() + pos, piece.begin(), n);
    pos += n;
  }
  return out;
}

kj::Array<kj::byte> copyOf(const void* data, size_t size) {
  auto out = kj::heapArray<kj::byte>(size);
  if (size > 0) memcpy(out.begin(), data, size);
  return out;
}

class ReadOp final : public UringOp {
 public:
  ReadOp(int fd, kj::ArrayPtr<kj::byte> dst, uint64_t offset)
      : UringOp("read", fd),
        dst_(dst),
        buffer_(kj::heapArray<kj::byte>(kj::min(dst.size(), UringEventPort::kMaxChunk))),
        offset_(offset) {}

  void prepare(io_uring_sqe* sqe) override {
    io_uring_prep_read(sqe, fd, buffer_.begin(), buffer_.size(), offset_);
  }
  short pollBeforeRetry(int32_t res) const override { return res == -EAGAIN ? POLLIN : 0; }
  void finish(int32_t res) override {
    if (res > 0) memcpy(dst_.begin(), buffer_.begin(), size_t(res));
  }

 private:
  kj::ArrayPtr<kj::byte> dst_;
  kj::Array<kj::byte> buffer_;
  uint64_t offset_;
};

class RecvOp final : public UringOp {
 public:
  RecvOp(int fd, kj::ArrayPtr<kj::byte> dst, int flags)
      : UringOp("recv", fd),
        dst_(dst),
        buffer_(kj::heapArray<kj::byte>(kj::min(dst.size(), UringEventPort::kMaxChunk))),
        flags_(flags) {}

  void prepare(io_uring_sqe* sqe) override {
    io_uring_prep_recv(sqe, fd, buffer_.begin(), buffer_.size(), flags_);
  }
  short pollBeforeRetry(int32_t res) const override { return res == -EAGAIN ? POLLIN : 0; }
  void finish(int32_t res) override {
    size_t n = kj::min(size_t(res), buffer_.size());  // MSG_TRUNC reports the full length
    if (n > 0) memcpy(dst_.begin(), buffer_.begin(), n);
  }

 private:
  kj::ArrayPtr<kj::byte> dst_;
  kj::Array<kj::byte> buffer_;
  int flags_;
};

class WriteOp final : public UringOp {
 public:
  WriteOp(int fd, Pieces pieces, uint64_t offset)
      : UringOp("write", fd), buffer_(gather(pieces, UringEventPort::kMaxChunk)), offset_(offset) {}

  void prepare(io_uring_sqe* sqe) override {
    io_uring_prep_write(sqe, fd, buffer_.begin(), buffer_.size(), offset_);
  }
  short pollBeforeRetry(int32_t res) const override { return res == -EAGAIN ? POLLOUT : 0; }

 private:
  kj::Array<kj::byte> buffer_;
  uint64_t offset_;
};

class SendOp final : public UringOp {
 public:
  SendOp(int fd, Pieces pieces, int flags)
      : UringOp("send", fd), buffer_(gather(pieces, UringEventPort::kMaxChunk)), flags_(flags) {}

  void prepare(io_uring_sqe* sqe) override {
    io_uring_prep_send(sqe, fd, buffer_.begin(), buffer_.size(), flags_);
  }
  short pollBeforeRetry(int32_t res) const override { return res == -EAGAIN ? POLLOUT : 0; }

 private:
  kj::Array<kj::byte> buffer_;
  int flags_;
};

class AcceptOp final : public UringOp {
 public:
  explicit AcceptOp(int fd) : UringOp("accept", fd) {}

  void prepare(io_uring_sqe* sqe) override {
    io_uring_prep_accept(sqe, fd, nullptr, nullptr, SOCK_CLOEXEC);
  }
  short pollBeforeRetry(int32_t res) const override { return res == -EAGAIN ? POLLIN : 0; }
  void discard(int32_t res) override {
    if (res >= 0) ::close(res);  // accepted after the promise was dropped
  }
};

class ConnectOp final : public UringOp {
 public:
  ConnectOp(int fd, const struct sockaddr* addr, socklen_t len) : UringOp("connect", fd) {
    KJ_REQUIRE(len <= sizeof(addr_), "socket address too long", len);
    memcpy(&addr_, addr, len);
    len_ = len;
  }

  void prepare(io_uring_sqe* sqe) override {
    io_uring_prep_connect(sqe, fd, reinterpret_cast<sockaddr*>(&addr_), len_);
  }
  // A non-blocking socket reports EINPROGRESS; the outcome is in SO_ERROR
  // once it is writable.
  short pollBeforeRetry(int32_t res) const override { return res == -EINPROGRESS ? POLLOUT : 0; }
  kj::Maybe<int32_t> afterPoll() override {
    int error = 0;
    socklen_t size = sizeof(error);
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &size) < 0) return -errno;
    return -error;
  }

 private:
  sockaddr_storage addr_;
  socklen_t len_;
};

class PollOp final : public UringOp {
 public:
  PollOp(int fd, short events) : UringOp("poll", fd), events_(events) {}

  void prepare(io_uring_sqe* sqe) override { io_uring_prep_poll_add(sqe, fd, events_); }

 private:
  short events_;
};

// Multishot, because the kernel always reports POLLRDHUP too: a one-shot poll
// would fire on the peer's half-close and re-arming it would spin.
class HangupOp final : public UringOp {
 public:
  explicit HangupOp(int fd) : UringOp("poll", fd) {}

  void prepare(io_uring_sqe* sqe) override {
    io_uring_prep_poll_multishot(sqe, fd, POLLHUP | POLLERR);
  }
  bool isFinal(int32_t res) const override {
    return res < 0 || (res & (POLLHUP | POLLERR | POLLNVAL)) != 0;
  }
};

class RecvmsgOp final : public UringOp {
 public:
  RecvmsgOp(int fd, struct msghdr* user, int flags)
      : UringOp("recvmsg", fd),
        user_(user),
        name_(kj::heapArray<kj::byte>(user->msg_name != nullptr ? user->msg_namelen : 0)),
        data_(kj::heapArray<kj::byte>(kj::min(iovTotal(user), UringEventPort::kMaxChunk))),
        control_(kj::heapArray<kj::byte>(user->msg_control != nullptr ? user->msg_controllen : 0)),
        flags_(flags) {}

  void prepare(io_uring_sqe* sqe) override {
    // Rebuilt each time: a retry must not see lengths the last attempt wrote.
    iov_.iov_base = data_.begin();
    iov_.iov_len = data_.size();
    memset(&msg_, 0, sizeof(msg_));
    msg_.msg_name = name_.size() > 0 ? name_.begin() : nullptr;
    msg_.msg_namelen = name_.size();
    msg_.msg_iov = &iov_;
    msg_.msg_iovlen = 1;
    msg_.msg_control = control_.size() > 0 ? control_.begin() : nullptr;
    msg_.msg_controllen = control_.size();
    io_uring_prep_recvmsg(sqe, fd, &msg_, flags_);
  }
  short pollBeforeRetry(int32_t res) const override { return res == -EAGAIN ? POLLIN : 0; }

  void finish(int32_t res) override {
    size_t left = kj::min(size_t(res), data_.size());
    const kj::byte* from = data_.begin();
    for (size_t i = 0; i < user_->msg_iovlen && left > 0; ++i) {
      size_t n = kj::min(left, user_->msg_iov[i].iov_len);
      if (n > 0) memcpy(user_->msg_iov[i].iov_base, from, n);
      from += n;
      left -= n;
    }
    if (user_->msg_name != nullptr) {
      if (msg_.msg_namelen > 0) {
        memcpy(user_->msg_name, name_.begin(), kj::min<size_t>(msg_.msg_namelen, name_.size()));
      }
      user_->msg_namelen = msg_.msg_namelen;
    }
    if (user_->msg_control != nullptr) {
      if (msg_.msg_controllen > 0)
        memcpy(user_->msg_control, control_.begin(), msg_.msg_controllen);
      user_->msg_controllen = msg_.msg_controllen;
    }
    user_->msg_flags = msg_.msg_flags;
  }

  void discard(int32_t res) override {
    if (res >= 0) takeScmRights(msg_);  // and close them
  }

 private:
  static size_t iovTotal(const struct msghdr* msg) {
    size_t total = 0;
    for (size_t i = 0; i < msg->msg_iovlen; ++i) total += msg->msg_iov[i].iov_len;
    return total;
  }

  struct msghdr* user_;
  kj::Array<kj::byte> name_;
  kj::Array<kj::byte> data_;
  kj::Array<kj::byte> control_;  // operator new memory: aligned for cmsghdr
  int flags_;
  struct iovec iov_;
  struct msghdr msg_;
};

class SendmsgOp final : public UringOp {
 public:
  SendmsgOp(int fd, const struct msghdr* user, int flags)
      : UringOp("sendmsg", fd),
        name_(copyOf(user->msg_name, user->msg_name != nullptr ? user->msg_namelen : 0)),
        data_(gather(iovPieces(user), UringEventPort::kMaxChunk)),
        control_(
            copyOf(user->msg_control, user->msg_control != nullptr ? user->msg_controllen : 0)),
        flags_(flags) {}

  void prepare(io_uring_sqe* sqe) override {
    iov_.iov_base = data_.begin();
    iov_.iov_len = data_.size();
    memset(&msg_, 0, sizeof(msg_));
    msg_.msg_name = name_.size() > 0 ? name_.begin() : nullptr;
    msg_.msg_namelen = name_.size();
    msg_.msg_iov = &iov_;
    msg_.msg_iovlen = 1;
    msg_.msg_control = control_.size() > 0 ? control_.begin() : nullptr;
    msg_.msg_controllen = control_.size();
    io_uring_prep_sendmsg(sqe, fd, &msg_, flags_);
  }
  short pollBeforeRetry(int32_t res) const override { return res == -EAGAIN ? POLLOUT : 0; }

 private:
  static kj::Array<kj::ArrayPtr<const kj::byte>> iovPieces(const struct msghdr* msg) {
    auto pieces = kj::heapArray<kj::ArrayPtr<const kj::byte>>(msg->msg_iovlen);
    for (size_t i = 0; i < msg->msg_iovlen; ++i) {
      pieces[i] = kj::arrayPtr(static_cast<const kj::byte*>(msg->msg_iov[i].iov_base),
                               msg->msg_iov[i].iov_len);
    }
    return pieces;
  }

  kj::Array<kj::byte> name_;
  kj::Array<kj::byte> data_;
  kj::Array<kj::byte> control_;
  int flags_;
  struct iovec iov_;
  struct msghdr msg_;
};

}  // namespace

kj::Promise<size_t> UringEventPort::read(int fd, kj::ArrayPtr<kj::byte> buf, uint64_t offset) {
  return start<size_t>(kj::heap<ReadOp>(fd, buf, offset));
}

kj::Promise<size_t> UringEventPort::write(int fd, kj::ArrayPtr<const kj::byte> buf,
                                          uint64_t offset) {
  kj::ArrayPtr<const kj::byte> pieces[] = {buf};
  return write(fd, kj::arrayPtr(pieces, 1), offset);
}

kj::Promise<size_t> UringEventPort::write(int fd, Pieces pieces, uint64_t offset) {
  return start<size_t>(kj::heap<WriteOp>(fd, pieces, offset));
}

kj::Promise<size_t> UringEventPort::recv(int fd, kj::ArrayPtr<kj::byte> buf, int flags) {
  return start<size_t>(kj::heap<RecvOp>(fd, buf, flags));
}

kj::Promise<size_t> UringEventPort::send(int fd, kj::ArrayPtr<const kj::byte> buf, int flags) {
  kj::ArrayPtr<const kj::byte> pieces[] = {buf};
  return send(fd, kj::arrayPtr(pieces, 1), flags);
}

kj::Promise<size_t> UringEventPort::send(int fd, Pieces pieces, int flags) {
  return start<size_t>(kj::heap<SendOp>(fd, pieces, flags));
}

kj::Promise<int> UringEventPort::accept(int listenFd) {
  return start<int>(kj::heap<AcceptOp>(listenFd));
}

kj::Promise<kj::AutoCloseFd> UringEventPort::acceptFd(int listenFd) {
  return start<kj::AutoCloseFd>(kj::heap<AcceptOp>(listenFd));
}

kj::Promise<void> UringEventPort::connect(int fd, const struct sockaddr* addr, socklen_t len) {
  return kj::evalNow([&]() { return start<void>(kj::heap<ConnectOp>(fd, addr, len)); });
}

kj::Promise<short> UringEventPort::pollIn(int fd) {
  return pollFd(fd, POLLIN);
}

kj::Promise<short> UringEventPort::pollFd(int fd, short events) {
  return start<short>(kj::heap<PollOp>(fd, events));
}

kj::Promise<void> UringEventPort::onHangup(int fd) {
  return start<void>(kj::heap<HangupOp>(fd));
}

kj::Promise<size_t> UringEventPort::recvmsg(int fd, struct msghdr* msg, int flags) {
  return start<size_t>(kj::heap<RecvmsgOp>(fd, msg, flags));
}

kj::Promise<size_t> UringEventPort::sendmsg(int fd, const struct msghdr* msg, int flags) {
  return start<size_t>(kj::heap<SendmsgOp>(fd, msg, flags));
}

}  // namespace nodeagent::loop
