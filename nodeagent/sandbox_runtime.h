// A live (or ended) sandbox as the agent holds it: its init, cgroup, files,
// processes and timeout. The Supervisor creates it; RPC objects hold
// references to it.
#pragma once

#include <sys/types.h>

#include <capnp/message.h>
#include <kj/async.h>
#include <kj/function.h>
#include <kj/refcount.h>

#include "isolator/cgroup.h"
#include "loop/uring_event_port.h"
#include "nodeagent/exec_process.h"
#include "nodeagent/init_channel.h"
#include "nodeagent/sandbox_fs.h"
#include "schema/gateway.capnp.h"
#include "schema/state.capnp.h"

namespace nodeagent {

class SandboxRuntime final : public kj::Refcounted {
 public:
  struct Parts {
    kj::Own<capnp::MallocMessageBuilder> record;  // root: state::SandboxRecord
    kj::Own<isolator::SandboxCgroup> cgroup;
    pid_t initPid;
    kj::AutoCloseFd initPidfd;
    kj::AutoCloseFd control;
    kj::AutoCloseFd rootDir;
    kj::String workDir;
  };
  // Called once when the sandbox has ended and its resources are released.
  using EndedCallback = kj::Function<void(SandboxRuntime&)>;

  SandboxRuntime(loop::UringEventPort& port, Parts parts, EndedCallback onEnded);
  ~SandboxRuntime() noexcept(false);
  KJ_DISALLOW_COPY(SandboxRuntime);

  kj::StringPtr id() const { return id_; }
  state::SandboxRecord::Reader record() { return record_->getRoot<state::SandboxRecord>(); }
  bool running() const { return !ended_; }

  kj::Promise<kj::Own<ExecProcess>> exec(api::ExecRequest::Reader request,
                                         api::OutputSink::Client output);
  SandboxFs& files();
  // Kills every process and releases the sandbox; `reason` is recorded.
  void kill(kj::StringPtr reason);
  void setTimeout(uint32_t seconds);
  void fillUsage(api::Usage::Builder usage);
  void countRequest() { ++rpcRequests_; }

  // Resolves when the sandbox has ended and been cleaned up.
  kj::Promise<void> whenEnded() {
    return ended_ ? kj::Promise<void>(kj::READY_NOW) : endedFork_.addBranch();
  }

 private:
  void requireRunning();
  kj::Promise<void> watchInit();
  void armTimeout();
  void finish();
  void captureFinalStats();

  loop::UringEventPort& port_;
  kj::Own<capnp::MallocMessageBuilder> record_;
  kj::String id_;
  kj::Own<isolator::SandboxCgroup> cgroup_;
  kj::AutoCloseFd initPidfd_;
  InitChannel channel_;
  SandboxFs fs_;
  kj::String workDir_;
  EndedCallback onEnded_;
  kj::String pendingReason_;
  bool ended_ = false;
  uint64_t rpcRequests_ = 0;
  uint64_t execs_ = 0;
  int64_t startedMonoNs_;
  int64_t endedMonoNs_ = 0;
  isolator::CgroupStats finalStats_{};
  kj::Promise<void> timeoutTask_ = nullptr;
  kj::Own<kj::PromiseFulfiller<void>> endedFulfiller_;
  kj::ForkedPromise<void> endedFork_;
  kj::Promise<void> watchTask_ = nullptr;
};

}  // namespace nodeagent
