// One command running in a sandbox, as the agent sees it: its stdio pipes,
// its pidfd, and the promise of its exit.
#pragma once

#include <kj/async-io.h>
#include <kj/async.h>
#include <kj/refcount.h>
#include <kj/timer.h>

#include "loop/uring_event_port.h"
#include "nodeagent/init_channel.h"
#include "schema/gateway.capnp.h"

namespace nodeagent {

struct ExitInfo {
  api::ExitReason reason;
  int code = 0;
  int signal = 0;
};

class ExecProcess final : public kj::Refcounted {
 public:
  // Starts streaming stdout/stderr into `output` at once. `exitStatus` is the
  // init's report of the wait status; it breaks when the sandbox is killed.
  ExecProcess(loop::UringEventPort& port, SpawnedProcess spawned, api::OutputSink::Client output,
              kj::Promise<int> exitStatus, kj::Maybe<kj::Duration> timeout);
  KJ_DISALLOW_COPY(ExecProcess);

  int pid() const { return pid_; }

  // Resolves once the process exited and its output was delivered.
  kj::Promise<ExitInfo> wait() { return done_.addBranch(); }

  void signal(int signo);
  kj::Promise<void> writeStdin(kj::ArrayPtr<const kj::byte> data);
  void closeStdin();

 private:
  kj::Promise<void> pump(kj::AsyncInputStream& in, bool isStderr);
  ExitInfo classify(int waitStatus);

  loop::UringEventPort& port_;
  int pid_;
  kj::AutoCloseFd pidfd_;
  kj::Maybe<kj::Own<kj::AsyncOutputStream>> stdin_;
  kj::Own<kj::AsyncInputStream> stdout_;
  kj::Own<kj::AsyncInputStream> stderr_;
  api::OutputSink::Client output_;
  bool timedOut_ = false;
  kj::ForkedPromise<void> pumps_;
  kj::ForkedPromise<ExitInfo> done_;
};

}  // namespace nodeagent
