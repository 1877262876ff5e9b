// One command running in a sandbox, as the agent sees it: its stdio pipes,
// its pidfd, its recent output, and the promise of its exit.
#pragma once

#include <kj/async-io.h>
#include <kj/async.h>
#include <kj/function.h>
#include <kj/refcount.h>
#include <kj/timer.h>

#include "loop/uring_event_port.h"
#include "nodeagent/init_channel.h"
#include "nodeagent/process_output.h"
#include "schema/gateway.capnp.h"

namespace nodeagent {

struct ExitInfo {
  api::ExitReason reason;
  int code = 0;
  int signal = 0;
  uint64_t cpuNs = 0;  // what init's wait4 reported; 0 when killed with the sandbox
};

class ExecProcess final : public kj::Refcounted {
 public:
  struct Options {
    kj::Array<kj::String> argv;           // for listings
    kj::Maybe<kj::Duration> timeout;      // SIGKILL after this long
    kj::Function<bool()> oomKilledSince;  // whether the cgroup OOM-killed anything since spawn
    kj::Maybe<kj::Function<void()>> stdinClosed;  // after closeStdin(): tell init to drop its copy
    int64_t startedAtNs = 0;                      // 0: now (an adopted process brings its own)
  };

  // Starts pumping stdout/stderr at once, into `output` if given. `exitStatus`
  // is the init's report of the wait status; it breaks when the sandbox is
  // killed.
  ExecProcess(loop::UringEventPort& port, SpawnedProcess spawned,
              kj::Maybe<api::OutputSink::Client> output, kj::Promise<ProcessExit> exitStatus,
              Options options);
  KJ_DISALLOW_COPY(ExecProcess);

  int pid() const { return pid_; }
  kj::ArrayPtr<const kj::String> argv() const { return argv_; }
  int64_t startedAtNs() const { return startedAtNs_; }
  // Known as soon as init reported the exit (wait() also waits for output).
  kj::Maybe<const ExitInfo&> exitInfo() const { return exitInfo_; }
  int64_t endedAtNs() const { return endedAtNs_; }
  ProcessOutput::Offsets outputBytes() const { return output_.written(); }

  // Resolves once the process exited and its output was delivered.
  kj::Promise<ExitInfo> wait() { return done_.addBranch(); }

  void signal(int signo);
  kj::Promise<void> writeStdin(kj::ArrayPtr<const kj::byte> data);
  void closeStdin();
  // See Process.attach in schema/gateway.capnp.
  kj::Promise<ProcessOutput::Offsets> attach(api::OutputSink::Client sink,
                                             ProcessOutput::Offsets from);

 private:
  ExitInfo classify(const ProcessExit& exit);
  ExitInfo classifyStatus(int waitStatus);
  ExitInfo ended(ExitInfo info);

  loop::UringEventPort& port_;
  int pid_;
  kj::Array<kj::String> argv_;
  int64_t startedAtNs_;
  kj::AutoCloseFd pidfd_;
  kj::Maybe<kj::Own<kj::AsyncOutputStream>> stdin_;
  ProcessOutput output_;
  kj::Function<bool()> oomKilledSince_;
  kj::Maybe<kj::Function<void()>> stdinClosed_;
  bool timedOut_ = false;
  kj::Maybe<ExitInfo> exitInfo_;
  int64_t endedAtNs_ = 0;
  kj::ForkedPromise<ExitInfo> done_;
};

}  // namespace nodeagent
