// The cgroup code against fake hierarchies (plain directories and files), so that the pure
// v2 path, which this host (hybrid) cannot run for real, is exercised: which files are
// written with what, and how stats are parsed.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <kj/exception.h>

#include <fstream>
#include <map>
#include <memory>
#include <sstream>

#include "isolator/cgroup.h"
#include "isolator/file_util.h"

namespace nodeagent::isolator {
namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void put(const std::string& path, const std::string& content) {
  std::ofstream(path) << content;
}

bool exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

class FakeCgroupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/cgroup-fake.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    base_ = tmpl;
  }
  void TearDown() override { removeTree(base_); }

  // A cgroup dir with the given files.
  void makeCgroup(const std::string& path, const std::map<std::string, std::string>& files) {
    makeDirectories(path, 0755);
    for (const auto& [name, content] : files) put(path + "/" + name, content);
  }

  std::string base_;
};

// -------------------------------------------------------------------------------------
// Pure v2

class FakeV2Test : public FakeCgroupTest {
 protected:
  void SetUp() override {
    FakeCgroupTest::SetUp();
    mount_ = base_ + "/v2";
    std::map<std::string, std::string> level = {
        {"cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n"},
        {"cgroup.subtree_control", "\n"}};
    makeCgroup(mount_, level);
    makeCgroup(mount_ + "/nodeagent", level);
    makeCgroup(mount_ + "/nodeagent/sandboxes", level);
    makeCgroup(mount_ + "/nodeagent/sandboxes/acme", level);
    leaf_ = mount_ + "/nodeagent/sandboxes/acme/sbx1";
    makeCgroup(leaf_, {{"cgroup.procs", ""},
                       {"cgroup.kill", ""},
                       {"cgroup.events", "populated 1\nfrozen 0\n"},
                       {"memory.max", "max\n"},
                       {"memory.swap.max", "max\n"},
                       {"pids.max", "max\n"},
                       {"cpu.max", "max 100000\n"},
                       {"cpu.max.burst", "0\n"},
                       {"cpu.weight", "100\n"},
                       {"cpu.stat",
                        "usage_usec 3000\nuser_usec 2000\nsystem_usec 1000\n"
                        "nr_periods 0\n"},
                       {"memory.current", "4096\n"},
                       {"memory.peak", "8192\n"},
                       {"pids.current", "3\n"},
                       {"memory.events",
                        "low 0\nhigh 0\nmax 5\noom 2\noom_kill 1\n"
                        "oom_group_kill 0\n"}});
    CgroupLayout layout;
    layout.mode = CgroupMode::kV2;
    layout.v2 = mount_;
    tree_ = std::make_unique<CgroupTree>(layout, "nodeagent");
  }

  std::string mount_, leaf_;
  std::unique_ptr<CgroupTree> tree_;
};

TEST_F(FakeV2Test, OneHierarchyWithEveryController) {
  ASSERT_EQ(tree_->hierarchies().size(), 1u);
  const CgroupHierarchy& h = tree_->hierarchies()[0];
  EXPECT_TRUE(h.v2 && h.memory && h.pids && h.cpu && h.cpuacct && h.freezer);
  EXPECT_EQ(tree_->sandboxPath(h, "acme", "sbx1"), leaf_);
}

TEST_F(FakeV2Test, EnablesControllersAlongThePath) {
  // The mount already delegates what we need: left untouched.
  put(mount_ + "/cgroup.subtree_control", "cpu io memory pids\n");
  tree_->ensureTenant("acme");
  EXPECT_EQ(slurp(mount_ + "/cgroup.subtree_control"), "cpu io memory pids\n");
  for (const char* level : {"/nodeagent", "/nodeagent/sandboxes", "/nodeagent/sandboxes/acme"}) {
    EXPECT_EQ(slurp(mount_ + level + "/cgroup.subtree_control"), "+cpu +memory +pids") << level;
  }
}

TEST_F(FakeV2Test, MissingControllerIsAClearError) {
  put(mount_ + "/cgroup.controllers", "cpu io pids\n");
  try {
    tree_->ensureTenant("acme");
    FAIL() << "expected an exception";
  } catch (const kj::Exception& e) {
    std::string message = e.getDescription().cStr();
    EXPECT_NE(message.find("memory"), std::string::npos) << message;
    EXPECT_NE(message.find("not available"), std::string::npos) << message;
  }
}

TEST_F(FakeV2Test, CreateRefusesAnExistingSandbox) {
  try {
    SandboxCgroup::create(*tree_, "acme", "sbx1", CgroupLimits());
    FAIL() << "expected an exception";
  } catch (const kj::Exception& e) {
    EXPECT_NE(std::string(e.getDescription().cStr()).find("already exists"), std::string::npos);
  }
}

TEST_F(FakeV2Test, FailedCreateLeavesNothingBehind) {
  // A fake leaf has no interface files, so applying limits fails; the leaf must go again.
  EXPECT_THROW(SandboxCgroup::create(*tree_, "acme", "sbx2", CgroupLimits()), kj::Exception);
  EXPECT_FALSE(exists(mount_ + "/nodeagent/sandboxes/acme/sbx2"));
}

TEST_F(FakeV2Test, LimitsGoToTheV2Files) {
  auto cgroup = SandboxCgroup::adopt(*tree_, "acme", "sbx1");
  CgroupLimits limits;
  limits.memoryBytes = 512ull << 20;
  limits.pidsMax = 256;
  limits.cpuMillis = 250;
  limits.cpuPeriodMicros = 100000;
  limits.cpuBurstMicros = 20000;
  limits.cpuWeight = 200;
  cgroup->setLimits(limits);
  EXPECT_EQ(slurp(leaf_ + "/memory.max"), std::to_string(512ull << 20));
  EXPECT_EQ(slurp(leaf_ + "/memory.swap.max"), "0");
  EXPECT_EQ(slurp(leaf_ + "/pids.max"), "256");
  EXPECT_EQ(slurp(leaf_ + "/cpu.max"), "25000 100000");
  EXPECT_EQ(slurp(leaf_ + "/cpu.max.burst"), "20000");
  EXPECT_EQ(slurp(leaf_ + "/cpu.weight"), "200");

  cgroup->setLimits(CgroupLimits());
  EXPECT_EQ(slurp(leaf_ + "/memory.max"), "max");
  EXPECT_EQ(slurp(leaf_ + "/pids.max"), "max");
  EXPECT_EQ(slurp(leaf_ + "/cpu.max"), "max 100000");
  EXPECT_EQ(slurp(leaf_ + "/cpu.max.burst"), "0");
}

TEST_F(FakeV2Test, InvalidLimitsAreRejected) {
  auto cgroup = SandboxCgroup::adopt(*tree_, "acme", "sbx1");
  CgroupLimits limits;
  limits.cpuPeriodMicros = 10;
  EXPECT_THROW(cgroup->setLimits(limits), kj::Exception);
  limits = CgroupLimits();
  limits.cpuBurstMicros = 1000;  // without a quota
  EXPECT_THROW(cgroup->setLimits(limits), kj::Exception);
  limits = CgroupLimits();
  limits.cpuWeight = 20000;
  EXPECT_THROW(cgroup->setLimits(limits), kj::Exception);
}

TEST_F(FakeV2Test, StatsMembershipAndKill) {
  auto cgroup = SandboxCgroup::adopt(*tree_, "acme", "sbx1");
  CgroupStats s = cgroup->stats();
  EXPECT_EQ(s.cpuUserNs, 2000000u);
  EXPECT_EQ(s.cpuSystemNs, 1000000u);
  EXPECT_EQ(s.memoryCurrentBytes, 4096u);
  EXPECT_EQ(s.memoryPeakBytes, 8192u);
  EXPECT_EQ(s.pidsCurrent, 3u);
  EXPECT_EQ(s.oomKills, 1u);
  EXPECT_TRUE(cgroup->populated());

  cgroup->addProcess(4242);
  EXPECT_EQ(slurp(leaf_ + "/cgroup.procs"), "4242");
  EXPECT_EQ(cgroup->pids(), std::vector<pid_t>{4242});
  cgroup->killAll();
  EXPECT_EQ(slurp(leaf_ + "/cgroup.kill"), "1");
}

TEST_F(FakeV2Test, AdoptNeedsAnExistingLeafAndValidNames) {
  EXPECT_THROW(SandboxCgroup::adopt(*tree_, "acme", "missing"), kj::Exception);
  EXPECT_THROW(SandboxCgroup::adopt(*tree_, "..", "sbx1"), kj::Exception);
  EXPECT_THROW(SandboxCgroup::adopt(*tree_, "acme", "a/b"), kj::Exception);
  EXPECT_THROW(SandboxCgroup::create(*tree_, "acme", "x.y", CgroupLimits()), kj::Exception);
}

TEST_F(FakeV2Test, ListsSandboxes) {
  makeDirectories(mount_ + "/nodeagent/sandboxes/beta/s2", 0755);
  auto list = tree_->listSandboxes();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0], std::make_pair(std::string("acme"), std::string("sbx1")));
  EXPECT_EQ(list[1], std::make_pair(std::string("beta"), std::string("s2")));
}

TEST_F(FakeV2Test, TenantWeight) {
  put(mount_ + "/nodeagent/sandboxes/acme/cpu.weight", "100\n");
  tree_->setTenantWeight("acme", 300);
  EXPECT_EQ(slurp(mount_ + "/nodeagent/sandboxes/acme/cpu.weight"), "300");
  EXPECT_THROW(tree_->setTenantWeight("acme", 0), kj::Exception);
}

// -------------------------------------------------------------------------------------
// Hybrid (with cpu and cpuacct co-mounted, as on many distributions)

class FakeHybridTest : public FakeCgroupTest {
 protected:
  void SetUp() override {
    FakeCgroupTest::SetUp();
    layout_.mode = CgroupMode::kHybrid;
    layout_.v2 = base_ + "/unified";
    layout_.memory = base_ + "/memory";
    layout_.pids = base_ + "/pids";
    layout_.cpu = layout_.cpuacct = base_ + "/cpu,cpuacct";
    layout_.freezer = base_ + "/freezer";
    std::string rel = "/nodeagent/sandboxes/acme/sbx1";
    makeCgroup(
        layout_.v2 + rel,
        {{"cgroup.procs", ""}, {"cgroup.kill", ""}, {"cgroup.events", "populated 0\nfrozen 0\n"}});
    makeCgroup(layout_.memory + rel,
               {{"cgroup.procs", ""},
                {"memory.limit_in_bytes", "9223372036854771712\n"},
                {"memory.memsw.limit_in_bytes", "9223372036854771712\n"},
                {"memory.usage_in_bytes", "1000\n"},
                {"memory.max_usage_in_bytes", "2000\n"},
                {"memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n"}});
    makeCgroup(layout_.pids + rel,
               {{"cgroup.procs", ""}, {"pids.max", "max\n"}, {"pids.current", "7\n"}});
    makeCgroup(layout_.cpu + rel, {{"cgroup.procs", ""},
                                   {"cpu.cfs_period_us", "100000\n"},
                                   {"cpu.cfs_quota_us", "-1\n"},
                                   {"cpu.cfs_burst_us", "0\n"},
                                   {"cpu.shares", "1024\n"},
                                   {"cpuacct.usage_user", "555\n"},
                                   {"cpuacct.usage_sys", "444\n"}});
    makeCgroup(layout_.freezer + rel, {{"cgroup.procs", ""}, {"freezer.state", "THAWED\n"}});
    tree_ = std::make_unique<CgroupTree>(layout_, "nodeagent");
  }

  CgroupLayout layout_;
  std::unique_ptr<CgroupTree> tree_;
};

TEST_F(FakeHybridTest, CoMountedControllersShareAHierarchy) {
  ASSERT_EQ(tree_->hierarchies().size(), 5u);  // unified, memory, pids, cpu+cpuacct, freezer
  const CgroupHierarchy& v2 = tree_->hierarchies()[0];
  EXPECT_TRUE(v2.v2);
  EXPECT_FALSE(v2.memory || v2.cpu || v2.pids);
  int cpuHierarchies = 0;
  for (const CgroupHierarchy& h : tree_->hierarchies()) {
    if (h.cpu) {
      ++cpuHierarchies;
      EXPECT_TRUE(h.cpuacct);
    }
  }
  EXPECT_EQ(cpuHierarchies, 1);
}

TEST_F(FakeHybridTest, LimitsGoToTheV1Files) {
  auto cgroup = SandboxCgroup::adopt(*tree_, "acme", "sbx1");
  CgroupLimits limits;
  limits.memoryBytes = 256ull << 20;
  limits.pidsMax = 100;
  limits.cpuMillis = 1500;
  limits.cpuPeriodMicros = 50000;
  limits.cpuBurstMicros = 10000;
  limits.cpuWeight = 50;
  cgroup->setLimits(limits);
  std::string rel = "/nodeagent/sandboxes/acme/sbx1";
  EXPECT_EQ(slurp(layout_.memory + rel + "/memory.limit_in_bytes"), std::to_string(256ull << 20));
  EXPECT_EQ(slurp(layout_.memory + rel + "/memory.memsw.limit_in_bytes"),
            std::to_string(256ull << 20));
  EXPECT_EQ(slurp(layout_.pids + rel + "/pids.max"), "100");
  EXPECT_EQ(slurp(layout_.cpu + rel + "/cpu.cfs_period_us"), "50000");
  EXPECT_EQ(slurp(layout_.cpu + rel + "/cpu.cfs_quota_us"), "75000");
  EXPECT_EQ(slurp(layout_.cpu + rel + "/cpu.cfs_burst_us"), "10000");
  EXPECT_EQ(slurp(layout_.cpu + rel + "/cpu.shares"), "512");

  cgroup->setLimits(CgroupLimits());
  EXPECT_EQ(slurp(layout_.memory + rel + "/memory.limit_in_bytes"), "-1");
  EXPECT_EQ(slurp(layout_.cpu + rel + "/cpu.cfs_quota_us"), "-1");
  EXPECT_EQ(slurp(layout_.pids + rel + "/pids.max"), "max");
}

TEST_F(FakeHybridTest, StatsComeFromTheV1Controllers) {
  auto cgroup = SandboxCgroup::adopt(*tree_, "acme", "sbx1");
  CgroupStats s = cgroup->stats();
  EXPECT_EQ(s.cpuUserNs, 555u);
  EXPECT_EQ(s.cpuSystemNs, 444u);
  EXPECT_EQ(s.memoryCurrentBytes, 1000u);
  EXPECT_EQ(s.memoryPeakBytes, 2000u);
  EXPECT_EQ(s.pidsCurrent, 7u);
  EXPECT_EQ(s.oomKills, 4u);
  EXPECT_FALSE(cgroup->populated());
}

TEST_F(FakeHybridTest, AddProcessWritesEveryHierarchy) {
  auto cgroup = SandboxCgroup::adopt(*tree_, "acme", "sbx1");
  cgroup->addProcess(99);
  for (const CgroupHierarchy& h : tree_->hierarchies()) {
    EXPECT_EQ(slurp(tree_->sandboxPath(h, "acme", "sbx1") + "/cgroup.procs"), "99") << h.mount;
  }
}

TEST(CgroupDetect, ThisHostIsSupported) {
  CgroupMode mode = detectCgroupMode();
  EXPECT_TRUE(mode == CgroupMode::kV2 || mode == CgroupMode::kHybrid);
  CgroupLayout layout = detectCgroupLayout();
  EXPECT_EQ(layout.mode, mode);
  if (mode == CgroupMode::kHybrid) {
    EXPECT_EQ(layout.v2, "/sys/fs/cgroup/unified");
    EXPECT_FALSE(layout.memory.empty());
    EXPECT_FALSE(layout.freezer.empty());
  } else {
    EXPECT_EQ(layout.v2, "/sys/fs/cgroup");
  }
}

}  // namespace
}  // namespace nodeagent::isolator
