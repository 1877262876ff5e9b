// Privileged: the cgroup code on this host's real hierarchies (hybrid here, or pure v2),
// with plain forked processes.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <kj/exception.h>

#include <fstream>
#include <sstream>

#include "isolator/cgroup.h"
#include "isolator/cgroup_dynmods.h"
#include "isolator/mountinfo.h"
#include "support/privileged.h"

namespace nodeagent::isolator {
namespace {

constexpr const char kRoot[] = "nodeagent-isotest";

std::string tenant() {
  return "c" + std::to_string(getpid());
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

bool exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

pid_t forkSleeper() {
  pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sleep", "sleep", "1000", nullptr);
    _exit(127);
  }
  return pid;
}

class CgroupRootCleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    if (geteuid() == 0) CgroupTree::open(kRoot)->removeIfEmpty();
  }
};
[[maybe_unused]] ::testing::Environment* const cgroupRootCleanup =
    ::testing::AddGlobalTestEnvironment(new CgroupRootCleanup);

TEST(Cgroup, CreateLimitStatsKillRemove) {
  NODEAGENT_REQUIRE_ROOT();
  auto tree = CgroupTree::open(kRoot);
  CgroupLimits limits;
  limits.memoryBytes = 128ull << 20;
  limits.pidsMax = 32;
  limits.cpuMillis = 250;
  limits.cpuBurstMicros = 5000;
  limits.cpuWeight = 50;
  auto cgroup = SandboxCgroup::create(*tree, tenant(), "s1", limits);
  std::vector<std::string> leaves;
  for (const CgroupHierarchy& h : tree->hierarchies()) {
    leaves.push_back(tree->sandboxPath(h, tenant(), "s1"));
    EXPECT_TRUE(exists(leaves.back())) << leaves.back();
  }
  EXPECT_TRUE(exists(tree->layout().v2 + "/" + kRoot + "/sandboxes/" + tenant() + "/s1"));

  // A second create of the same sandbox is refused; adopt finds it.
  EXPECT_THROW(SandboxCgroup::create(*tree, tenant(), "s1", limits), kj::Exception);
  auto adopted = SandboxCgroup::adopt(*tree, tenant(), "s1");
  bool listed = false;
  for (auto& [t, s] : tree->listSandboxes()) listed |= t == tenant() && s == "s1";
  EXPECT_TRUE(listed);

  pid_t a = forkSleeper(), b = forkSleeper();
  cgroup->addProcess(a);
  adopted->addProcess(b);
  for (const std::string& leaf : leaves) {
    std::string procs = slurp(leaf + "/cgroup.procs");
    EXPECT_NE(procs.find(std::to_string(a)), std::string::npos) << leaf;
    EXPECT_NE(procs.find(std::to_string(b)), std::string::npos) << leaf;
  }
  EXPECT_EQ(cgroup->pids().size(), 2u);
  EXPECT_TRUE(cgroup->populated());
  CgroupStats s = cgroup->stats();
  EXPECT_EQ(s.pidsCurrent, 2u);
  // (Memory: v1 does not move existing charges with a task, so it may read 0 here.)

  // Raising and lowering limits on a live cgroup (v1 memsw ordering).
  limits.memoryBytes = 512ull << 20;
  cgroup->setLimits(limits);
  limits.memoryBytes = 64ull << 20;
  cgroup->setLimits(limits);
  limits.memoryBytes = 0;
  cgroup->setLimits(limits);

  // Removing a populated cgroup fails after the timeout and leaves it intact.
  EXPECT_THROW(adopted->remove(std::chrono::milliseconds(50)), kj::Exception);
  EXPECT_TRUE(exists(leaves.front()));

  cgroup->killAll();
  int status;
  ASSERT_EQ(waitpid(a, &status, 0), a);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  ASSERT_EQ(waitpid(b, &status, 0), b);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

  cgroup->remove();
  for (const std::string& leaf : leaves) EXPECT_FALSE(exists(leaf)) << leaf;
  // The tenant dir went with its last sandbox.
  for (const CgroupHierarchy& h : tree->hierarchies()) {
    EXPECT_FALSE(exists(tree->tenantPath(h, tenant()))) << h.mount;
  }
  EXPECT_THROW(cgroup->pids(), kj::Exception);
}

// The CPU files of a sandbox's cgroup: "quota period burst" on both layouts.
std::string cpuSettings(CgroupTree& tree, const std::string& sandbox) {
  auto trim = [](std::string v) {
    while (!v.empty() && (v.back() == '\n' || v.back() == ' ')) v.pop_back();
    return v;
  };
  for (const CgroupHierarchy& h : tree.hierarchies()) {
    if (!h.cpu) continue;
    std::string leaf = tree.sandboxPath(h, tenant(), sandbox);
    if (h.v2) {
      return trim(slurp(leaf + "/cpu.max")) + " " + trim(slurp(leaf + "/cpu.max.burst"));
    }
    return trim(slurp(leaf + "/cpu.cfs_quota_us")) + " " +
           trim(slurp(leaf + "/cpu.cfs_period_us")) + " " + trim(slurp(leaf + "/cpu.cfs_burst_us"));
  }
  return "";
}

TEST(Cgroup, CpuLimitsOnANewCgroupAndAfterChanges) {
  NODEAGENT_REQUIRE_ROOT();
  auto tree = CgroupTree::open(kRoot);
  bool v2 = tree->mode() == CgroupMode::kV2;
  CgroupLimits limits;
  limits.cpuMillis = 500;
  limits.cpuPeriodMicros = 50000;
  limits.cpuBurstMicros = 7000;
  auto cgroup = SandboxCgroup::create(*tree, tenant(), "cpu1", limits);
  EXPECT_EQ(cpuSettings(*tree, "cpu1"), "25000 50000 7000");
  // No quota: the defaults, whatever was set before.
  limits.cpuMillis = 0;
  limits.cpuBurstMicros = 0;
  limits.cpuPeriodMicros = 100000;
  cgroup->setLimits(limits);
  EXPECT_EQ(cpuSettings(*tree, "cpu1"), v2 ? "max 100000 0" : "-1 100000 0");
  // A new cgroup with the default period and no burst.
  limits.cpuMillis = 250;
  auto other = SandboxCgroup::create(*tree, tenant(), "cpu2", limits);
  EXPECT_EQ(cpuSettings(*tree, "cpu2"), "25000 100000 0");
  auto none = SandboxCgroup::create(*tree, tenant(), "cpu3", CgroupLimits());
  EXPECT_EQ(cpuSettings(*tree, "cpu3"), v2 ? "max 100000 0" : "-1 100000 0");
  cgroup->remove();
  other->remove();
  none->remove();
}

TEST(Cgroup, TenantDirStaysWhileOtherSandboxesExist) {
  NODEAGENT_REQUIRE_ROOT();
  auto tree = CgroupTree::open(kRoot);
  auto one = SandboxCgroup::create(*tree, tenant(), "one", CgroupLimits());
  auto two = SandboxCgroup::create(*tree, tenant(), "two", CgroupLimits());
  one->remove();
  for (const CgroupHierarchy& h : tree->hierarchies()) {
    EXPECT_TRUE(exists(tree->tenantPath(h, tenant()))) << h.mount;
  }
  tree->setTenantWeight(tenant(), 200);
  two->remove();
  for (const CgroupHierarchy& h : tree->hierarchies()) {
    EXPECT_FALSE(exists(tree->tenantPath(h, tenant()))) << h.mount;
  }
  // The tree remembers having made the tenant's dirs; their removal since is
  // noticed and they are made again (with the controllers, on v2).
  EXPECT_TRUE(tree->tenantEnsured(tenant()));
  CgroupLimits limits;
  limits.memoryBytes = 64ull << 20;
  limits.pidsMax = 32;
  auto three = SandboxCgroup::create(*tree, tenant(), "three", limits);
  for (const CgroupHierarchy& h : tree->hierarchies()) {
    EXPECT_TRUE(exists(tree->sandboxPath(h, tenant(), "three"))) << h.mount;
  }
  three->remove();
}

TEST(Cgroup, AKeptEmptyTenantStaysUntilRemovedAndIsMadeAgain) {
  NODEAGENT_REQUIRE_ROOT();
  auto tree = CgroupTree::open(kRoot);
  tree->keepEmptyTenants(true);
  auto one = SandboxCgroup::create(*tree, tenant(), "one", CgroupLimits());
  EXPECT_FALSE(tree->removeTenantIfEmpty(tenant()));  // "one" is in it
  for (const CgroupHierarchy& h : tree->hierarchies()) {
    EXPECT_TRUE(exists(tree->sandboxPath(h, tenant(), "one"))) << h.mount;
  }
  one->remove();
  for (const CgroupHierarchy& h : tree->hierarchies()) {
    EXPECT_TRUE(exists(tree->tenantPath(h, tenant()))) << h.mount;
  }
  EXPECT_TRUE(tree->removeTenantIfEmpty(tenant()));
  for (const CgroupHierarchy& h : tree->hierarchies()) {
    EXPECT_FALSE(exists(tree->tenantPath(h, tenant()))) << h.mount;
  }
  EXPECT_FALSE(tree->tenantEnsured(tenant()));
  // A weight, then a sandbox, make them again.
  tree->setTenantWeight(tenant(), 300);
  auto two = SandboxCgroup::create(*tree, tenant(), "two", CgroupLimits());
  for (const CgroupHierarchy& h : tree->hierarchies()) {
    EXPECT_TRUE(exists(tree->sandboxPath(h, tenant(), "two"))) << h.mount;
  }
  two->remove();
  tree->removeEmptyTenants();
  for (const CgroupHierarchy& h : tree->hierarchies()) {
    EXPECT_FALSE(exists(tree->tenantPath(h, tenant()))) << h.mount;
  }
}

// What an agent that stopped half way through a teardown leaves: some leaves
// gone, the rest empty. The next agent's sweep removes the rest; a whole
// cgroup (which may hold tasks) is left to adopt, kill and remove.
TEST(Cgroup, RemainsOfAHalfRemovedSandboxGoAndAWholeOneIsLeftAlone) {
  NODEAGENT_REQUIRE_ROOT();
  auto tree = CgroupTree::open(kRoot);
  auto whole = SandboxCgroup::create(*tree, tenant(), "whole", CgroupLimits());
  EXPECT_FALSE(tree->removeSandboxRemains(tenant(), "whole"));
  for (const CgroupHierarchy& h : tree->hierarchies()) {
    EXPECT_TRUE(exists(tree->sandboxPath(h, tenant(), "whole"))) << h.mount;
  }
  whole->remove();
  if (tree->hierarchies().size() < 2) return;  // pure v2: one leaf, never half removed

  auto half = SandboxCgroup::create(*tree, tenant(), "half", CgroupLimits());
  const CgroupHierarchy& v1 = tree->hierarchies().back();
  ASSERT_FALSE(v1.v2);
  ASSERT_EQ(rmdir(tree->sandboxPath(v1, tenant(), "half").c_str()), 0);
  // A remaining leaf that cannot go (a child cgroup in it): a clear error.
  std::string v2Leaf = tree->sandboxPath(tree->hierarchies().front(), tenant(), "half");
  ASSERT_EQ(mkdir((v2Leaf + "/child").c_str(), 0755), 0);
  EXPECT_THROW(tree->removeSandboxRemains(tenant(), "half"), kj::Exception);
  EXPECT_TRUE(exists(v2Leaf));
  ASSERT_EQ(rmdir((v2Leaf + "/child").c_str()), 0);
  EXPECT_TRUE(tree->removeSandboxRemains(tenant(), "half"));
  for (const CgroupHierarchy& h : tree->hierarchies()) {
    EXPECT_FALSE(exists(tree->sandboxPath(h, tenant(), "half"))) << h.mount;
  }
  EXPECT_THROW(tree->removeSandboxRemains(tenant(), "../escape"), kj::Exception);
}

TEST(Cgroup, InvalidNamesNeverTouchTheFilesystem) {
  NODEAGENT_REQUIRE_ROOT();
  auto tree = CgroupTree::open(kRoot);
  EXPECT_THROW(SandboxCgroup::create(*tree, "../../escape", "x", CgroupLimits()), kj::Exception);
  EXPECT_THROW(SandboxCgroup::create(*tree, tenant(), "..", CgroupLimits()), kj::Exception);
  EXPECT_FALSE(exists(tree->layout().v2 + "/escape"));
}

// Gives the cgroup2 mount exactly `options` (comma-separated, without rw/ro).
void reconfigureCgroup2(const std::string& mount, const std::string& options) {
  int fd = fspick(AT_FDCWD, mount.c_str(), FSPICK_CLOEXEC);
  ASSERT_GE(fd, 0) << strerror(errno);
  kj::AutoCloseFd fs(fd);
  std::stringstream in(options);
  std::string option;
  while (std::getline(in, option, ',')) {
    if (option.empty() || option == "rw" || option == "ro") continue;
    ASSERT_EQ(fsconfig(fs, FSCONFIG_SET_FLAG, option.c_str(), nullptr, 0), 0)
        << option << ": " << strerror(errno);
  }
  ASSERT_EQ(fsconfig(fs, FSCONFIG_CMD_RECONFIGURE, nullptr, nullptr, 0), 0) << strerror(errno);
}

TEST(CgroupDynmods, TurnsTheOptionOnAndKeepsTheMountsOtherOptions) {
  NODEAGENT_REQUIRE_ROOT();
  std::string mount = detectCgroupLayout().v2;
  std::string original = cgroup2SuperOptions(mount);
  struct Restore {
    std::string mount, options;
    ~Restore() { reconfigureCgroup2(mount, options); }
  } restore{mount, original};

  // The host's options stay (the host runs other things meanwhile), favordynmods
  // goes, and nsdelegate joins if absent: it stands for any option the host set,
  // which a reconfigure naming only favordynmods would drop.
  std::string without = "nsdelegate";
  std::stringstream in(original);
  std::string option;
  while (std::getline(in, option, ',')) {
    if (option != "favordynmods" && option != "nsdelegate") without += "," + option;
  }
  reconfigureCgroup2(mount, without);
  ASSERT_FALSE(hasMountOption(cgroup2SuperOptions(mount), "favordynmods"));

  DynmodsResult first = favorDynamicModifications(mount);
  EXPECT_EQ(first.outcome, DynmodsOutcome::kTurnedOn) << first.why;
  std::string now = cgroup2SuperOptions(mount);
  EXPECT_TRUE(hasMountOption(now, "favordynmods")) << now;
  EXPECT_TRUE(hasMountOption(now, "nsdelegate")) << now;
  EXPECT_EQ(first.superOptions, now);

  DynmodsResult second = favorDynamicModifications(mount);
  EXPECT_EQ(second.outcome, DynmodsOutcome::kAlreadyOn);
  EXPECT_EQ(cgroup2SuperOptions(mount), now);
}

TEST(CgroupDynmods, OnlyCgroup2MountsAreTouched) {
  NODEAGENT_REQUIRE_ROOT();
  EXPECT_THROW(favorDynamicModifications("/proc"), kj::Exception);
  EXPECT_THROW(favorDynamicModifications("/nonexistent-mount"), kj::Exception);
}

}  // namespace
}  // namespace nodeagent::isolator
