// A live (or ended) sandbox as the agent holds it: its init, cgroup, files,
// processes, pause state and timeout. The Supervisor creates it; RPC objects
// hold references to it.
#pragma once

#include <atomic>

#include <sys/types.h>

#include <deque>
#include <map>

#include <capnp/message.h>
#include <kj/async.h>
#include <kj/function.h>
#include <kj/refcount.h>

#include "ebpf/cpu_meter.h"
#include "isolator/cgroup.h"
#include "loop/uring_event_port.h"
#include "nodeagent/cpu_credit.h"
#include "nodeagent/exec_process.h"
#include "nodeagent/init_channel.h"
#include "nodeagent/sandbox_fs.h"
#include "nodeagent/usage_counters.h"
#include "schema/gateway.capnp.h"
#include "schema/state.capnp.h"

namespace nodeagent {

class SandboxRuntime final : public kj::Refcounted {
 public:
  static constexpr size_t kEndedProcessesKept = 64;

  struct Parts {
    kj::Own<capnp::MallocMessageBuilder> record;  // root: state::SandboxRecord
    kj::Own<isolator::SandboxCgroup> cgroup;
    pid_t initPid;
    kj::AutoCloseFd initPidfd;
    kj::AutoCloseFd control;
    kj::AutoCloseFd rootDir;
    kj::String workDir;
    kj::String controlSocketPath;  // unlinked when the sandbox ends
    // A sandbox a previous agent launched (`control` reconnected to its init):
    // its processes come back through a resync, its clocks from the record.
    bool adopted = false;
    kj::Maybe<ebpf::CpuMeter&> cpuMeter;  // null where the eBPF meter could not start
  };
  // What the runtime tells its owner.
  struct Hooks {
    // Once, when the sandbox has ended: no tenant code runs any more (its
    // tasks may still be exiting).
    kj::Function<void(SandboxRuntime&)> ended;
    // Once, after `ended`, when its tasks are gone and its cgroups, mounts
    // and host paths released.
    kj::Function<void(SandboxRuntime&)> released;
    // The lifetime ran out; the owner kills or pauses it (spec.onTimeout).
    kj::Function<void(SandboxRuntime&)> expired;
    // Its CPU time reached spec.cpuCapMillis; the owner kills or pauses it
    // (spec.onCpuCap). Once per arming: a claim re-arms it.
    kj::Function<void(SandboxRuntime&)> cpuCapped;
  };

  SandboxRuntime(loop::UringEventPort& port, Parts parts, Hooks hooks);
  ~SandboxRuntime() noexcept(false);
  KJ_DISALLOW_COPY(SandboxRuntime);

  // Runtimes in this process now: none once their owner is gone (the agent
  // checks at exit; one left is a reference cycle).
  static size_t liveCount() { return liveCount_.load(std::memory_order_relaxed); }

  kj::StringPtr id() const { return id_; }
  int cgroupV2Fd() const { return cgroup_->v2Fd(); }
  state::SandboxRecord::Reader record() { return record_->getRoot<state::SandboxRecord>(); }
  bool running() const { return !ended_; }  // alive, paused or not
  bool paused() const { return runState_ != RunState::kRunning; }

  // `output` null: the output only lands in the process's rings (detached).
  kj::Promise<kj::Own<ExecProcess>> exec(api::ExecRequest::Reader request,
                                         kj::Maybe<api::OutputSink::Client> output);
  SandboxFs& files();
  // Kills every process and releases the sandbox; `reason` is recorded. A
  // paused sandbox dies without running again. Where the kernel has
  // cgroup.kill the sandbox has ended when this returns (whenEnded() is
  // ready); its release follows once its tasks have exited.
  void kill(kj::StringPtr reason);
  void setTimeout(uint32_t seconds);
  // Records the network settings now in effect (spec fields and address slot).
  void recordNetwork(api::NetworkSettings::Reader settings, uint32_t netIndex);
  // The kernel's id of the sandbox's v2 cgroup (egress policy key); changes at a claim.
  uint64_t cgroupId() const;
  void fillUsage(api::Usage::Builder usage);
  // Counts a request (kill, info and usage: never refused, so a sandbox can
  // always be ended and billed).
  void countRequest() { ++rpcRequests_; }
  // Counts one and refuses it (limitExceeded) beyond spec.requestCap.
  void admitRequest();

  // The usage ledger's view: cumulative counters as of now (as of the end
  // once ended). Takes a memory sample first.
  UsageCounters usageCounters();
  // Adds memory.current to the memory integral (trapezoids between samples).
  // The ledger calls it every few seconds; a cheap no-op once ended.
  void sampleMemory();
  // An adopted sandbox's counters that lived only in the old agent's memory
  // (requests, the memory integral) carry on from what the ledger billed.
  void resumeCounters(state::BilledTotals::Reader billed);

  // THE EGRESS HOOK. Where the sandbox's egress byte count comes from: bytes
  // it sent off the host, cumulative since its network was set up, never
  // decreasing, and (like the pinned CPU meter) still counting across agent
  // restarts. Called on the event loop at every usage read and ledger record,
  // so it must be cheap (a BPF map lookup) and must not block; it is not
  // called once the sandbox has ended. The default reports 0: a sandbox
  // without a network sends nothing. The network code sets it right after
  // the runtime is built (Supervisor::startRuntime); a claim from a warm pool
  // bills from the claim on (the reading at the claim is subtracted).
  using EgressSource = kj::Function<uint64_t()>;
  void setEgressSource(EgressSource source);

  // Freezes every process (record state PAUSED). Resolves once frozen, with
  // whether this call paused it (false: it already was).
  kj::Promise<bool> pause();
  // Thaws it; whether this call resumed it. A lifetime that ran out while
  // paused starts again (spec.timeoutSeconds from now).
  kj::Promise<bool> resume();

  // Hands a pool sandbox (idle, never exec'd into) to a tenant. The record
  // becomes `record` (same id); every process moves into `cgroup`, which
  // carries the tenant's limits, and the pool's cgroup is removed; usage
  // counts from now and the timeout is armed from the new record. If the
  // move fails the sandbox is killed ("claim-failed") and this throws.
  void claim(state::SandboxRecord::Reader record, kj::Own<isolator::SandboxCgroup> cgroup);

  // Resolves once an adopted sandbox got its processes back from init (at
  // once for any other). Throws `unavailable` while an adopted sandbox stays
  // paused: its frozen init cannot answer until resumed.
  kj::Promise<void> whenSynced();

  // Exec'd processes: the running ones and the last kEndedProcessesKept ended.
  size_t processCount() const { return running_.size() + endedProcesses_.size(); }
  void fillProcesses(capnp::List<api::ProcessInfo>::Builder out);
  // A running exec'd process by its in-sandbox pid.
  kj::Own<ExecProcess> findProcess(uint32_t pid);

  // Resolves when the sandbox has ended: every process of it is dead and the
  // record says why.
  kj::Promise<void> whenEnded() {
    return ended_ ? kj::Promise<void>(kj::READY_NOW) : endedFork_.addBranch();
  }
  // Resolves once, after the end, its cgroups, mounts and host paths are gone.
  kj::Promise<void> whenReleased() { return releasedFork_.addBranch(); }
  bool released() const { return released_; }

 private:
  static std::atomic<size_t> liveCount_;
  // Counts this runtime in liveCount_ from its first member to its last.
  struct Counted {
    Counted() { liveCount_.fetch_add(1); }
    ~Counted() { liveCount_.fetch_sub(1); }
    KJ_DISALLOW_COPY(Counted);
  };
  Counted counted_;

  enum class RunState { kRunning, kPausing, kPaused };
  struct EndedProcess {
    uint32_t pid;
    kj::Array<kj::String> argv;
    int64_t startedAtNs;
    int64_t endedAtNs;
    ExitInfo exit;
    ProcessOutput::Offsets bytes;
  };

  void requireRunning();
  kj::Promise<void> watchInit();
  void armTimeout();
  void armCpuCap();
  kj::Promise<void> watchCpuCap(uint64_t capNs);
  // The CPU quota follows the sandbox's burst credit (CpuCredit): checked
  // when it could next change, set when it does.
  void armCpuCredit(CpuCredit::Start start);
  kj::Promise<void> watchCpuCredit();
  // Feeds `credit` what the sandbox used since the last check (CPU time now
  // `usedNs`, at `nowMonoNs`).
  void accountCpuCredit(CpuCredit& credit, uint64_t usedNs, int64_t nowMonoNs);
  // CPU time so far: the eBPF meter's, or the cgroup's where it cannot run.
  uint64_t cpuUsedNs();
  void finish();
  kj::Promise<void> releaseResources();
  kj::Promise<void> removeCgroup(isolator::SandboxCgroup& cgroup, kj::Duration delay,
                                 int64_t deadlineMonoNs);
  void releaseLeftoverCgroup();
  void captureFinalStats();
  void holdMountNamespace();
  // On-CPU ns from the eBPF meter (0 without it); never less than it said before.
  uint64_t meteredCpuNs();
  // What the ledger bills as CPU: cpuUsedNs(), frozen at the end.
  uint64_t billableCpuNs();
  void wallNs(uint64_t* running, uint64_t* paused);
  uint64_t egressBytes();  // from egressSource_, less egressBase_; latched at the end
  void trackCpu();
  void untrackCpu();
  kj::Promise<void> waitFrozen(int64_t deadlineMonoNs, kj::Duration delay);
  void track(kj::Own<ExecProcess> process);
  void adoptProcesses();
  kj::Promise<ProcessExit> exitStatusOf(int pid);
  ExecProcess::Options processOptions(kj::Array<kj::String> argv, int64_t timeoutAtMonoNs);
  void retire(ExecProcess& process);

  loop::UringEventPort& port_;
  kj::Own<capnp::MallocMessageBuilder> record_;
  kj::String id_;
  kj::Own<isolator::SandboxCgroup> cgroup_;
  kj::Maybe<kj::Own<isolator::SandboxCgroup>> leftoverCgroup_;  // a failed claim's pool cgroup
  kj::AutoCloseFd initPidfd_;
  // The sandbox's mount namespace, held so that init's exit does not unmount
  // its ~30 mounts before the kernel reports the exit: a kill is answered
  // sooner, and the unmounting happens when this closes, after the answer
  // (releaseResources()).
  kj::AutoCloseFd mountNamespace_;
  InitChannel channel_;
  SandboxFs fs_;
  kj::String workDir_;
  kj::String controlSocketPath_;
  Hooks hooks_;
  kj::String pendingReason_;
  bool ended_ = false;
  bool released_ = false;
  uint64_t rpcRequests_ = 0;
  uint64_t execs_ = 0;
  int64_t startedMonoNs_;
  int64_t endedMonoNs_ = 0;
  RunState runState_ = RunState::kRunning;
  int64_t pausedSinceMonoNs_ = 0;                // while paused
  int64_t pausedTotalNs_ = 0;                    // of the spans that ended
  kj::Maybe<kj::ForkedPromise<void>> freezing_;  // while kPausing
  isolator::CgroupStats finalStats_{};
  kj::Maybe<ebpf::CpuMeter&> cpuMeter_;
  uint64_t cpuCgroupId_ = 0;      // the v2 leaf the meter charges (0: not metered)
  bool cpuTracked_ = false;       // the meter counts it still (until the release)
  uint64_t meteredCpuNs_ = 0;     // the largest reading so far; final once ended
  double memoryByteSeconds_ = 0;  // the integral up to memorySampledMonoNs_
  int64_t memorySampledMonoNs_ = 0;
  uint64_t memoryLastBytes_ = 0;
  EgressSource egressSource_;
  uint64_t egressBase_ = 0;                      // the source's reading at a warm-pool claim
  uint64_t egressBytes_ = 0;                     // the largest figure reported so far
  std::map<int, kj::Own<ExecProcess>> running_;  // by in-sandbox pid
  std::deque<EndedProcess> endedProcesses_;      // oldest first
  kj::Promise<void> timeoutTask_ = nullptr;
  kj::Promise<void> cpuCapTask_ = nullptr;
  kj::Maybe<CpuCredit> cpuCredit_;  // null when the sustained share is the burst
  uint64_t cpuCreditUsedNs_ = 0;    // CPU time at the last check
  int64_t cpuCreditCheckedMonoNs_ = 0;
  kj::Promise<void> cpuCreditTask_ = nullptr;
  kj::Own<kj::PromiseFulfiller<void>> endedFulfiller_;
  kj::ForkedPromise<void> endedFork_;
  kj::Own<kj::PromiseFulfiller<void>> releasedFulfiller_;
  kj::ForkedPromise<void> releasedFork_;
  kj::Promise<void> watchTask_ = nullptr;
  struct ErrorLogger : public kj::TaskSet::ErrorHandler {
    void taskFailed(kj::Exception&& e) override;
  } errorLogger_;
  kj::TaskSet processWatches_;
  kj::Maybe<kj::ForkedPromise<void>> syncing_;  // adopted: until init answered the resync
  bool synced_ = true;
};

}  // namespace nodeagent
