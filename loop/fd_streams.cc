#include "loop/fd_streams.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <kj/debug.h>

namespace nodeagent::loop {
namespace {

using Pieces = kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>>;

// One request moves some bytes; the helpers below loop until a read has its
// minimum (or EOF) or a write has gone out completely.
class Transfer {
 public:
  virtual kj::Promise<size_t> readSome(kj::ArrayPtr<kj::byte> buf) = 0;
  virtual kj::Promise<size_t> writeSome(Pieces pieces) = 0;

 protected:
  ~Transfer() = default;
};

kj::Promise<size_t> readAtLeast(Transfer& t, kj::byte* buf, size_t minBytes, size_t maxBytes,
                                size_t done) {
  return t.readSome(kj::arrayPtr(buf + done, maxBytes - done))
      .then([&t, buf, minBytes, maxBytes, done](size_t n) -> kj::Promise<size_t> {
        size_t total = done + n;
        if (n == 0 || total >= minBytes || total == maxBytes) return total;
        return readAtLeast(t, buf, minBytes, maxBytes, total);
      });
}

kj::Promise<size_t> tryReadImpl(Transfer& t, void* buffer, size_t minBytes, size_t maxBytes) {
  if (maxBytes == 0) return size_t(0);
  return readAtLeast(t, static_cast<kj::byte*>(buffer), minBytes, maxBytes, 0);
}

// `pieces` is our own copy of the caller's views (the bytes stay the caller's
// and live until the promise resolves, per KJ's contract).
kj::Promise<void> writeAll(Transfer& t, kj::Array<kj::ArrayPtr<const kj::byte>> pieces) {
  size_t total = 0;
  for (auto piece : pieces) total += piece.size();
  if (total == 0) return kj::READY_NOW;
  auto written = t.writeSome(pieces);  // copies the bytes into the request now
  return written.then([&t, pieces = kj::mv(pieces)](size_t n) -> kj::Promise<void> {
    KJ_REQUIRE(n > 0, "write made no progress");
    size_t first = 0;
    while (first < pieces.size() && n >= pieces[first].size()) n -= pieces[first++].size();
    if (first == pieces.size()) return kj::READY_NOW;
    auto rest = kj::heapArray<kj::ArrayPtr<const kj::byte>>(pieces.size() - first);
    rest[0] = pieces[first].slice(n, pieces[first].size());
    for (size_t i = 1; i < rest.size(); ++i) rest[i] = pieces[first + i];
    return writeAll(t, kj::mv(rest));
  });
}

kj::Promise<void> writeImpl(Transfer& t, const void* buffer, size_t size) {
  auto pieces = kj::heapArray<kj::ArrayPtr<const kj::byte>>(1);
  pieces[0] = kj::arrayPtr(static_cast<const kj::byte*>(buffer), size);
  return writeAll(t, kj::mv(pieces));
}

kj::Promise<void> writeImpl(Transfer& t, Pieces pieces) {
  return writeAll(t, kj::heapArray(pieces));
}

// A hang-up is what whenWriteDisconnected() reports; if even watching fails,
// writes will fail too, so report that as a disconnect as well.
kj::ForkedPromise<void> watchHangup(UringEventPort& port, int fd) {
  return port.onHangup(fd).catch_([](kj::Exception&&) {}).fork();
}

bool isRegularFile(int fd) {
  struct stat st;
  KJ_SYSCALL(fstat(fd, &st));
  return S_ISREG(st.st_mode);
}

// Regular files get an explicit offset so each request knows where it
// writes; everything else (and O_APPEND files) uses the file position.
kj::Maybe<uint64_t> startOffset(int fd) {
  if (!isRegularFile(fd)) return nullptr;
  int flags;
  KJ_SYSCALL(flags = fcntl(fd, F_GETFL));
  if (flags & O_APPEND) return nullptr;
  off_t pos;
  KJ_SYSCALL(pos = lseek(fd, 0, SEEK_CUR));
  return uint64_t(pos);
}

void setNoDelay(int fd) {
  int one = 1;
  KJ_SYSCALL(::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)));
}

bool isInetSocket(int fd) {
  sockaddr_storage addr;
  socklen_t len = sizeof(addr);
  KJ_SYSCALL(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len));
  return addr.ss_family == AF_INET || addr.ss_family == AF_INET6;
}

class SocketStream final : public kj::AsyncIoStream, private Transfer {
 public:
  SocketStream(UringEventPort& port, kj::AutoCloseFd fd) : port_(port), fd_(kj::mv(fd)) {}

  kj::Promise<size_t> tryRead(void* buffer, size_t minBytes, size_t maxBytes) override {
    return tryReadImpl(*this, buffer, minBytes, maxBytes);
  }
  kj::Promise<void> write(const void* buffer, size_t size) override {
    return writeImpl(*this, buffer, size);
  }
  kj::Promise<void> write(Pieces pieces) override { return writeImpl(*this, pieces); }

  kj::Promise<void> whenWriteDisconnected() override {
    if (hangup_ == nullptr) hangup_ = watchHangup(port_, fd_.get());
    return KJ_ASSERT_NONNULL(hangup_).addBranch();
  }

  void shutdownWrite() override { KJ_SYSCALL(::shutdown(fd_.get(), SHUT_WR)); }
  void abortRead() override {
    // Best effort: the peer may already be gone.
    ::shutdown(fd_.get(), SHUT_RD);
  }

  void getsockopt(int level, int option, void* value, uint* length) override {
    socklen_t len = *length;
    KJ_SYSCALL(::getsockopt(fd_.get(), level, option, value, &len));
    *length = len;
  }
  void setsockopt(int level, int option, const void* value, uint length) override {
    KJ_SYSCALL(::setsockopt(fd_.get(), level, option, value, length));
  }
  void getsockname(struct sockaddr* addr, uint* length) override {
    socklen_t len = *length;
    KJ_SYSCALL(::getsockname(fd_.get(), addr, &len));
    *length = len;
  }
  void getpeername(struct sockaddr* addr, uint* length) override {
    socklen_t len = *length;
    KJ_SYSCALL(::getpeername(fd_.get(), addr, &len));
    *length = len;
  }
  kj::Maybe<int> getFd() const override { return fd_.get(); }

 private:
  kj::Promise<size_t> readSome(kj::ArrayPtr<kj::byte> buf) override {
    return port_.recv(fd_.get(), buf);
  }
  kj::Promise<size_t> writeSome(Pieces pieces) override {
    return port_.send(fd_.get(), pieces, MSG_NOSIGNAL);
  }

  UringEventPort& port_;
  kj::AutoCloseFd fd_;
  kj::Maybe<kj::ForkedPromise<void>> hangup_;
};

class InputStream final : public kj::AsyncInputStream, private Transfer {
 public:
  InputStream(UringEventPort& port, kj::AutoCloseFd fd)
      : port_(port), fd_(kj::mv(fd)), offset_(startOffset(fd_.get())) {}

  kj::Promise<size_t> tryRead(void* buffer, size_t minBytes, size_t maxBytes) override {
    return tryReadImpl(*this, buffer, minBytes, maxBytes);
  }

 private:
  kj::Promise<size_t> readSome(kj::ArrayPtr<kj::byte> buf) override {
    KJ_IF_MAYBE(offset, offset_) {
      return port_.read(fd_.get(), buf, *offset).then([this](size_t n) {
        KJ_ASSERT_NONNULL(offset_) += n;
        return n;
      });
    }
    return port_.read(fd_.get(), buf);
  }
  kj::Promise<size_t> writeSome(Pieces) override { KJ_UNIMPLEMENTED("input stream"); }

  UringEventPort& port_;
  kj::AutoCloseFd fd_;
  kj::Maybe<uint64_t> offset_;
};

class OutputStream final : public kj::AsyncOutputStream, private Transfer {
 public:
  OutputStream(UringEventPort& port, kj::AutoCloseFd fd)
      : port_(port),
        fd_(kj::mv(fd)),
        regularFile_(isRegularFile(fd_.get())),
        offset_(startOffset(fd_.get())) {}

  kj::Promise<void> write(const void* buffer, size_t size) override {
    return writeImpl(*this, buffer, size);
  }
  kj::Promise<void> write(Pieces pieces) override { return writeImpl(*this, pieces); }

  kj::Promise<void> whenWriteDisconnected() override {
    if (regularFile_) return kj::NEVER_DONE;  // files do not hang up
    if (hangup_ == nullptr) hangup_ = watchHangup(port_, fd_.get());
    return KJ_ASSERT_NONNULL(hangup_).addBranch();
  }

 private:
  kj::Promise<size_t> readSome(kj::ArrayPtr<kj::byte>) override {
    KJ_UNIMPLEMENTED("output stream");
  }
  kj::Promise<size_t> writeSome(Pieces pieces) override {
    KJ_IF_MAYBE(offset, offset_) {
      return port_.write(fd_.get(), pieces, *offset).then([this](size_t n) {
        KJ_ASSERT_NONNULL(offset_) += n;
        return n;
      });
    }
    return port_.write(fd_.get(), pieces);
  }

  UringEventPort& port_;
  kj::AutoCloseFd fd_;
  bool regularFile_;
  kj::Maybe<uint64_t> offset_;
  kj::Maybe<kj::ForkedPromise<void>> hangup_;
};

class Listener final : public kj::ConnectionReceiver {
 public:
  Listener(UringEventPort& port, kj::AutoCloseFd fd)
      : port_(port), fd_(kj::mv(fd)), inet_(isInetSocket(fd_.get())) {}

  kj::Promise<kj::Own<kj::AsyncIoStream>> accept() override {
    return port_.accept(fd_.get()).then([this](int fd) {
      kj::AutoCloseFd connection(fd);
      if (inet_) setNoDelay(fd);
      return wrapSocketFd(port_, kj::mv(connection));
    });
  }

  uint getPort() override {
    sockaddr_storage addr;
    socklen_t len = sizeof(addr);
    KJ_SYSCALL(::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&addr), &len));
    switch (addr.ss_family) {
      case AF_INET:
        return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
      case AF_INET6:
        return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
      default:
        return 0;
    }
  }

  void getsockopt(int level, int option, void* value, uint* length) override {
    socklen_t len = *length;
    KJ_SYSCALL(::getsockopt(fd_.get(), level, option, value, &len));
    *length = len;
  }
  void setsockopt(int level, int option, const void* value, uint length) override {
    KJ_SYSCALL(::setsockopt(fd_.get(), level, option, value, length));
  }
  void getsockname(struct sockaddr* addr, uint* length) override {
    socklen_t len = *length;
    KJ_SYSCALL(::getsockname(fd_.get(), addr, &len));
    *length = len;
  }

 private:
  UringEventPort& port_;
  kj::AutoCloseFd fd_;
  bool inet_;
};

}  // namespace

kj::Own<kj::AsyncIoStream> wrapSocketFd(UringEventPort& port, kj::AutoCloseFd fd) {
  return kj::heap<SocketStream>(port, kj::mv(fd));
}

kj::Own<kj::AsyncInputStream> wrapInputFd(UringEventPort& port, kj::AutoCloseFd fd) {
  return kj::heap<InputStream>(port, kj::mv(fd));
}

kj::Own<kj::AsyncOutputStream> wrapOutputFd(UringEventPort& port, kj::AutoCloseFd fd) {
  return kj::heap<OutputStream>(port, kj::mv(fd));
}

kj::Own<kj::ConnectionReceiver> wrapListenFd(UringEventPort& port, kj::AutoCloseFd fd) {
  return kj::heap<Listener>(port, kj::mv(fd));
}

kj::Promise<kj::Own<kj::AsyncIoStream>> connectSocket(UringEventPort& port,
                                                      const struct sockaddr* addr, socklen_t len) {
  return kj::evalNow([&]() {
    int fd;
    KJ_SYSCALL(fd = ::socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    kj::AutoCloseFd socket(fd);
    if (addr->sa_family == AF_INET || addr->sa_family == AF_INET6) setNoDelay(fd);
    auto connected = port.connect(fd, addr, len);  // copies addr
    return connected.then([&port, socket = kj::mv(socket)]() mutable {
      return wrapSocketFd(port, kj::mv(socket));
    });
  });
}

}  // namespace nodeagent::loop
