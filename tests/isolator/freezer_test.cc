// Privileged: pausing a sandbox cgroup with the freezer, on this host's layout (the v1
// freezer on hybrid hosts) and, where the host is hybrid, on the unified cgroup2 tree
// as a pure v2 host would (cgroup.freeze needs no controller).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "isolator/cgroup.h"
#include "support/privileged.h"

namespace nodeagent::isolator {
namespace {

using std::chrono::milliseconds;

constexpr const char kRoot[] = "nodeagent-freezetest";
constexpr uint64_t kMs = 1000000;

std::string tenant() {
  return "f" + std::to_string(getpid());
}

pid_t forkBusy() {
  pid_t pid = fork();
  if (pid == 0) {
    for (;;) asm volatile("" ::: "memory");  // spins, and is not optimized away
  }
  return pid;
}

uint64_t cpuNs(const SandboxCgroup& cgroup) {
  CgroupStats s = cgroup.stats();
  return s.cpuUserNs + s.cpuSystemNs;
}

bool waitFrozen(const SandboxCgroup& cgroup, bool want) {
  for (int i = 0; i < 1000; ++i) {
    if (cgroup.frozen() == want) return true;
    std::this_thread::sleep_for(milliseconds(1));
  }
  return false;
}

// Freeze stops the CPU clock, thaw restarts it, and a frozen task that is SIGKILLed
// still dies (on v1 only once thawed, which killAll() takes care of).
void freezeThawKill(CgroupTree& tree, kj::Own<SandboxCgroup> cgroup) {
  pid_t child = forkBusy();
  ASSERT_GT(child, 0);
  cgroup->addProcess(child);
  EXPECT_EQ(cgroup->oomKills(), 0u);
  std::this_thread::sleep_for(milliseconds(50));
  EXPECT_FALSE(cgroup->frozen());

  cgroup->freeze();
  ASSERT_TRUE(waitFrozen(*cgroup, true));
  uint64_t before = cpuNs(*cgroup);
  std::this_thread::sleep_for(milliseconds(200));
  uint64_t frozen = cpuNs(*cgroup);
  EXPECT_LT(frozen - before, 5 * kMs) << "a frozen task ran";

  cgroup->thaw();
  EXPECT_TRUE(waitFrozen(*cgroup, false));
  // Running again: the clock moves (on a busy host it may take a while to
  // get a CPU, so wait up to 2 s rather than expect a share).
  bool ran = false;
  for (int i = 0; i < 200 && !ran; ++i) {
    std::this_thread::sleep_for(milliseconds(10));
    ran = cpuNs(*cgroup) - frozen > 20 * kMs;
  }
  EXPECT_TRUE(ran) << "a thawed task did not run";

  cgroup->freeze();
  ASSERT_TRUE(waitFrozen(*cgroup, true));
  kill(child, SIGKILL);
  std::this_thread::sleep_for(milliseconds(50));
  int status = 0;
  pid_t reaped = waitpid(child, &status, WNOHANG);
  if (tree.mode() == CgroupMode::kHybrid) {
    EXPECT_EQ(reaped, 0) << "v1: a frozen task should not die before it is thawed";
  }
  cgroup->killAll();
  cgroup->thaw();
  if (reaped == 0) reaped = waitpid(child, &status, 0);
  ASSERT_EQ(reaped, child);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  cgroup->remove();
}

TEST(Freezer, HostLayout) {
  NODEAGENT_REQUIRE_ROOT();
  auto tree = CgroupTree::open(kRoot);
  freezeThawKill(*tree, SandboxCgroup::create(*tree, tenant(), "s1", CgroupLimits()));
  tree->removeIfEmpty();
}

TEST(Freezer, CgroupV2Freeze) {
  NODEAGENT_REQUIRE_ROOT();
  CgroupLayout host = detectCgroupLayout();
  if (host.mode == CgroupMode::kV2) GTEST_SKIP() << "pure v2 host: covered by HostLayout";
  // The unified tree as the agent's only hierarchy. It has no controllers, so the leaf
  // is made by hand and adopted, rather than created with limits.
  CgroupLayout layout;
  layout.mode = CgroupMode::kV2;
  layout.v2 = host.v2;
  CgroupTree tree(layout, kRoot);
  std::string root = host.v2 + "/" + kRoot;
  std::string leaf = root + "/sandboxes/" + tenant() + "/s2";
  ASSERT_EQ(system(("mkdir -p '" + leaf + "'").c_str()), 0);
  freezeThawKill(tree, SandboxCgroup::adopt(tree, tenant(), "s2"));
  tree.removeIfEmpty();
  rmdir(root.c_str());
}

}  // namespace
}  // namespace nodeagent::isolator
