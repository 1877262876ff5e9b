// The agent's cgroups: one tree "<root>/sandboxes/<tenant>/<sandbox>" below every
// hierarchy the agent uses. Works on pure cgroup v2 hosts and on hybrid hosts (v1
// controllers plus a controller-less cgroup2 at /sys/fs/cgroup/unified), detected at
// runtime. On hybrid hosts the v2 leaf still exists: it is where BPF attaches and it
// gives cgroup.kill.
//
// Everything here is synchronous and blocking (small sysfs reads and writes).
#pragma once

#include <sys/types.h>

#include <kj/io.h>
#include <kj/memory.h>
#include <kj/string.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace nodeagent::isolator {

enum class CgroupMode { kV2, kHybrid };

// Where each hierarchy is mounted. Co-mounted v1 controllers (e.g. "cpu,cpuacct")
// share one path.
struct CgroupLayout {
  CgroupMode mode = CgroupMode::kV2;
  std::string v2;  // the cgroup2 mount; on hybrid hosts the controller-less one
  // v1 hierarchies (hybrid only).
  std::string memory, pids, cpu, cpuacct, freezer;
};

// Pure v2 when /sys/fs/cgroup is cgroup2; hybrid when it holds v1 controllers and a
// cgroup2 mount at /sys/fs/cgroup/unified. Throws on anything else (v1 only).
CgroupMode detectCgroupMode();

// detectCgroupMode() plus the mount points of the v1 controllers from /proc/self/mountinfo.
CgroupLayout detectCgroupLayout();

struct CgroupLimits {
  uint64_t memoryBytes = 0;  // 0 = no limit. Swap is always off.
  uint32_t pidsMax = 0;      // 0 = no limit
  uint32_t cpuMillis = 0;    // sustained CPU in thousandths of a CPU per period; 0 = no quota
  uint32_t cpuPeriodMicros = 100000;
  uint32_t cpuBurstMicros = 0;  // CPU time a sandbox may bank above its quota (needs a quota)
  uint32_t cpuWeight = 0;       // 1..10000 in cgroup v2 units (100 = default); 0 = leave alone
};

struct CgroupStats {
  uint64_t cpuUserNs = 0;
  uint64_t cpuSystemNs = 0;
  uint64_t memoryCurrentBytes = 0;
  uint64_t memoryPeakBytes = 0;  // 0 when the kernel does not report it
  uint64_t pidsCurrent = 0;
  uint64_t oomKills = 0;
};

// One hierarchy the agent uses: the v2 mount or one v1 mount.
struct CgroupHierarchy {
  std::string mount;
  bool v2 = false;
  bool memory = false, pids = false, cpu = false, cpuacct = false, freezer = false;
};

// The agent's root ("nodeagent" by default) below every hierarchy. Directories are
// created on demand; cgroups outside the root are never modified, except that on pure
// v2 missing controllers (+cpu +memory +pids) are enabled in cgroup.subtree_control of
// the root's ancestors, which v2 requires to use them at all.
class CgroupTree {
 public:
  explicit CgroupTree(CgroupLayout layout, std::string rootName = "nodeagent");
  // The host's layout, from detectCgroupLayout().
  static kj::Own<CgroupTree> open(std::string rootName = "nodeagent");

  CgroupMode mode() const { return layout_.mode; }
  const CgroupLayout& layout() const { return layout_; }
  const std::string& rootName() const { return rootName_; }
  // The v2 hierarchy first, then distinct v1 mounts (hybrid only).
  const std::vector<CgroupHierarchy>& hierarchies() const { return hierarchies_; }

  // "<mount>/<root>/sandboxes/<tenant>[/<sandbox>]" in one hierarchy.
  std::string tenantPath(const CgroupHierarchy& h, kj::StringPtr tenant) const;
  std::string sandboxPath(const CgroupHierarchy& h, kj::StringPtr tenant,
                          kj::StringPtr sandbox) const;

  // Creates "<root>/sandboxes/<tenant>" in every hierarchy (and on v2 enables the
  // controllers along the way).
  void ensureTenant(kj::StringPtr tenant);
  // Whether ensureTenant() succeeded for `tenant` in this process (its dirs may
  // have been removed since). Thread-safe, as ensureTenant() is.
  bool tenantEnsured(kj::StringPtr tenant) const;

  // Fair share between tenants: cpu.weight (v2) or cpu.shares (v1) on the tenant's dir.
  void setTenantWeight(kj::StringPtr tenant, uint32_t weight);

  // (tenant, sandbox) pairs present in the v2 tree, e.g. to re-adopt after a restart.
  std::vector<std::pair<std::string, std::string>> listSandboxes() const;

  // What is left of a sandbox cgroup whose removal stopped half way (an agent that
  // stopped or died in a teardown): when some leaves are gone, removes the rest and
  // returns true. A leaf goes only once no task is in it, and a task is in every
  // hierarchy at once, so none of the rest holds one. False, touching nothing, when
  // every leaf is there: that cgroup may hold tasks (adopt, kill and remove it).
  // Throws if a remaining leaf cannot be removed.
  bool removeSandboxRemains(kj::StringPtr tenant, kj::StringPtr sandboxId);

  // Removes "<root>/sandboxes" and "<root>" wherever they are empty (uninstall, tests).
  void removeIfEmpty();

  // By default SandboxCgroup::remove() takes the tenant's dirs along with its last
  // sandbox. With keepEmptyTenants(true) they stay, and the caller removes them when it
  // sees fit (removeTenantIfEmpty()): a tenant that just had a sandbox is likely to
  // create the next soon, and making its dirs again costs a mkdir per hierarchy (with
  // a dozen more calls to find the path) on that create.
  void keepEmptyTenants(bool keep) { keepEmptyTenants_ = keep; }
  bool keepsEmptyTenants() const { return keepEmptyTenants_; }
  // Removes the tenant's dirs if no sandbox is left in them; true if they are gone.
  // Thread-safe against create() on another thread, which makes them again if needed.
  bool removeTenantIfEmpty(kj::StringPtr tenant);
  // removeTenantIfEmpty() for every tenant dir there is, e.g. at start.
  void removeEmptyTenants();

 private:
  void enableV2Controllers(const CgroupHierarchy& h, const std::string& path);

  CgroupLayout layout_;
  std::string rootName_;
  std::vector<CgroupHierarchy> hierarchies_;
  std::mutex tenantDirsMutex_;  // ensureTenant() against removeTenantIfEmpty()
  mutable std::mutex ensuredMutex_;
  std::set<std::string> ensured_;  // tenants ensureTenant() has done
  std::atomic<bool> keepEmptyTenants_{false};
};

// How killAll() stops everything. kAuto: cgroup.kill on v2; on hybrid freeze the v1
// freezer, SIGKILL every member, then cgroup.kill on the unified leaf as a backstop.
enum class KillMethod { kAuto, kV1Freezer, kV2CgroupKill };

// Owns one sandbox's cgroup directories (one per hierarchy). Destroying this object
// closes directory fds only: sandboxes outlive the agent, so killing and removing are
// explicit calls.
class SandboxCgroup {
 public:
  // Creates the leaf in every hierarchy and applies `limits`. Throws if it already
  // exists (a leftover must be adopted and removed first) or on an invalid name.
  static kj::Own<SandboxCgroup> create(CgroupTree& tree, kj::StringPtr tenant,
                                       kj::StringPtr sandboxId, const CgroupLimits& limits);
  // Opens an existing sandbox cgroup (after an agent restart). Throws if any leaf is missing.
  static kj::Own<SandboxCgroup> adopt(CgroupTree& tree, kj::StringPtr tenant,
                                      kj::StringPtr sandboxId);

  struct Leaf {
    CgroupHierarchy hierarchy;
    std::string path;
    kj::AutoCloseFd dir;
  };
  SandboxCgroup(CgroupTree& tree, std::string tenant, std::string sandboxId,
                std::vector<Leaf> leaves);
  KJ_DISALLOW_COPY(SandboxCgroup);

  const std::string& tenant() const { return tenant_; }
  const std::string& sandboxId() const { return sandboxId_; }
  const std::string& v2Path() const { return leaves_.front().path; }
  // An O_DIRECTORY fd of the v2 leaf (for BPF attach).
  int v2Fd() const { return leaves_.front().dir.get(); }

  // Moves `pid` (a host pid) into the leaf of every hierarchy.
  void addProcess(pid_t pid);
  void setLimits(const CgroupLimits& limits);
  // The CPU quota alone (thousandths of a CPU per default period; 0 = none),
  // the other limits untouched: what changes as a sandbox's burst credit
  // comes and goes.
  void setCpuQuota(uint32_t cpuMillis);
  // Host pids in the sandbox (from the v2 leaf).
  std::vector<pid_t> pids() const;
  bool populated() const;
  // SIGKILLs every process; returns without waiting for them to exit.
  void killAll(KillMethod method = KillMethod::kAuto);
  // One write to the v2 leaf's cgroup.kill. When it returns true, every task in the
  // sandbox has a SIGKILL pending (a fork under way included), so none runs user code
  // again; they may still be exiting. False where the kernel has no cgroup.kill (<5.14).
  bool killAtOnce();
  CgroupStats stats() const;
  // The OOM killer's kill count in this cgroup (one file, cheap enough per exec).
  uint64_t oomKills() const;

  // Pause: freeze() asks the kernel to stop every task (v1 freezer.state on hybrid hosts,
  // cgroup.freeze on v2) and returns at once; freezing finishes asynchronously, and
  // frozen() says when it has (tasks in uninterruptible sleep can take a while). Calling
  // freeze() again nudges a freezer that has not finished. thaw() lets them run again.
  // On v1 a frozen task does not die of SIGKILL until thawed; killAll() handles that.
  void freeze();
  void thaw();
  bool frozen() const;
  // Waits up to `timeout` for the cgroup to empty, then removes the leaves and, unless
  // the tree keepsEmptyTenants(), the tenant dirs if now empty. Throws if processes
  // remain. The object is spent afterwards.
  void remove(std::chrono::milliseconds timeout = std::chrono::milliseconds(2000));

 private:
  // setLimits(); `fresh`: on leaves just made, skipping writes of the kernel's defaults.
  void applyLimits(const CgroupLimits& limits, bool fresh);
  const Leaf* findLeaf(bool CgroupHierarchy::*controller) const;
  // The v1 freezer leaf on hybrid hosts, null on v2 (which freezes through its leaf).
  const Leaf* v1Freezer() const;
  void killWithFreezer(const Leaf& freezer);

  CgroupTree& tree_;
  std::string tenant_;
  std::string sandboxId_;
  std::vector<Leaf> leaves_;  // v2 first
  bool removed_ = false;
};

}  // namespace nodeagent::isolator
