// The CLI's ends of the streaming interfaces: output of a process goes to our
// stdout/stderr; a downloaded file goes to a local file.
#pragma once

#include <kj/async.h>
#include <kj/string.h>

#include "loop/serial_queue.h"
#include "loop/uring_event_port.h"
#include "schema/gateway.capnp.h"

namespace nodeagent::sbx {

// Writes a process's stdout to fd 1 and stderr to fd 2. Each call returns
// once the bytes are written, which is what paces the sender.
class TerminalOutput final : public api::OutputSink::Server {
 public:
  explicit TerminalOutput(loop::UringEventPort& port) : port_(port) {}
  kj::Promise<void> stdout(StdoutContext context) override;
  kj::Promise<void> stderr(StderrContext context) override;
  kj::Promise<void> done(DoneContext context) override;

 private:
  loop::UringEventPort& port_;
  kj::Own<loop::SerialQueue> writes_ = kj::heap<loop::SerialQueue>();
};

// Writes a download into "<path>.sbx-partial" and renames it to `path` at done().
class LocalFileSink final : public api::ByteSink::Server {
 public:
  LocalFileSink(loop::UringEventPort& port, kj::StringPtr path);
  ~LocalFileSink() noexcept(false);
  kj::Promise<void> write(WriteContext context) override;
  kj::Promise<void> done(DoneContext context) override;

 private:
  loop::UringEventPort& port_;
  kj::String path_;
  kj::String partialPath_;
  kj::AutoCloseFd fd_;
  uint64_t offset_ = 0;
  bool done_ = false;
  loop::SerialQueue writes_;
};

// Writes all of `data` to `fd` at `offset` (-1: the fd's own position).
kj::Promise<void> writeFully(loop::UringEventPort& port, int fd, kj::ArrayPtr<const kj::byte> data,
                             uint64_t offset);

}  // namespace nodeagent::sbx
