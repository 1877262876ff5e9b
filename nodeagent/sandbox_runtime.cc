#include "nodeagent/sandbox_runtime.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <kj/debug.h>

#include "nodeagent/api_error.h"
#include "util/clock.h"
#include "util/log.h"

namespace nodeagent {
namespace {

// Freezing waits for every task to stop; one stuck in the kernel (a D-state
// sleep) can hold it up, and then the pause fails rather than hang.
constexpr int64_t kFreezeDeadlineNs = 2'000'000'000;
constexpr kj::Duration kFreezeFirstPoll = 200 * kj::MICROSECONDS;
constexpr kj::Duration kFreezeMaxPoll = 20 * kj::MILLISECONDS;
// Removing an ended sandbox's cgroups: how long its last tasks get to leave.
constexpr kj::Duration kCgroupFirstPoll = 100 * kj::MICROSECONDS;
constexpr kj::Duration kCgroupMaxPoll = 20 * kj::MILLISECONDS;
constexpr int64_t kCgroupRemoveDeadlineNs = 200'000'000;
// A claimed sandbox's pool cgroup is removed this long after the claim, so
// that the tenant's first calls (an exec pipelined on the create) go first.
constexpr kj::Duration kPoolCgroupRemoveDelay = 20 * kj::MILLISECONDS;

}  // namespace

void SandboxRuntime::ErrorLogger::taskFailed(kj::Exception&& e) {
  log::error("sandbox.task_failed", {{"error", e.getDescription().cStr()}});
}

std::atomic<size_t> SandboxRuntime::liveCount_{0};

SandboxRuntime::SandboxRuntime(loop::UringEventPort& port, Parts parts, Hooks hooks)
    : port_(port),
      record_(kj::mv(parts.record)),
      id_(kj::str(record_->getRoot<state::SandboxRecord>().getId())),
      cgroup_(kj::mv(parts.cgroup)),
      initPidfd_(kj::mv(parts.initPidfd)),
      channel_(port, kj::mv(parts.control)),
      fs_(kj::mv(parts.rootDir), record().getUidBase(), record().getUidBase()),
      workDir_(kj::mv(parts.workDir)),
      controlSocketPath_(kj::mv(parts.controlSocketPath)),
      hooks_(kj::mv(hooks)),
      startedMonoNs_(monotonicNowNs()),
      cpuMeter_(parts.cpuMeter),
      egressSource_([]() -> uint64_t { return 0; }),
      endedFork_(nullptr),
      releasedFork_(nullptr),
      processWatches_(errorLogger_) {
  auto paf = kj::newPromiseAndFulfiller<void>();
  endedFulfiller_ = kj::mv(paf.fulfiller);
  endedFork_ = paf.promise.fork();
  auto released = kj::newPromiseAndFulfiller<void>();
  releasedFulfiller_ = kj::mv(released.fulfiller);
  releasedFork_ = released.promise.fork();
  holdMountNamespace();
  trackCpu();
  watchTask_ = watchInit().eagerlyEvaluate([this](kj::Exception&& e) {
    log::error("sandbox.watch_failed", {{"id", id_.cStr()}, {"error", e.getDescription().cStr()}});
  });
  if (parts.adopted) {
    // The clocks carry on from the record (wall clock) on this agent's monotonic one.
    auto rec = record();
    int64_t unixNow = unixNowNs(), monoNow = monotonicNowNs();
    startedMonoNs_ = monoNow - (unixNow - rec.getCreatedAtNs());
    pausedTotalNs_ = rec.getPausedNs();
    // The record is what the tenant was told; the cgroup follows it (the old
    // agent may have died between freezing and recording, or the reverse).
    if (rec.getState() == api::SandboxState::PAUSED) {
      cgroup_->freeze();
      runState_ = RunState::kPaused;
      pausedSinceMonoNs_ = monoNow - (unixNow - rec.getPausedAtNs());
    } else if (cgroup_->frozen()) {
      cgroup_->thaw();
    }
    adoptProcesses();
  }
  // The memory integral starts at creation (an adopted sandbox's at its last
  // billed record, see resumeCounters()).
  memorySampledMonoNs_ = startedMonoNs_;
  if (!parts.adopted) sampleMemory();
  armTimeout();
  armCpuCap();
  armCpuCredit(parts.adopted ? CpuCredit::Start::kRestoreLevel : CpuCredit::Start::kFull);
}

void SandboxRuntime::adoptProcesses() {
  synced_ = false;
  syncing_ = channel_.resync()
                 .then([this](kj::Array<AdoptedProcess> adopted) {
                   for (auto& a : adopted) {
                     int pid = a.process.pid;
                     auto options = processOptions(kj::mv(a.argv), a.timeoutAtMonoNs);
                     options.startedAtNs = a.startedAtNs;
                     track(kj::refcounted<ExecProcess>(port_, kj::mv(a.process), nullptr,
                                                       exitStatusOf(pid), kj::mv(options)));
                   }
                   synced_ = true;
                   log::info("sandbox.resynced",
                             {{"id", id_.cStr()}, {"processes", int64_t(adopted.size())}});
                 })
                 .eagerlyEvaluate([this](kj::Exception&& e) {
                   // init is gone; watchInit() ends the sandbox.
                   log::warn("sandbox.resync_failed",
                             {{"id", id_.cStr()}, {"error", e.getDescription().cStr()}});
                 })
                 .fork();
}

kj::Promise<void> SandboxRuntime::whenSynced() {
  if (synced_) return kj::READY_NOW;
  if (paused()) {
    throwApiError(api::ErrorCode::UNAVAILABLE,
                  kj::str("sandbox ", id_,
                          " was paused when the agent restarted; resume it to see its processes"));
  }
  return KJ_ASSERT_NONNULL(syncing_).addBranch();
}

kj::Promise<ProcessExit> SandboxRuntime::exitStatusOf(int pid) {
  // If init goes, the process went with the sandbox: report that only once
  // the sandbox's end is recorded, so whoever sees the exit also sees why.
  return channel_.exitStatus(pid).catch_([this](kj::Exception&& e) -> kj::Promise<ProcessExit> {
    return whenEnded().then(
        [e = kj::mv(e)]() mutable -> kj::Promise<ProcessExit> { return kj::mv(e); });
  });
}

ExecProcess::Options SandboxRuntime::processOptions(kj::Array<kj::String> argv,
                                                    int64_t timeoutAtMonoNs) {
  ExecProcess::Options options;
  options.argv = kj::mv(argv);
  if (timeoutAtMonoNs > 0) {
    options.timeout = kj::max(timeoutAtMonoNs - monotonicNowNs(), int64_t(0)) * kj::NANOSECONDS;
  }
  // Read now, so an OOM kill of the process from here on counts.
  uint64_t oomBefore = 0;
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { oomBefore = cgroup_->oomKills(); })) {
    log::warn("sandbox.stats_failed", {{"id", id_.cStr()}, {"error", e->getDescription().cStr()}});
  }
  options.oomKilledSince = [this, oomBefore]() {
    bool oom = false;
    // The cgroup may be gone already (the sandbox ended meanwhile).
    kj::runCatchingExceptions([&]() { oom = cgroup_->oomKills() > oomBefore; });
    return oom;
  };
  return options;
}

SandboxRuntime::~SandboxRuntime() noexcept(false) {}

void SandboxRuntime::requireRunning() {
  if (ended_ || pendingReason_.size() > 0) {
    throwApiError(api::ErrorCode::NOT_RUNNING, kj::str("sandbox ", id_, " has ended"));
  }
}

kj::Promise<kj::Own<ExecProcess>> SandboxRuntime::exec(api::ExecRequest::Reader request,
                                                       kj::Maybe<api::OutputSink::Client> output) {
  requireRunning();
  if (paused()) throwApiError(api::ErrorCode::NOT_RUNNING, kj::str("sandbox ", id_, " is paused"));
  if (request.getArgv().size() == 0) {
    throwApiError(api::ErrorCode::INVALID_ARGUMENT, "exec needs at least argv[0]");
  }
  SpawnRequest spawn;
  spawn.argv = KJ_MAP(arg, request.getArgv()) {
    return kj::str(arg);
  };
  // The sandbox's env first, then the exec's: a later KEY=... wins in init.
  kj::Vector<kj::String> env;
  env.add(kj::str("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"));
  env.add(kj::str("HOME=/root"));
  env.add(kj::str("LANG=C.UTF-8"));
  for (auto kv : record().getSpec().getEnv()) env.add(kj::str(kv.getKey(), "=", kv.getValue()));
  for (auto kv : request.getEnv()) {
    if (kv.getKey().size() == 0 || kv.getKey().findFirst('=') != nullptr) {
      throwApiError(api::ErrorCode::INVALID_ARGUMENT,
                    kj::str("bad environment variable name: ", kv.getKey()));
    }
    env.add(kj::str(kv.getKey(), "=", kv.getValue()));
  }
  spawn.env = env.releaseAsArray();
  spawn.cwd = kj::str(request.getCwd().size() > 0 ? request.getCwd() : "/");
  spawn.stdinOpen = request.getStdin();
  if (request.getTimeoutSeconds() > 0) {
    spawn.timeoutAtMonoNs = monotonicNowNs() + int64_t(request.getTimeoutSeconds()) * 1000000000;
  }
  // Built before the spawn, so an OOM kill of the new process always counts.
  auto options = processOptions(
      KJ_MAP(arg, spawn.argv) { return kj::str(arg); }, spawn.timeoutAtMonoNs);
  ++execs_;

  return channel_.spawn(spawn).then(
      [this, output = kj::mv(output), options = kj::mv(options)](SpawnedProcess&& spawned) mutable {
        int pid = spawned.pid;
        options.stdinClosed = [this, pid]() { channel_.closeStdin(pid); };
        auto process = kj::refcounted<ExecProcess>(port_, kj::mv(spawned), kj::mv(output),
                                                   exitStatusOf(pid), kj::mv(options));
        track(kj::addRef(*process));
        return process;
      });
}

void SandboxRuntime::track(kj::Own<ExecProcess> process) {
  int pid = process->pid();
  auto old = running_.find(pid);
  // The pid's previous owner exited and is still delivering its last output.
  if (old != running_.end()) retire(*old->second);
  ExecProcess* key = process.get();
  processWatches_.add(process->wait().ignoreResult().then([this, pid, key]() {
    auto it = running_.find(pid);
    if (it != running_.end() && it->second.get() == key) retire(*it->second);
  }));
  running_.emplace(pid, kj::mv(process));
}

void SandboxRuntime::retire(ExecProcess& process) {
  ExitInfo exit{api::ExitReason::KILLED, 0, SIGKILL};
  KJ_IF_MAYBE (info, process.exitInfo()) {
    exit = *info;
  }
  EndedProcess ended{uint32_t(process.pid()), KJ_MAP(arg, process.argv()){return kj::str(arg);
}
, process.startedAtNs(), process.endedAtNs(), exit, process.outputBytes()
};  // namespace nodeagent
// init keeps the pipes of a process until told it may forget it.
if (process.exitInfo() != nullptr) channel_.release(process.pid());
endedProcesses_.push_back(kj::mv(ended));
if (endedProcesses_.size() > kEndedProcessesKept) endedProcesses_.pop_front();
running_.erase(process.pid());  // last: `process` may die with its entry
}

void SandboxRuntime::fillProcesses(capnp::List<api::ProcessInfo>::Builder out) {
  auto fillStatus = [](api::ExitStatus::Builder status, const ExitInfo& exit) {
    status.setReason(exit.reason);
    status.setCode(exit.code);
    status.setSignal(exit.signal);
    status.setCpuNs(exit.cpuNs);
  };
  size_t i = 0;
  for (auto& e : endedProcesses_) {
    auto p = out[i++];
    p.setPid(e.pid);
    auto argv = p.initArgv(e.argv.size());
    for (size_t a = 0; a < e.argv.size(); ++a) argv.set(a, e.argv[a]);
    p.setStartedAtNs(e.startedAtNs);
    p.setRunning(false);
    fillStatus(p.initStatus(), e.exit);
    p.setEndedAtNs(e.endedAtNs);
    p.setStdoutBytes(e.bytes.out);
    p.setStderrBytes(e.bytes.err);
  }
  for (auto& [pid, process] : running_) {
    auto p = out[i++];
    p.setPid(uint32_t(pid));
    auto argv = p.initArgv(process->argv().size());
    for (size_t a = 0; a < process->argv().size(); ++a) argv.set(a, process->argv()[a]);
    p.setStartedAtNs(process->startedAtNs());
    // Exited, still delivering its last output: no longer running.
    KJ_IF_MAYBE (exit, process->exitInfo()) {
      p.setRunning(false);
      fillStatus(p.initStatus(), *exit);
      p.setEndedAtNs(process->endedAtNs());
    } else {
      p.setRunning(true);
    }
    p.setStdoutBytes(process->outputBytes().out);
    p.setStderrBytes(process->outputBytes().err);
  }
}

kj::Own<ExecProcess> SandboxRuntime::findProcess(uint32_t pid) {
  auto it = running_.find(int(pid));
  if (it == running_.end()) {
    for (auto& e : endedProcesses_) {
      if (e.pid == pid) {
        throwApiError(api::ErrorCode::NOT_RUNNING, kj::str("process ", pid, " has exited"));
      }
    }
    throwApiError(api::ErrorCode::NOT_FOUND,
                  kj::str("no process ", pid, " started by exec in sandbox ", id_));
  }
  if (it->second->exitInfo() != nullptr) {
    throwApiError(api::ErrorCode::NOT_RUNNING, kj::str("process ", pid, " has exited"));
  }
  return kj::addRef(*it->second);
}

SandboxFs& SandboxRuntime::files() {
  requireRunning();
  return fs_;
}

kj::Promise<bool> SandboxRuntime::pause() {
  requireRunning();
  switch (runState_) {
    case RunState::kPaused:
      return false;
    case RunState::kPausing:
      return KJ_ASSERT_NONNULL(freezing_).addBranch().then([]() { return false; });
    case RunState::kRunning:
      break;
  }
  cgroup_->freeze();
  runState_ = RunState::kPausing;
  pausedSinceMonoNs_ = monotonicNowNs();
  record_->getRoot<state::SandboxRecord>().setState(api::SandboxState::PAUSED);
  record_->getRoot<state::SandboxRecord>().setPausedAtNs(unixNowNs());
  int64_t deadline = pausedSinceMonoNs_ + kFreezeDeadlineNs;
  auto frozen =
      kj::evalNow([&]() { return waitFrozen(deadline, kFreezeFirstPoll); })
          .catch_([this](kj::Exception&& e) -> kj::Promise<void> {
            // Not frozen in time (or the cgroup failed us): run on.
            // A sandbox killed meanwhile is left to finish().
            if (runState_ == RunState::kPausing && pendingReason_.size() == 0) {
              kj::runCatchingExceptions([&]() { cgroup_->thaw(); });
              runState_ = RunState::kRunning;
              record_->getRoot<state::SandboxRecord>().setState(api::SandboxState::RUNNING);
            }
            return kj::mv(e);
          })
          .fork();
  auto result = frozen.addBranch().then([]() { return true; });
  freezing_ = kj::mv(frozen);
  return result;
}

kj::Promise<void> SandboxRuntime::waitFrozen(int64_t deadlineMonoNs, kj::Duration delay) {
  requireRunning();  // killed meanwhile
  if (cgroup_->frozen()) {
    runState_ = RunState::kPaused;
    return kj::READY_NOW;
  }
  if (monotonicNowNs() >= deadlineMonoNs) {
    log::warn("sandbox.freeze_timeout", {{"id", id_.cStr()}});
    throwApiError(api::ErrorCode::UNAVAILABLE,
                  kj::str("sandbox ", id_, " did not freeze in time; it keeps running"));
  }
  cgroup_->freeze();  // nudges a v1 freezer stuck half way
  return port_.timer().afterDelay(delay).then([this, deadlineMonoNs, delay]() {
    return waitFrozen(deadlineMonoNs, kj::min(delay * 2, kFreezeMaxPoll));
  });
}

kj::Promise<bool> SandboxRuntime::resume() {
  requireRunning();
  switch (runState_) {
    case RunState::kRunning:
      return false;
    case RunState::kPausing:
      // Let the freeze settle first, so its outcome cannot undo this resume.
      return KJ_ASSERT_NONNULL(freezing_).addBranch().then(
          [this]() { return resume(); }, [this](kj::Exception&&) { return resume(); });
    case RunState::kPaused:
      break;
  }
  cgroup_->thaw();
  runState_ = RunState::kRunning;
  int64_t now = monotonicNowNs();
  pausedTotalNs_ += now - pausedSinceMonoNs_;
  auto rec = record_->getRoot<state::SandboxRecord>();
  rec.setPausedNs(pausedTotalNs_);
  rec.setState(api::SandboxState::RUNNING);
  if (rec.getExpiresAtNs() <= unixNowNs()) {
    // Expired while paused (or paused by expiry): never run unbounded.
    rec.setExpiresAtNs(unixNowNs() + int64_t(rec.getSpec().getTimeoutSeconds()) * 1000000000);
    armTimeout();
  }
  return true;
}

void SandboxRuntime::claim(state::SandboxRecord::Reader record,
                           kj::Own<isolator::SandboxCgroup> cgroup) {
  requireRunning();
  KJ_REQUIRE(!paused() && running_.empty() && execs_ == 0, "only an idle pool sandbox is claimed");
  auto old = kj::mv(cgroup_);
  untrackCpu();  // the tenant's count starts at the claim, as its cgroup's does
  meteredCpuNs_ = 0;
  cgroup_ = kj::mv(cgroup);
  trackCpu();
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                 // An idle sandbox runs its init only; a few rounds catch any
                 // process forked meanwhile.
                 for (int round = 0; round < 10; ++round) {
                   auto pids = old->pids();
                   if (pids.empty()) break;
                   for (pid_t pid : pids) {
                     KJ_IF_MAYBE (moveError,
                                  kj::runCatchingExceptions([&]() { cgroup_->addProcess(pid); })) {
                       if (::kill(pid, 0) == 0 || errno != ESRCH)
                         kj::throwFatalException(kj::mv(*moveError));
                     }
                   }
                 }
               })) {
    log::error("sandbox.claim_failed", {{"id", id_.cStr()}, {"error", e->getDescription().cStr()}});
    leftoverCgroup_ = kj::mv(old);  // finish() removes it with the new one
    kill("claim-failed");
    kj::throwFatalException(kj::mv(*e));
  }
  // The pool's cgroup goes after the reply and the tenant's first calls:
  // nothing runs in it any more.
  processWatches_.add(
      port_.timer().afterDelay(kPoolCgroupRemoveDelay).then([this, old = kj::mv(old)]() mutable {
        auto& cgroup = *old;
        return removeCgroup(cgroup, kCgroupFirstPoll, monotonicNowNs() + kCgroupRemoveDeadlineNs)
            .attach(kj::mv(old));
      }));
  record_->setRoot(record);
  startedMonoNs_ = monotonicNowNs();
  rpcRequests_ = 0;
  // The tenant's usage starts at the claim, from nothing: no memory is
  // charged to a cgroup made just now (charges stay where they were made).
  memoryByteSeconds_ = 0;
  memorySampledMonoNs_ = startedMonoNs_;
  memoryLastBytes_ = 0;
  egressBase_ = 0;
  kj::runCatchingExceptions([&]() { egressBase_ = egressSource_(); });
  egressBytes_ = 0;
  armTimeout();
  armCpuCap();
  armCpuCredit(CpuCredit::Start::kFull);  // its new cgroup starts at the burst
}

void SandboxRuntime::admitRequest() {
  ++rpcRequests_;
  uint64_t cap = record().getSpec().getRequestCap();
  if (cap != 0 && rpcRequests_ > cap) {
    --rpcRequests_;  // a refused request is no request
    throwApiError(api::ErrorCode::LIMIT_EXCEEDED,
                  kj::str("sandbox ", id_, " has made its ", cap,
                          " requests (its request cap); kill, info and usage still work"));
  }
}

void SandboxRuntime::setEgressSource(EgressSource source) {
  egressSource_ = kj::mv(source);
}

uint64_t SandboxRuntime::egressBytes() {
  if (ended_) return egressBytes_;
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                 uint64_t total = egressSource_();
                 uint64_t since = total > egressBase_ ? total - egressBase_ : 0;
                 egressBytes_ = kj::max(egressBytes_, since);
               })) {
    log::warn("sandbox.egress_read_failed",
              {{"id", id_.cStr()}, {"error", e->getDescription().cStr()}});
  }
  return egressBytes_;
}

void SandboxRuntime::sampleMemory() {
  int64_t now = ended_ ? endedMonoNs_ : monotonicNowNs();
  uint64_t bytes = memoryLastBytes_;  // once killed, the last figure holds to the end
  if (!ended_ && pendingReason_.size() == 0) {
    KJ_IF_MAYBE (e, kj::runCatchingExceptions(
                        [&]() { bytes = cgroup_->stats().memoryCurrentBytes; })) {
      log::warn("sandbox.stats_failed",
                {{"id", id_.cStr()}, {"error", e->getDescription().cStr()}});
    }
  }
  if (now > memorySampledMonoNs_) {
    double seconds = double(now - memorySampledMonoNs_) / 1e9;
    memoryByteSeconds_ += (double(memoryLastBytes_) + double(bytes)) / 2 * seconds;
    memorySampledMonoNs_ = now;
  }
  memoryLastBytes_ = bytes;
}

void SandboxRuntime::resumeCounters(state::BilledTotals::Reader billed) {
  rpcRequests_ = kj::max(rpcRequests_, billed.getRpcRequests());
  memoryByteSeconds_ = double(billed.getMemoryByteSeconds());
  memoryLastBytes_ = billed.getLastMemoryBytes();
  // The gap since then is integrated from that sample to the next.
  memorySampledMonoNs_ = monotonicNowNs() - (unixNowNs() - billed.getBilledToNs());
}

uint64_t SandboxRuntime::billableCpuNs() {
  if (ended_ || pendingReason_.size() > 0) {
    bool metered = cpuMeter_ != nullptr && cpuCgroupId_ != 0;
    return metered ? meteredCpuNs() : finalStats_.cpuUserNs + finalStats_.cpuSystemNs;
  }
  return cpuUsedNs();
}

void SandboxRuntime::wallNs(uint64_t* running, uint64_t* paused) {
  int64_t end = ended_ ? endedMonoNs_ : monotonicNowNs();
  // A sandbox that ends while paused was paused up to its end.
  int64_t pausedNs = pausedTotalNs_ + (this->paused() ? end - pausedSinceMonoNs_ : 0);
  *running = uint64_t(kj::max(end - startedMonoNs_ - pausedNs, int64_t(0)));
  *paused = uint64_t(kj::max(pausedNs, int64_t(0)));
}

UsageCounters SandboxRuntime::usageCounters() {
  sampleMemory();
  UsageCounters c;
  c.cpuNs = billableCpuNs();
  wallNs(&c.wallRunningNs, &c.wallPausedNs);
  c.memoryByteSeconds = uint64_t(memoryByteSeconds_);
  c.memoryBytes = memoryLastBytes_;
  c.egressBytes = egressBytes();
  c.rpcRequests = rpcRequests_;
  return c;
}

void SandboxRuntime::armCpuCap() {
  uint64_t capMillis = record().getSpec().getCpuCapMillis();
  if (capMillis == 0) {
    cpuCapTask_ = nullptr;
    return;
  }
  cpuCapTask_ = watchCpuCap(capMillis * 1000000).eagerlyEvaluate([this](kj::Exception&& e) {
    log::error("sandbox.cpu_cap_failed",
               {{"id", id_.cStr()}, {"error", e.getDescription().cStr()}});
  });
}

kj::Promise<void> SandboxRuntime::watchCpuCap(uint64_t capNs) {
  if (ended_ || pendingReason_.size() > 0) return kj::READY_NOW;
  uint64_t used = cpuUsedNs();
  if (used >= capNs) {
    log::warn("sandbox.cpu_cap", {{"id", id_.cStr()}, {"cpuNs", int64_t(used)}});
    hooks_.cpuCapped(*this);
    return kj::READY_NOW;
  }
  // A sandbox at its full burst allowance reaches the cap no sooner than
  // this; checking then (at least every 10 ms, at most every second) keeps
  // the overshoot small without polling idle sandboxes often.
  uint64_t burstMillis = kj::max(1u, record().getSpec().getCpuMillis());
  uint64_t soonestNs = (capNs - used) * 1000 / burstMillis;
  int64_t delayNs =
      int64_t(kj::min(kj::max(soonestNs, uint64_t(10'000'000)), uint64_t(1'000'000'000)));
  return port_.timer().afterDelay(delayNs * kj::NANOSECONDS).then([this, capNs]() {
    return watchCpuCap(capNs);
  });
}

void SandboxRuntime::armCpuCredit(CpuCredit::Start start) {
  auto spec = record().getSpec();
  CpuCredit credit(spec.getCpuMillis(), spec.getCpuSustainedMillis(), spec.getCpuBurstSeconds(),
                   start);
  cpuCreditTask_ = nullptr;
  if (!credit.applies()) {
    cpuCredit_ = nullptr;
    return;
  }
  cpuCredit_ = credit;
  cpuCreditCheckedMonoNs_ = monotonicNowNs();
  // The cgroup may hold the other quota (an adopted sandbox's last one).
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                 cpuCreditUsedNs_ = cpuUsedNs();
                 cgroup_->setCpuQuota(credit.quotaMillis());
               })) {
    log::warn("sandbox.cpu_quota_failed",
              {{"id", id_.cStr()}, {"error", e->getDescription().cStr()}});
  }
  if (!credit.changes()) return;  // no bucket: the sustained share for good
  cpuCreditTask_ = port_.timer()
                       .afterDelay(credit.nextCheckNs() * kj::NANOSECONDS)
                       .then([this]() { return watchCpuCredit(); })
                       .eagerlyEvaluate([this](kj::Exception&& e) {
                         log::error("sandbox.cpu_credit_failed",
                                    {{"id", id_.cStr()}, {"error", e.getDescription().cStr()}});
                       });
}

void SandboxRuntime::accountCpuCredit(CpuCredit& credit, uint64_t usedNs, int64_t nowMonoNs) {
  credit.account(usedNs - kj::min(usedNs, cpuCreditUsedNs_),
                 uint64_t(kj::max(nowMonoNs - cpuCreditCheckedMonoNs_, int64_t(0))));
}

kj::Promise<void> SandboxRuntime::watchCpuCredit() {
  if (ended_ || pendingReason_.size() > 0) return kj::READY_NOW;
  CpuCredit& credit = KJ_ASSERT_NONNULL(cpuCredit_);
  uint64_t used = 0;
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { used = cpuUsedNs(); })) {
    // Again later, rather than leave the quota where it is for good.
    log::warn("sandbox.cpu_credit_failed",
              {{"id", id_.cStr()}, {"error", e->getDescription().cStr()}});
    return port_.timer().afterDelay(1 * kj::SECONDS).then([this]() { return watchCpuCredit(); });
  }
  int64_t now = monotonicNowNs();
  bool wasAtSustained = credit.atSustained();
  accountCpuCredit(credit, used, now);
  cpuCreditUsedNs_ = kj::max(used, cpuCreditUsedNs_);
  cpuCreditCheckedMonoNs_ = now;
  if (credit.atSustained() != wasAtSustained) {
    KJ_IF_MAYBE (e,
                 kj::runCatchingExceptions([&]() { cgroup_->setCpuQuota(credit.quotaMillis()); })) {
      log::warn("sandbox.cpu_quota_failed",
                {{"id", id_.cStr()}, {"error", e->getDescription().cStr()}});
    }
    log::info(credit.atSustained() ? "sandbox.cpu_sustained" : "sandbox.cpu_burst",
              {{"id", id_.cStr()},
               {"quotaMillis", uint64_t(credit.quotaMillis())},
               {"creditNs", credit.creditNs()}});
  }
  return port_.timer().afterDelay(credit.nextCheckNs() * kj::NANOSECONDS).then([this]() {
    return watchCpuCredit();
  });
}

uint64_t SandboxRuntime::cpuUsedNs() {
  if (cpuMeter_ != nullptr && cpuCgroupId_ != 0) return meteredCpuNs();
  isolator::CgroupStats stats = cgroup_->stats();
  return stats.cpuUserNs + stats.cpuSystemNs;
}

void SandboxRuntime::kill(kj::StringPtr reason) {
  if (ended_ || pendingReason_.size() > 0) return;
  pendingReason_ = kj::str(reason);
  // cgroup.kill dooms every task at once: when the write returns none of them
  // runs tenant code again, so the sandbox has ended and the kill is answered
  // now. The kernel's teardown (exits, the pid namespace, address spaces:
  // about a millisecond here) goes on meanwhile; watchInit() releases what
  // the sandbox held once init is gone.
  bool doomed = false;
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                 doomed = cgroup_->killAtOnce();
                 // A claim that failed half way left tasks in the pool's cgroup.
                 KJ_IF_MAYBE (leftover, leftoverCgroup_) {
                   doomed = (*leftover)->killAtOnce() && doomed;
                 }
               })) {
    log::warn("sandbox.kill_failed", {{"id", id_.cStr()}, {"error", e->getDescription().cStr()}});
  }
  // SIGKILL to PID 1 of a pid namespace kills every process in it too, as
  // init exits: the way without cgroup.kill, and a backstop for any task
  // outside the cgroup. (Without cgroup.kill the end is recorded then, by
  // watchInit().)
  if (syscall(SYS_pidfd_send_signal, initPidfd_.get(), SIGKILL, nullptr, 0) < 0 && errno != ESRCH &&
      !doomed) {
    log::warn("sandbox.kill_failed", {{"id", id_.cStr()}, {"errno", errno}});
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { cgroup_->killAll(); })) {
      log::error("sandbox.kill_failed",
                 {{"id", id_.cStr()}, {"error", e->getDescription().cStr()}});
    }
  }
  if (paused()) {
    // Frozen tasks (v1) only die of SIGKILL once thawed. Kill every one of
    // them while still frozen, then thaw: nothing runs tenant code again.
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                   if (!doomed) cgroup_->killAll();
                   cgroup_->thaw();
                 })) {
      log::error("sandbox.kill_failed",
                 {{"id", id_.cStr()}, {"error", e->getDescription().cStr()}});
    }
  }
  captureFinalStats();
  channel_.stopSending();
  if (doomed) finish();
}

void SandboxRuntime::holdMountNamespace() {
  int fd = open(kj::str("/proc/", record().getInitPid(), "/ns/mnt").cStr(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;  // init is gone already: nothing to hold
  kj::AutoCloseFd ns(fd);
  // Init still alive after the open: the pid was its, not a reused one.
  if (syscall(SYS_pidfd_send_signal, initPidfd_.get(), 0, nullptr, 0) == 0)
    mountNamespace_ = kj::mv(ns);
}

void SandboxRuntime::captureFinalStats() {
  // Usage as of the end; the cgroup goes away with the sandbox.
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { finalStats_ = cgroup_->stats(); })) {
    log::warn("sandbox.stats_failed", {{"id", id_.cStr()}, {"error", e->getDescription().cStr()}});
  }
}

void SandboxRuntime::trackCpu() {
  KJ_IF_MAYBE (meter, cpuMeter_) {
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                   struct stat st;
                   KJ_SYSCALL(fstat(cgroup_->v2Fd(), &st));
                   cpuCgroupId_ = uint64_t(st.st_ino);
                   meter->track(cpuCgroupId_);  // an adopted sandbox's count carries on
                   cpuTracked_ = true;
                 })) {
      log::warn("sandbox.cpu_meter_failed",
                {{"id", id_.cStr()}, {"error", e->getDescription().cStr()}});
      cpuCgroupId_ = 0;
    }
  }
}

void SandboxRuntime::untrackCpu() {
  KJ_IF_MAYBE (meter, cpuMeter_) {
    if (!cpuTracked_) return;
    kj::runCatchingExceptions([&]() { meter->untrack(cpuCgroupId_); });
    cpuTracked_ = false;  // the id stays: the figure is still the meter's
  }
}

uint64_t SandboxRuntime::meteredCpuNs() {
  if (ended_) return meteredCpuNs_;  // read at the end (it counts the slice under way)
  KJ_IF_MAYBE (meter, cpuMeter_) {
    if (cpuTracked_) {
      KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                     meteredCpuNs_ =
                         kj::max(meteredCpuNs_, meter->read(cpuCgroupId_, cgroup_->v2Path()));
                   })) {
        log::warn("sandbox.cpu_meter_failed",
                  {{"id", id_.cStr()}, {"error", e->getDescription().cStr()}});
      }
    }
  }
  return meteredCpuNs_;
}

void SandboxRuntime::recordNetwork(api::NetworkSettings::Reader settings, uint32_t netIndex) {
  auto rec = record_->getRoot<state::SandboxRecord>();
  auto spec = rec.getSpec();
  spec.setNetwork(settings.getMode());
  spec.setAllow(settings.getAllow());
  spec.setEgressMbps(settings.getEgressMbps());
  spec.setEgressByteCap(settings.getEgressByteCap());
  rec.setNetIndex(netIndex);
}

uint64_t SandboxRuntime::cgroupId() const {
  struct stat st;
  KJ_SYSCALL(fstat(cgroup_->v2Fd(), &st), "the sandbox's v2 cgroup");
  return uint64_t(st.st_ino);
}

void SandboxRuntime::setTimeout(uint32_t seconds) {
  requireRunning();
  record_->getRoot<state::SandboxRecord>().setExpiresAtNs(unixNowNs() +
                                                          int64_t(seconds) * 1000000000);
  armTimeout();
}

void SandboxRuntime::armTimeout() {
  int64_t expires = record().getExpiresAtNs();
  if (expires <= 0) {
    timeoutTask_ = nullptr;
    return;
  }
  int64_t delayNs = kj::max(expires - unixNowNs(), int64_t(0));
  timeoutTask_ = port_.timer()
                     .afterDelay(delayNs * kj::NANOSECONDS)
                     .then([this]() {
                       log::info("sandbox.timeout", {{"id", id_.cStr()}});
                       hooks_.expired(*this);
                     })
                     .eagerlyEvaluate([this](kj::Exception&& e) {
                       log::error("sandbox.timeout_failed",
                                  {{"id", id_.cStr()}, {"error", e.getDescription().cStr()}});
                     });
}

kj::Promise<void> SandboxRuntime::watchInit() {
  return port_.pollIn(initPidfd_).then([this](short) {
    finish();  // unless a kill recorded the end already
    // Reap the init if it is our child (an adopted one is not).
    siginfo_t info{};
    waitid(idtype_t(P_PIDFD), initPidfd_.get(), &info, WEXITED | WNOHANG);
    // What the sandbox held (mounts, cgroups, host paths) goes in a later
    // turn, after the answers finish() released are on their way: that
    // teardown takes the kernel a millisecond or more. The owner keeps the
    // runtime until it is released; an owner that goes first (the agent
    // stopping) cancels the rest, which the next agent's sweep finishes.
    processWatches_.add(port_.timer()
                            .afterDelay(0 * kj::NANOSECONDS)
                            .then([this]() { return releaseResources(); })
                            .then([this]() {
                              released_ = true;
                              hooks_.released(*this);
                              releasedFulfiller_->fulfill();
                            }));
  });
}

void SandboxRuntime::finish() {
  // Either init has exited (the kernel killed every other process of its pid
  // namespace before that) or a kill doomed every task: no tenant code runs
  // any more. Record the end and answer whoever waits for it.
  if (ended_) return;
  if (pendingReason_.size() == 0) {
    pendingReason_ = kj::str("init-exited");
    captureFinalStats();
  }
  meteredCpuNs();  // no tenant code runs: this reading is final
  egressBytes();   // the last reading; the source is not asked again
  endedMonoNs_ = monotonicNowNs();
  sampleMemory();  // the integral runs to the end
  ended_ = true;
  // A timeout or CPU cap that killed runs inside its own task: both go in a
  // later turn, not from under it.
  processWatches_.add(
      port_.timer()
          .afterDelay(0 * kj::NANOSECONDS)
          .attach(kj::mv(timeoutTask_), kj::mv(cpuCapTask_), kj::mv(cpuCreditTask_)));
  auto rec = record_->getRoot<state::SandboxRecord>();
  rec.setState(api::SandboxState::STOPPED);
  rec.setEndedAtNs(unixNowNs());
  rec.setEndReason(pendingReason_);
  log::info("sandbox.ended", {{"id", id_.cStr()}, {"reason", pendingReason_.cStr()}});
  hooks_.ended(*this);
  endedFulfiller_->fulfill();
}

kj::Promise<void> SandboxRuntime::releaseResources() {
  untrackCpu();
  mountNamespace_ = nullptr;
  fs_.close();  // the last reference to the sandbox's mounts: its tmpfs goes now
  rmdir(workDir_.cStr());
  if (controlSocketPath_.size() > 0) unlink(controlSocketPath_.cStr());
  int64_t deadline = monotonicNowNs() + kCgroupRemoveDeadlineNs;
  return removeCgroup(*cgroup_, kCgroupFirstPoll, deadline).then([this]() {
    releaseLeftoverCgroup();
  });
}

kj::Promise<void> SandboxRuntime::removeCgroup(isolator::SandboxCgroup& cgroup, kj::Duration delay,
                                               int64_t deadlineMonoNs) {
  // The last tasks may still be leaving the cgroup; poll without blocking the
  // loop, and only after the deadline kill stragglers the slow way.
  KJ_IF_MAYBE (e,
               kj::runCatchingExceptions([&]() { cgroup.remove(std::chrono::milliseconds(0)); })) {
    if (monotonicNowNs() < deadlineMonoNs) {
      return port_.timer().afterDelay(delay).then([this, &cgroup, delay, deadlineMonoNs]() {
        return removeCgroup(cgroup, kj::min(delay * 2, kCgroupMaxPoll), deadlineMonoNs);
      });
    }
    KJ_IF_MAYBE (e2, kj::runCatchingExceptions([&]() {
                   cgroup.killAll();
                   cgroup.remove();
                 })) {
      log::warn("sandbox.cgroup_cleanup_failed",
                {{"id", id_.cStr()}, {"error", e2->getDescription().cStr()}});
    }
  }
  return kj::READY_NOW;
}

void SandboxRuntime::releaseLeftoverCgroup() {
  KJ_IF_MAYBE (leftover, leftoverCgroup_) {
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                   (*leftover)->killAll();
                   (*leftover)->remove();
                 })) {
      log::warn("sandbox.cgroup_cleanup_failed",
                {{"id", id_.cStr()}, {"error", e->getDescription().cStr()}});
    }
    leftoverCgroup_ = nullptr;
  }
}

void SandboxRuntime::fillUsage(api::Usage::Builder usage) {
  isolator::CgroupStats stats =
      ended_ || pendingReason_.size() > 0 ? finalStats_ : cgroup_->stats();
  usage.setCpuUserNs(stats.cpuUserNs);
  usage.setCpuSystemNs(stats.cpuSystemNs);
  usage.setMemoryCurrentBytes(ended_ ? 0 : stats.memoryCurrentBytes);
  usage.setMemoryPeakBytes(stats.memoryPeakBytes);
  usage.setPidsCurrent(ended_ ? 0 : uint32_t(stats.pidsCurrent));
  uint64_t running, paused;
  wallNs(&running, &paused);
  usage.setWallRunningNs(running);
  usage.setWallPausedNs(paused);
  usage.setRpcRequests(rpcRequests_);
  usage.setEgressBytes(egressBytes());
  usage.setCpuMeteredNs(meteredCpuNs());  // latched once the sandbox has ended
  usage.setExecs(execs_);
  auto spec = record().getSpec();
  usage.setCpuQuotaMillis(spec.getCpuMillis());
  KJ_IF_MAYBE (credit, cpuCredit_) {
    usage.setCpuQuotaMillis(credit->quotaMillis());
    // The balance now, from the last check's: the quota changes only at a check.
    CpuCredit now = *credit;
    if (!ended_ && pendingReason_.size() == 0) accountCpuCredit(now, cpuUsedNs(), monotonicNowNs());
    usage.setCpuCreditNs(now.creditNs());
  }
}

}  // namespace nodeagent
