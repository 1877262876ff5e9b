#include "loop/fd_streams.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
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

// Small reads are served from a buffer filled by one larger request. Over a
// ring every request is a trip through io_uring_enter, and Cap'n Proto reads
// a message as an 8-byte header and then the body: with the buffer, one
// request usually brings in both.
class ReadAhead {
 public:
  static constexpr size_t kSize = 8192;

  // Moves buffered bytes into `dst`; returns how many.
  size_t take(kj::ArrayPtr<kj::byte> dst) {
    size_t n = kj::min(dst.size(), end_ - start_);
    if (n > 0) memcpy(dst.begin(), buffer_.begin() + start_, n);
    start_ += n;
    return n;
  }
  // Where the next request receives into; only valid while nothing is buffered.
  kj::ArrayPtr<kj::byte> space() {
    if (buffer_.size() == 0) buffer_ = kj::heapArray<kj::byte>(kSize);  // on first use
    return buffer_;
  }
  void filled(size_t n) {
    start_ = 0;
    end_ = n;
  }

 private:
  kj::Array<kj::byte> buffer_;
  size_t start_ = 0;
  size_t end_ = 0;
};

kj::Promise<size_t> readAtLeast(Transfer& t, ReadAhead& ahead, kj::byte* buf, size_t minBytes,
                                size_t maxBytes, size_t done) {
  done += ahead.take(kj::arrayPtr(buf + done, maxBytes - done));
  if (done >= minBytes) return done;
  size_t wanted = maxBytes - done;
  if (wanted < ReadAhead::kSize) {
    return t.readSome(ahead.space())
        .then([&t, &ahead, buf, minBytes, maxBytes, done](size_t n) -> kj::Promise<size_t> {
          if (n == 0) return done;  // EOF
          ahead.filled(n);
          return readAtLeast(t, ahead, buf, minBytes, maxBytes, done);
        });
  }
  return t.readSome(kj::arrayPtr(buf + done, wanted))
      .then([&t, &ahead, buf, minBytes, maxBytes, done](size_t n) -> kj::Promise<size_t> {
        if (n == 0) return done;  // EOF
        return readAtLeast(t, ahead, buf, minBytes, maxBytes, done + n);
      });
}

// minBytes 0 is treated as 1: a result of 0 always means EOF.
kj::Promise<size_t> tryReadImpl(Transfer& t, ReadAhead& ahead, void* buffer, size_t minBytes,
                                size_t maxBytes) {
  if (maxBytes == 0) return size_t(0);
  return readAtLeast(t, ahead, static_cast<kj::byte*>(buffer), kj::max(minBytes, size_t(1)),
                     maxBytes, 0);
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

class SocketStream final : public kj::AsyncIoStream, private Transfer {
 public:
  SocketStream(UringEventPort& port, kj::AutoCloseFd fd) : port_(port), fd_(kj::mv(fd)) {}

  kj::Promise<size_t> tryRead(void* buffer, size_t minBytes, size_t maxBytes) override {
    return tryReadImpl(*this, readAhead_, buffer, minBytes, maxBytes);
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
  ReadAhead readAhead_;
  kj::Maybe<kj::ForkedPromise<void>> hangup_;
};

class InputStream final : public kj::AsyncInputStream, private Transfer {
 public:
  InputStream(UringEventPort& port, kj::AutoCloseFd fd)
      : port_(port), fd_(kj::mv(fd)), offset_(startOffset(fd_.get())) {}

  kj::Promise<size_t> tryRead(void* buffer, size_t minBytes, size_t maxBytes) override {
    return tryReadImpl(*this, readAhead_, buffer, minBytes, maxBytes);
  }

 private:
  kj::Promise<size_t> readSome(kj::ArrayPtr<kj::byte> buf) override {
    KJ_IF_MAYBE (offset, offset_) {
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
  kj::Maybe<uint64_t> offset_;  // of the next byte to request, not to return
  ReadAhead readAhead_;
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
    KJ_IF_MAYBE (offset, offset_) {
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

}  // namespace nodeagent::loop
