#include "nodeagent/sandbox_runtime.h"

#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <kj/debug.h>

#include "nodeagent/api_error.h"
#include "util/clock.h"
#include "util/log.h"

namespace nodeagent {

SandboxRuntime::SandboxRuntime(loop::UringEventPort& port, Parts parts, EndedCallback onEnded)
    : port_(port),
      record_(kj::mv(parts.record)),
      id_(kj::str(record_->getRoot<state::SandboxRecord>().getId())),
      cgroup_(kj::mv(parts.cgroup)),
      initPidfd_(kj::mv(parts.initPidfd)),
      channel_(port, kj::mv(parts.control)),
      fs_(kj::mv(parts.rootDir), record().getUidBase(), record().getUidBase()),
      workDir_(kj::mv(parts.workDir)),
      onEnded_(kj::mv(onEnded)),
      startedMonoNs_(monotonicNowNs()),
      endedFork_(nullptr) {
  auto paf = kj::newPromiseAndFulfiller<void>();
  endedFulfiller_ = kj::mv(paf.fulfiller);
  endedFork_ = paf.promise.fork();
  watchTask_ = watchInit().eagerlyEvaluate([this](kj::Exception&& e) {
    log::error("sandbox.watch_failed", {{"id", id_.cStr()}, {"error", e.getDescription().cStr()}});
  });
  armTimeout();
}

SandboxRuntime::~SandboxRuntime() noexcept(false) {}

void SandboxRuntime::requireRunning() {
  if (ended_ || pendingReason_.size() > 0) {
    throwApiError(api::ErrorCode::NOT_RUNNING, kj::str("sandbox ", id_, " has ended"));
  }
}

kj::Promise<kj::Own<ExecProcess>> SandboxRuntime::exec(api::ExecRequest::Reader request,
                                                       api::OutputSink::Client output) {
  requireRunning();
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
  kj::Maybe<kj::Duration> timeout;
  if (request.getTimeoutSeconds() > 0) timeout = request.getTimeoutSeconds() * kj::SECONDS;
  ++execs_;

  return channel_.spawn(spawn).then(
      [this, output = kj::mv(output), timeout](SpawnedProcess&& spawned) mutable {
        int pid = spawned.pid;
        return kj::refcounted<ExecProcess>(port_, kj::mv(spawned), kj::mv(output),
                                           channel_.exitStatus(pid), timeout);
      });
}

SandboxFs& SandboxRuntime::files() {
  requireRunning();
  return fs_;
}

void SandboxRuntime::kill(kj::StringPtr reason) {
  if (ended_ || pendingReason_.size() > 0) return;
  pendingReason_ = kj::str(reason);
  captureFinalStats();
  // SIGKILL to PID 1 of a pid namespace kills every process in it; finish()
  // runs when init has exited and sweeps the cgroup for anything left.
  if (syscall(SYS_pidfd_send_signal, initPidfd_.get(), SIGKILL, nullptr, 0) < 0 && errno != ESRCH) {
    log::warn("sandbox.kill_failed", {{"id", id_.cStr()}, {"errno", errno}});
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { cgroup_->killAll(); })) {
      log::error("sandbox.kill_failed",
                 {{"id", id_.cStr()}, {"error", e->getDescription().cStr()}});
    }
  }
}

void SandboxRuntime::captureFinalStats() {
  // Usage as of the end; the cgroup goes away with the sandbox.
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { finalStats_ = cgroup_->stats(); })) {
    log::warn("sandbox.stats_failed", {{"id", id_.cStr()}, {"error", e->getDescription().cStr()}});
  }
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
                       kill("timeout");
                     })
                     .eagerlyEvaluate(nullptr);
}

kj::Promise<void> SandboxRuntime::watchInit() {
  return port_.pollIn(initPidfd_).then([this](short) { finish(); });
}

void SandboxRuntime::finish() {
  // Reap the init (the agent launched it, so it is our child) and release
  // everything the sandbox held.
  siginfo_t info{};
  waitid(idtype_t(P_PIDFD), initPidfd_.get(), &info, WEXITED | WNOHANG);
  if (pendingReason_.size() == 0) {
    pendingReason_ = kj::str("init-exited");
    captureFinalStats();
  }
  try {
    // The namespace's processes are dying with init; give them a moment to
    // leave the cgroup, then kill whatever is still in it the slow way.
    KJ_IF_MAYBE (e, kj::runCatchingExceptions(
                        [&]() { cgroup_->remove(std::chrono::milliseconds(200)); })) {
      (void)e;
      cgroup_->killAll();
      cgroup_->remove();
    }
  } catch (kj::Exception& e) {
    log::warn("sandbox.cgroup_cleanup_failed",
              {{"id", id_.cStr()}, {"error", e.getDescription().cStr()}});
  }
  rmdir(workDir_.cStr());
  fs_.close();  // the root fd would keep the sandbox's tmpfs alive
  ended_ = true;
  endedMonoNs_ = monotonicNowNs();
  timeoutTask_ = nullptr;
  auto rec = record_->getRoot<state::SandboxRecord>();
  rec.setState(api::SandboxState::STOPPED);
  rec.setEndedAtNs(unixNowNs());
  rec.setEndReason(pendingReason_);
  log::info("sandbox.ended", {{"id", id_.cStr()}, {"reason", pendingReason_.cStr()}});
  onEnded_(*this);
  endedFulfiller_->fulfill();
}

void SandboxRuntime::fillUsage(api::Usage::Builder usage) {
  isolator::CgroupStats stats =
      ended_ || pendingReason_.size() > 0 ? finalStats_ : cgroup_->stats();
  usage.setCpuUserNs(stats.cpuUserNs);
  usage.setCpuSystemNs(stats.cpuSystemNs);
  usage.setMemoryCurrentBytes(ended_ ? 0 : stats.memoryCurrentBytes);
  usage.setMemoryPeakBytes(stats.memoryPeakBytes);
  usage.setPidsCurrent(ended_ ? 0 : uint32_t(stats.pidsCurrent));
  int64_t end = ended_ ? endedMonoNs_ : monotonicNowNs();
  usage.setWallRunningNs(uint64_t(end - startedMonoNs_));
  usage.setRpcRequests(rpcRequests_);
  usage.setExecs(execs_);
}

}  // namespace nodeagent
