#include "nodeagent/sbx/local_sinks.h"

#include <fcntl.h>
#include <sys/random.h>
#include <unistd.h>

#include <kj/debug.h>

namespace nodeagent::sbx {

kj::Promise<void> writeFully(loop::UringEventPort& port, int fd, kj::ArrayPtr<const kj::byte> data,
                             uint64_t offset) {
  if (data.size() == 0) return kj::READY_NOW;
  return port.write(fd, data, offset).then([&port, fd, data, offset](size_t n) {
    KJ_REQUIRE(n > 0, "short write of zero bytes");
    uint64_t next = offset == uint64_t(-1) ? offset : offset + n;
    return writeFully(port, fd, data.slice(n, data.size()), next);
  });
}

kj::Promise<void> TerminalOutput::stdout(StdoutContext context) {
  return writes_->add([this, context]() mutable {
    auto data = context.getParams().getData();
    return writeFully(port_, STDOUT_FILENO, data, uint64_t(-1)).attach(kj::mv(context));
  });
}

kj::Promise<void> TerminalOutput::stderr(StderrContext context) {
  return writes_->add([this, context]() mutable {
    auto data = context.getParams().getData();
    return writeFully(port_, STDERR_FILENO, data, uint64_t(-1)).attach(kj::mv(context));
  });
}

kj::Promise<void> TerminalOutput::done(DoneContext) {
  // Returning only when everything is written is what lets wait() mean
  // "all output delivered".
  return writes_->drained();
}

LocalFileSink::LocalFileSink(loop::UringEventPort& port, kj::StringPtr path)
    : port_(port), path_(kj::str(path)) {
  // A fresh name, never followed through a symlink: sbx often runs as root
  // in shared directories such as /tmp.
  uint64_t r = 0;
  KJ_SYSCALL(getrandom(&r, sizeof(r), 0));
  partialPath_ = kj::str(path, ".sbx-partial-", kj::hex(r));
  int fd = open(partialPath_.cStr(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) KJ_FAIL_SYSCALL("open", errno, partialPath_);
  fd_ = kj::AutoCloseFd(fd);
}

LocalFileSink::~LocalFileSink() noexcept(false) {
  if (!done_) unlink(partialPath_.cStr());
}

kj::Promise<void> LocalFileSink::write(WriteContext context) {
  return writes_.add([this, context]() mutable {
    auto data = context.getParams().getData();
    uint64_t at = offset_;
    offset_ += data.size();
    return writeFully(port_, fd_, data, at).attach(kj::mv(context));
  });
}

kj::Promise<void> LocalFileSink::done(DoneContext) {
  // Stream calls may still be writing: the file is whole only after them.
  return writes_.add([this]() -> kj::Promise<void> {
    KJ_SYSCALL(fsync(fd_));
    KJ_SYSCALL(rename(partialPath_.cStr(), path_.cStr()), path_);
    done_ = true;
    return kj::READY_NOW;
  });
}

}  // namespace nodeagent::sbx
