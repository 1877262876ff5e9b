// Re-adoption: an agent that restarted (after a crash, kill -9 or upgrade)
// takes over the sandboxes the previous one left running.
#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

#include <kj/debug.h>

#include "isolator/launcher.h"
#include "nodeagent/audit_entry.h"
#include "nodeagent/supervisor.h"
#include "util/clock.h"
#include "util/log.h"

namespace nodeagent {

kj::String Supervisor::controlSocketPathOf(kj::StringPtr id) {
  // Below a 0700 directory: only the agent's user reaches init's socket.
  return kj::str(config_.getStateDir(), "/control/", id, ".sock");
}

void Supervisor::adoptLeftovers() {
  size_t adopted = 0, ended = 0;
  for (auto& message : store_.listSandboxes()) {
    auto rec = message->get();
    if (rec.getState() == api::SandboxState::STOPPED) continue;
    if (isPoolRecord(rec)) {
      // Nobody waits for an idle pool sandbox; a fresh one is as good.
      endLeftover(rec, "agent-restarted");
      ++ended;
      continue;
    }
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { adopt(rec); })) {
      log::warn("sandbox.adopt_failed",
                {{"id", rec.getId().cStr()}, {"error", e->getDescription().cStr()}});
      endLeftover(rec, "lost-on-restart");
      ++ended;
    } else {
      ++adopted;
    }
  }
  if (adopted + ended > 0) {
    log::info("agent.adopted", {{"adopted", int64_t(adopted)}, {"ended", int64_t(ended)}});
  }
}

void Supervisor::adopt(state::SandboxRecord::Reader rec) {
  kj::StringPtr id = rec.getId();
  auto& tree = *KJ_ASSERT_NONNULL(cgroupTree_);
  auto cgroup = isolator::SandboxCgroup::adopt(tree, rec.getSpec().getTenant(), id);

  // The init must still be the one in the sandbox's cgroup: a pid alone could
  // have been reused by now.
  pid_t initPid = rec.getInitPid();
  int fd = int(syscall(SYS_pidfd_open, initPid, 0));
  if (fd < 0) KJ_FAIL_SYSCALL("pidfd_open(init)", errno, initPid);
  kj::AutoCloseFd initPidfd(fd);
  auto members = cgroup->pids();
  KJ_REQUIRE(std::find(members.begin(), members.end(), initPid) != members.end(),
             "the sandbox's init is no longer in its cgroup", initPid);

  kj::String controlSocketPath = controlSocketPathOf(id);
  kj::AutoCloseFd control = isolator::reconnectInit(controlSocketPath.cStr());
  fd = open(kj::str("/proc/", initPid, "/root").cStr(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) KJ_FAIL_SYSCALL("open sandbox root", errno, initPid);
  kj::AutoCloseFd rootDir(fd);

  uint32_t range = config_.getUidRangeSize();
  KJ_REQUIRE(rec.getUidBase() >= config_.getUidBase() &&
                 (rec.getUidBase() - config_.getUidBase()) % range == 0,
             "the sandbox's uid range does not fit this agent's configuration", rec.getUidBase());
  uint32_t slot = (rec.getUidBase() - config_.getUidBase()) / range;
  KJ_REQUIRE(uidSlots_.count(slot) == 0, "two sandboxes share a uid range", slot);

  SandboxRuntime::Parts parts;
  parts.record = kj::heap<capnp::MallocMessageBuilder>();
  parts.record->setRoot(rec);
  // A record from before burst credit (0 there means the template's).
  auto adoptedSpec = parts.record->getRoot<state::SandboxRecord>().getSpec();
  if (adoptedSpec.getCpuBurstSeconds() == 0) {
    for (auto& t : templates_) {
      if (t.name == adoptedSpec.getTemplate()) adoptedSpec.setCpuBurstSeconds(t.cpuBurstSeconds);
    }
  }
  parts.cgroup = kj::mv(cgroup);
  parts.initPid = initPid;
  parts.initPidfd = kj::mv(initPidfd);
  parts.control = kj::mv(control);
  parts.rootDir = kj::mv(rootDir);
  parts.workDir = kj::str(config_.getStateDir(), "/sandboxes/", id);
  parts.controlSocketPath = kj::mv(controlSocketPath);
  parts.adopted = true;
  auto runtime = startRuntime(kj::mv(parts), slot);
  KJ_IF_MAYBE (network, network_) {
    NetworkService::SandboxRef ref{runtime->id(), rec.getSpec().getTenant(), runtime->cgroupId(),
                                   initPid};
    auto settings = NetworkService::settingsOf(rec.getSpec());
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                   (*network)->adopt(ref, settings->getRoot<api::NetworkSettings>(),
                                     rec.getNetIndex());
                 })) {
      // Its policy is still in the pinned maps and enforced; only the
      // agent's view (DNS, status) is missing.
      log::error("sandbox.network_adopt_failed",
                 {{"id", id.cStr()}, {"error", e->getDescription().cStr()}});
    }
  }
  KJ_IF_MAYBE (billed, store_.getBilled(id)) {
    runtime->resumeCounters((*billed)->get());
  }
  audit("agent", "adopt", id, rec.getSpec().getTenant(), "");
  log::info("sandbox.adopted", {{"id", id.cStr()}, {"tenant", rec.getSpec().getTenant().cStr()}});
}

void Supervisor::endLeftover(state::SandboxRecord::Reader rec, kj::StringPtr reason) {
  KJ_IF_MAYBE (tree, cgroupTree_) {
    try {
      auto cgroup = isolator::SandboxCgroup::adopt(**tree, rec.getSpec().getTenant(), rec.getId());
      // The init was the old agent's child; its parent is gone, so the
      // kernel's reaper (or a subreaper) collects it.
      cgroup->killAll();
      cgroup->thaw();  // frozen tasks (v1) die of SIGKILL only once thawed
      cgroup->remove();
    } catch (kj::Exception& e) {
      log::warn("sandbox.stale_cleanup",
                {{"id", rec.getId().cStr()}, {"error", e.getDescription().cStr()}});
    }
  }
  rmdir(kj::str(config_.getStateDir(), "/sandboxes/", rec.getId()).cStr());
  unlink(controlSocketPathOf(rec.getId()).cStr());
  capnp::MallocMessageBuilder copy;
  copy.setRoot(rec);
  auto updated = copy.getRoot<state::SandboxRecord>();
  updated.setState(api::SandboxState::STOPPED);
  updated.setEndedAtNs(unixNowNs());
  updated.setEndReason(reason);
  persist(updated.asReader(), auditEntry(updated.getEndedAtNs(), "agent", "end", rec.getId(),
                                         rec.getSpec().getTenant(), kj::str("reason=", reason)));
  if (!isPoolRecord(rec)) ledger_->recordUnseenEnd(updated.asReader());
  log::warn("sandbox.ended_on_start", {{"id", rec.getId().cStr()}, {"reason", reason.cStr()}});
}

}  // namespace nodeagent
