// Warm pools through the real agent (needs root): pre-built sandboxes of a
// template, claimed by creates and refilled in the background.
#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <set>
#include <sstream>

#include <kj/debug.h>

#include "e2e/agent_harness.h"
#include "e2e/output_collector.h"
#include "loop/io_context.h"
#include "nodeagent/api_error.h"
#include "nodeagent/config.h"
#include "nodeagent/rpc_endpoint.h"
#include "nodeagent/store.h"
#include "support/privileged.h"

namespace nodeagent::testing {
namespace {

constexpr uint32_t kPoolSize = 2;

std::vector<std::string> linesOf(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string line;
  while (std::getline(ss, line)) {
    if (!line.empty()) out.push_back(line);
  }
  return out;
}

class WarmPoolTest : public SharedAgentTest<WarmPoolTest> {
 public:
  static std::string extraConfig() {
    return ",\"templates\": [{\"name\": \"python\", \"warmPool\": " + std::to_string(kPoolSize) +
           "}]";
  }

 protected:
  ~WarmPoolTest() noexcept override {}
  void SetUp() override {
    SharedAgentTest::SetUp();
    if (setUpStopped()) return;
    conn_ = connectToNode(io_.port, parseListenAddress(agent_->target()), nullptr, 8 << 20)
                .wait(io_.waitScope);
    node_ = conn_->bootstrap().castAs<api::Node>();
  }

  struct Pool {
    uint32_t target = 0, idle = 0;
    uint64_t claims = 0;
  };
  Pool pool() {
    auto response = node_.infoRequest().send().wait(io_.waitScope);  // owns what info reads
    auto info = response.getInfo();
    Pool p;
    for (auto w : info.getWarmPools()) {
      if (w.getTemplate() == "python") p = Pool{w.getTarget(), w.getIdle(), w.getClaims()};
    }
    return p;
  }
  // Polls NodeInfo until the pool is full again.
  bool waitFull() {
    for (int i = 0; i < 400; ++i) {
      if (pool().idle == kPoolSize) return true;
      usleep(25000);
    }
    return false;
  }
  // The pool's sandboxes, as the cgroup tree shows them.
  std::set<std::string> poolIds() {
    std::set<std::string> ids;
    DIR* dir = opendir(agent().cgroupDir("unified", "_pool", "").c_str());
    if (dir == nullptr) return ids;
    while (auto* e = readdir(dir)) {
      if (std::string(e->d_name).rfind("sbx-", 0) == 0) ids.insert(e->d_name);
    }
    closedir(dir);
    return ids;
  }

  struct Created {
    api::Sandbox::Client sandbox;
    std::string id;
  };
  Created create(uint64_t memoryBytes = 0, uint64_t diskBytes = 0) {
    auto req = node_.createRequest();
    auto spec = req.initSpec();
    spec.setTemplate("python");
    spec.setTenant("warm");
    spec.setMemoryBytes(memoryBytes);
    spec.setDiskBytes(diskBytes);
    auto result = req.send().wait(io_.waitScope);
    return Created{result.getSandbox(), result.getId().cStr()};
  }

  std::string run(api::Sandbox::Client& sandbox, std::vector<std::string> argv, int* code) {
    std::string out;
    auto exec = sandbox.execRequest();
    auto list = exec.initRequest().initArgv(argv.size());
    for (size_t i = 0; i < argv.size(); ++i) list.set(i, argv[i]);
    std::string err;  // stderr is not checked here
    exec.setOutput(kj::heap<Collector>(&out, &err));
    auto waited = exec.send().getProcess().waitRequest().send().wait(io_.waitScope);
    *code = waited.getStatus().getReason() == api::ExitReason::EXITED ? waited.getStatus().getCode()
                                                                      : -1;
    return out;
  }

  // The audit detail of the sandbox's "create", "" if there is none yet.
  std::string createDetail(const std::string& id) {
    auto store = Store::open((agent().dir() + "/state").c_str());
    for (int attempt = 0; attempt < 100; ++attempt) {
      for (auto& stored : store->readAudit(0, 100000)) {
        auto e = stored->get();
        if (e.getSandboxId() == id.c_str() && e.getAction() == "create") {
          EXPECT_EQ(e.getTenant(), "warm");
          return e.getDetail().cStr();
        }
      }
      usleep(20000);
    }
    return "";
  }

  uint64_t memoryLimit(const std::string& tenant, const std::string& id) {
    std::string v1 = agent().cgroupDir("memory", tenant, id) + "/memory.limit_in_bytes";
    std::string text = access(v1.c_str(), F_OK) == 0
                           ? readFile(v1)
                           : readFile(agent().cgroupDir("", tenant, id) + "/memory.max");
    return std::stoull(text);
  }

  loop::IoContext io_;
  kj::Own<RpcConnection> conn_;
  api::Node::Client node_ = nullptr;
};

TEST_F(WarmPoolTest, FillsOnStartAndBelongsToNoTenant) {
  ASSERT_TRUE(waitFull()) << agent().log();
  EXPECT_EQ(pool().target, kPoolSize);
  EXPECT_EQ(poolIds().size(), kPoolSize);
  // Hidden from every listing and from open.
  // The response owns the message the reader points into: keep it.
  auto infoResponse = node_.infoRequest().send().wait(io_.waitScope);
  auto info = infoResponse.getInfo();
  auto listAll = node_.listRequest().send().wait(io_.waitScope);
  for (auto s : listAll.getSandboxes()) EXPECT_NE(s.getSpec().getTenant(), "_pool");
  EXPECT_EQ(info.getSandboxes(), listAll.getSandboxes().size() == 0 ? 0u : info.getSandboxes());
  auto listPool = node_.listRequest();
  listPool.setTenant("_pool");
  EXPECT_EQ(listPool.send().wait(io_.waitScope).getSandboxes().size(), 0u);
  auto open = node_.openRequest();
  open.setId(*poolIds().begin());
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { open.send().wait(io_.waitScope); })) {
    EXPECT_EQ(apiErrorCode(*e), api::ErrorCode::NOT_FOUND) << e->getDescription().cStr();
  } else {
    ADD_FAILURE() << "opened a pool sandbox";
  }
}

TEST_F(WarmPoolTest, CreateClaimsAPoolSandboxWithTheTenantsLimits) {
  ASSERT_TRUE(waitFull()) << agent().log();
  auto before = poolIds();
  uint64_t claims = pool().claims;
  auto created = create(256ull << 20);
  EXPECT_TRUE(before.count(created.id)) << "not served from the pool: " << created.id;
  EXPECT_EQ(pool().claims, claims + 1);
  EXPECT_NE(createDetail(created.id).find("warm=1"), std::string::npos);

  // It is the tenant's now: its cgroup, its memory limit (with its disk, a
  // tmpfs), every process in it.
  auto claimed = created.sandbox.infoRequest().send().wait(io_.waitScope).getInfo();
  EXPECT_EQ(memoryLimit("warm", created.id), (256ull << 20) + claimed.getSpec().getDiskBytes());
  EXPECT_TRUE(waitGone(agent().cgroupDir("unified", "_pool", created.id)));
  auto info = created.sandbox.infoRequest().send().wait(io_.waitScope).getInfo();
  EXPECT_EQ(info.getSpec().getTenant(), "warm");
  EXPECT_EQ(info.getSpec().getMemoryBytes(), 256ull << 20);
  EXPECT_GT(info.getExpiresAtNs(), info.getCreatedAtNs());

  int code = -1;
  EXPECT_EQ(run(created.sandbox, {"python3", "-c", "print(6 * 7)"}, &code), "42\n");
  EXPECT_EQ(code, 0);
  auto bg = created.sandbox.execRequest();
  auto argv = bg.initRequest().initArgv(2);
  argv.set(0, "sleep");
  argv.set(1, "30");
  bg.send().wait(io_.waitScope);
  for (const char* hierarchy : {"unified", "memory", "pids"}) {
    std::string procs =
        readFile(agent().cgroupDir(hierarchy, "warm", created.id) + "/cgroup.procs");
    EXPECT_GE(linesOf(procs).size(), 2u) << hierarchy << ": init and sleep";
  }
  // Usage is the tenant's alone: it starts at the claim.
  auto usage = created.sandbox.usageRequest().send().wait(io_.waitScope).getUsage();
  EXPECT_EQ(usage.getExecs(), 2u);

  // The pool refills without the claimed one; killed, it never comes back.
  ASSERT_TRUE(waitFull()) << agent().log();
  EXPECT_FALSE(poolIds().count(created.id));
  created.sandbox.killRequest().send().wait(io_.waitScope);
  ASSERT_TRUE(waitFull());
  usleep(200000);
  EXPECT_FALSE(poolIds().count(created.id));
  auto open = node_.openRequest();
  open.setId(created.id);
  auto ended =
      open.send().wait(io_.waitScope).getSandbox().infoRequest().send().wait(io_.waitScope);
  EXPECT_EQ(ended.getInfo().getState(), api::SandboxState::STOPPED);
  EXPECT_EQ(ended.getInfo().getSpec().getTenant(), "warm");
}

TEST_F(WarmPoolTest, CreatesBeyondThePoolStillSucceed) {
  ASSERT_TRUE(waitFull()) << agent().log();
  uint64_t claims = pool().claims;
  // Sent at once: the first ones claim, the rest (if the refill has not
  // caught up) launch cold.
  kj::Vector<kj::Promise<capnp::Response<api::Node::CreateResults>>> pending;
  for (uint32_t i = 0; i < kPoolSize + 2; ++i) {
    auto req = node_.createRequest();
    req.initSpec().setTemplate("python");
    req.getSpec().setTenant("warm");
    pending.add(req.send());
  }
  for (auto& p : pending) {
    auto created = p.wait(io_.waitScope);
    auto sandbox = created.getSandbox();
    int code = -1;
    run(sandbox, {"true"}, &code);
    EXPECT_EQ(code, 0);
    sandbox.killRequest().send().wait(io_.waitScope);
  }
  EXPECT_GE(pool().claims, claims + 1);
  EXPECT_LE(pool().claims, claims + kPoolSize + 2);
  ASSERT_TRUE(waitFull());
}

TEST_F(WarmPoolTest, OtherDiskSizeIsServedCold) {
  ASSERT_TRUE(waitFull()) << agent().log();
  auto before = poolIds();
  uint64_t claims = pool().claims;
  auto created = create(0, 64ull << 20);
  EXPECT_FALSE(before.count(created.id));
  EXPECT_EQ(pool().claims, claims);
  EXPECT_EQ(createDetail(created.id).find("warm=1"), std::string::npos);
  EXPECT_EQ(poolIds(), before);
  int code = -1;
  run(created.sandbox, {"true"}, &code);
  EXPECT_EQ(code, 0);
  created.sandbox.killRequest().send().wait(io_.waitScope);
}

TEST_F(WarmPoolTest, PoolTenantIsReserved) {
  auto req = node_.createRequest();
  req.initSpec().setTemplate("python");
  req.getSpec().setTenant("_pool");
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { req.send().wait(io_.waitScope); })) {
    EXPECT_EQ(apiErrorCode(*e), api::ErrorCode::INVALID_ARGUMENT) << e->getDescription().cStr();
  } else {
    ADD_FAILURE() << "created a sandbox for tenant _pool";
  }
}

TEST_F(WarmPoolTest, APoolSandboxThatDiesIsReplaced) {
  ASSERT_TRUE(waitFull()) << agent().log();
  auto before = poolIds();
  std::string victim = *before.begin();
  for (auto& pid :
       linesOf(readFile(agent().cgroupDir("unified", "_pool", victim) + "/cgroup.procs"))) {
    kill(std::stoi(pid), SIGKILL);
  }
  for (int i = 0; i < 400 && poolIds().count(victim); ++i) usleep(25000);
  EXPECT_FALSE(poolIds().count(victim));
  ASSERT_TRUE(waitFull()) << agent().log();
  EXPECT_EQ(poolIds().size(), kPoolSize);
  EXPECT_FALSE(poolIds().count(victim));
}

// A graceful stop (a rolling upgrade) ends the pool's idle sandboxes, which no
// tenant owns, and leaves the tenants' sandboxes running for the next agent.
TEST(WarmPoolStop, StoppingTheAgentEndsItsIdleSandboxesOnly) {
  NODEAGENT_REQUIRE_ROOT();
  AgentProcess agent({}, true, WarmPoolTest::extraConfig());
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  std::string tenantSandbox = agent.create();
  auto pidsIn = [&](const std::string& tenant, const std::string& id) {
    std::vector<pid_t> pids;
    for (auto& line : linesOf(readFile(agent.cgroupDir("unified", tenant, id) + "/cgroup.procs")))
      pids.push_back(std::stoi(line));
    return pids;
  };
  std::vector<pid_t> poolPids;
  std::set<std::string> poolSandboxes;
  for (int i = 0; i < 400 && poolPids.size() < kPoolSize; ++i) {
    usleep(25000);
    poolPids.clear();
    poolSandboxes.clear();
    DIR* dir = opendir(agent.cgroupDir("unified", "_pool", "").c_str());
    if (dir == nullptr) continue;
    while (auto* e = readdir(dir)) {
      if (std::string(e->d_name).rfind("sbx-", 0) != 0) continue;
      poolSandboxes.insert(e->d_name);
      for (pid_t pid : pidsIn("_pool", e->d_name)) poolPids.push_back(pid);
    }
    closedir(dir);
  }
  ASSERT_EQ(poolPids.size(), size_t(kPoolSize)) << agent.log();  // one init each
  std::vector<pid_t> tenantPids = pidsIn("e2e", tenantSandbox);
  ASSERT_FALSE(tenantPids.empty());

  int status = agent.stop();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << "\n" << agent.log();
  auto gone = [](pid_t pid) {
    std::string stat = readFile("/proc/" + std::to_string(pid) + "/stat");
    return stat.empty() || stat.find(") Z ") != std::string::npos;
  };
  for (pid_t pid : poolPids) {
    for (int i = 0; i < 200 && !gone(pid); ++i) usleep(10000);
    EXPECT_TRUE(gone(pid)) << "pool init " << pid << " outlived the agent";
  }
  for (auto& id : poolSandboxes) {
    EXPECT_NE(access(agent.cgroupDir("unified", "_pool", id).c_str(), F_OK), 0) << id;
  }
  for (pid_t pid : tenantPids) EXPECT_FALSE(gone(pid)) << "tenant init " << pid;

  // The next agent adopts the tenant's sandbox (and ends it as the test leaves).
  agent.startAgain();
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  EXPECT_EQ(agent.sbx({"exec", tenantSandbox, "--", "echo", "still here"}).out, "still here\n");
}

// A graceful stop while the pool is still filling: the launch under way ends
// with the agent instead of leaving its init behind with nobody to end it.
TEST(WarmPoolStop, StoppingWhileThePoolFillsLeavesNoPoolSandbox) {
  NODEAGENT_REQUIRE_ROOT();
  // Twenty launches one after another: one is nearly always under way.
  AgentProcess agent({}, true, ",\"templates\": [{\"name\": \"python\", \"warmPool\": 20}]");
  std::string poolDir = agent.cgroupDir("unified", "_pool", "");
  auto poolSandboxes = [&]() {
    std::vector<std::string> ids;
    DIR* dir = opendir(poolDir.c_str());
    if (dir == nullptr) return ids;
    while (auto* e = readdir(dir)) {
      if (std::string(e->d_name).rfind("sbx-", 0) == 0) ids.push_back(e->d_name);
    }
    closedir(dir);
    return ids;
  };
  for (int i = 0; i < 5000 && poolSandboxes().size() < 3; ++i) usleep(1000);
  ASSERT_GE(poolSandboxes().size(), 3u) << agent.log();
  int status = agent.stop();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << "\n" << agent.log();
  // A cgroup goes only once nothing runs in it: none left means no init left.
  for (int i = 0; i < 200 && !poolSandboxes().empty(); ++i) usleep(10000);
  std::vector<std::string> left = poolSandboxes();
  EXPECT_TRUE(left.empty()) << left.front() << " outlived the agent\n" << agent.log();
}

// An agent that dies within moments of a claim may leave the claimed
// sandbox's old pool cgroup behind (empty: the claim moved every task out).
// The next agent removes it, and the sandbox itself is adopted as usual.
TEST(WarmPoolRestart, AClaimedSandboxsOldPoolCgroupIsSweptByTheNextAgent) {
  NODEAGENT_REQUIRE_ROOT();
  AgentProcess agent({}, true, ",\"templates\": [{\"name\": \"python\", \"warmPool\": 2}]");
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  std::string poolDir = agent.cgroupDir("unified", "_pool", "");
  auto poolSize = [&]() {
    int n = 0;
    if (DIR* dir = opendir(poolDir.c_str())) {
      while (auto* e = readdir(dir)) n += std::string(e->d_name).rfind("sbx-", 0) == 0;
      closedir(dir);
    }
    return n;
  };
  for (int i = 0; i < 400 && poolSize() < 2; ++i) usleep(10000);
  ASSERT_EQ(poolSize(), 2) << agent.log();
  std::string id = agent.create();
  ASSERT_FALSE(id.empty());
  ASSERT_TRUE(waitStored(agent, id, api::SandboxState::RUNNING));
  agent.killHard();
  // What the removal 20 ms after the claim would have taken, had it run.
  std::vector<std::string> left;
  for (const char* hierarchy : {"unified", "memory", "pids", "cpu", "cpuacct", "freezer"}) {
    std::string dir = agent.cgroupDir(hierarchy, "_pool", id);
    if (access(agent.cgroupDir(hierarchy, "_pool", "").c_str(), F_OK) != 0) continue;
    if (mkdir(dir.c_str(), 0755) == 0 || errno == EEXIST) left.push_back(dir);
  }
  ASSERT_FALSE(left.empty());
  agent.startAgain();
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  for (auto& dir : left) EXPECT_TRUE(waitGone(dir)) << dir << "\n" << agent.log();
  EXPECT_EQ(agent.sbx({"exec", id, "--", "echo", "adopted"}).out, "adopted\n");
  agent.sbx({"kill", id});
}

}  // namespace
}  // namespace nodeagent::testing
