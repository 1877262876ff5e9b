// CPU metering through the real agent (needs root): the eBPF sched_switch
// meter's figure in `sbx usage` against the sandbox cgroup's own counter,
// while paused, and across a kill -9 of the agent.
#include <fstream>
#include <regex>
#include <thread>

#include "e2e/agent_harness.h"
#include "support/privileged.h"

namespace nodeagent::testing {
namespace {

const char kBurnOneSecond[] =
    "import time\nend = time.process_time() + 1.0\nwhile time.process_time() < end: pass\n";

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

struct Cpu {
  uint64_t metered, cgroup;
};

Cpu cpuOf(AgentProcess& agent, const std::string& id) {
  auto usage = agent.sbx({"usage", id, "--json"}).out;
  return Cpu{jsonNumber(usage, "cpuMeteredNs"), cgroupUsageNs(agent, id)};
}

TEST(Metering, TheEbpfMeterAgreesWithTheCgroupAndStopsWhilePaused) {
  NODEAGENT_REQUIRE_ROOT();
  AgentProcess agent;
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  std::string id = agent.create();
  auto r = agent.sbx({"exec", id, "--", "python3", "-c", kBurnOneSecond});
  ASSERT_EQ(r.exitCode, 0) << r.err;
  Cpu cpu = cpuOf(agent, id);
  ASSERT_GT(cpu.cgroup, 900'000'000u);
  // Within 2% of each other on a second of work.
  EXPECT_NEAR(double(cpu.metered), double(cpu.cgroup), 0.02 * double(cpu.cgroup));

  // A paused sandbox accrues nothing, even with a busy process in it.
  ASSERT_EQ(agent.sbx({"exec", id, "-d", "--", "sh", "-c", "while :; do :; done"}).exitCode, 0);
  ASSERT_EQ(agent.sbx({"pause", id}).exitCode, 0);
  uint64_t before = cpuOf(agent, id).metered;
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_LT(cpuOf(agent, id).metered - before, 2'000'000u);
  ASSERT_EQ(agent.sbx({"resume", id}).exitCode, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  EXPECT_GT(cpuOf(agent, id).metered - before, 100'000'000u);

  // The figure survives the sandbox's end.
  ASSERT_EQ(agent.sbx({"kill", id}).exitCode, 0);
  auto metered = [&]() {
    return jsonNumber(agent.sbx({"usage", id, "--json"}).out, "cpuMeteredNs");
  };
  uint64_t final1 = metered();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(metered(), final1);
  EXPECT_GT(final1, before);
}

TEST(Metering, EachProcessExitReportsItsOwnCpuTime) {
  NODEAGENT_REQUIRE_ROOT();
  AgentProcess agent;
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  std::string id = agent.create();
  auto burner = agent.sbx({"exec", id, "-d", "--", "python3", "-c",
                           "import time\nend = time.process_time() + 0.5\n"
                           "while time.process_time() < end: pass\n"});
  auto sleeper = agent.sbx({"exec", id, "-d", "--", "sleep", "0.3"});
  ASSERT_EQ(burner.exitCode, 0);
  ASSERT_EQ(sleeper.exitCode, 0);
  std::string ps;
  for (int i = 0; i < 200; ++i) {
    ps = agent.sbx({"ps", id, "--json"}).out;
    if (ps.find("\"running\": true") == std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  auto cpuOfPid = [&](const std::string& pid) -> uint64_t {
    std::smatch m;
    std::regex entry("\\{\\s*\"pid\": " + pid +
                     ",[^{}]*\"status\": \\{[^{}]*\"cpuNs\": \"([0-9]+)\"");
    if (!std::regex_search(ps, m, entry)) {
      ADD_FAILURE() << "no cpuNs for pid " << pid << " in " << ps;
      return 0;
    }
    return std::stoull(m[1]);
  };
  uint64_t burnt = cpuOfPid(trim(burner.out));
  EXPECT_GE(burnt, 500'000'000u);
  EXPECT_LT(burnt, 800'000'000u);  // interpreter start-up on top, not much more
  EXPECT_LT(cpuOfPid(trim(sleeper.out)), 50'000'000u);
  EXPECT_LE(burnt, cgroupUsageNs(agent, id));
}

// Polls `sbx info` until `what` appears in it (up to 10 s).
bool waitInfo(AgentProcess& agent, const std::string& id, const std::string& what) {
  for (int i = 0; i < 200; ++i) {
    if (agent.sbx({"info", id, "--json"}).out.find(what) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

TEST(Metering, TheCpuCapKillsOrPausesAtItsFigure) {
  NODEAGENT_REQUIRE_ROOT();
  AgentProcess agent;
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  std::string killed = agent.create({"--cpu-cap", "0.4"});
  std::string paused = agent.create({"--cpu-cap", "0.3", "--on-cpu-cap", "pause"});
  std::string uncapped = agent.create();
  for (auto& id : {killed, paused, uncapped}) {
    ASSERT_EQ(agent.sbx({"exec", id, "-d", "--", "sh", "-c", "while :; do :; done"}).exitCode, 0);
  }
  ASSERT_TRUE(waitInfo(agent, killed, "\"endReason\": \"cpu-cap\""))
      << agent.sbx({"info", killed}).out;
  uint64_t used = jsonNumber(agent.sbx({"usage", killed, "--json"}).out, "cpuMeteredNs");
  EXPECT_GE(used, 400'000'000u);
  EXPECT_LT(used, 550'000'000u);  // checked at most every 10 ms once near the cap

  ASSERT_TRUE(waitInfo(agent, paused, "\"state\": \"paused\"")) << agent.sbx({"info", paused}).out;
  uint64_t atPause = jsonNumber(agent.sbx({"usage", paused, "--json"}).out, "cpuMeteredNs");
  EXPECT_GE(atPause, 300'000'000u);
  EXPECT_LT(atPause, 450'000'000u);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_LT(jsonNumber(agent.sbx({"usage", paused, "--json"}).out, "cpuMeteredNs") - atPause,
            2'000'000u);

  // The reason is in the audit log, and a sandbox without a cap runs on.
  auto store = Store::open((agent.dir() + "/state").c_str());
  bool audited = false;
  for (int attempt = 0; attempt < 50 && !audited; ++attempt) {
    for (auto& stored : store->readAudit(0, 100000)) {
      auto e = stored->get();
      audited = audited || (e.getSandboxId() == killed.c_str() && e.getAction() == "cpu-cap" &&
                            e.getDetail().startsWith("reason=cpu-cap"));
    }
    if (!audited) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(audited);
  EXPECT_NE(agent.sbx({"info", uncapped, "--json"}).out.find("\"state\": \"running\""),
            std::string::npos);
}

TEST(Metering, TheRequestCapRefusesMoreButKillInfoAndUsageStillWork) {
  NODEAGENT_REQUIRE_ROOT();
  AgentProcess agent;
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  std::string id = agent.create({"--request-cap", "3"});
  for (int i = 0; i < 3; ++i) {
    auto r = agent.sbx({"exec", id, "--", "true"});
    ASSERT_EQ(r.exitCode, 0) << "request " << i + 1 << ": " << r.err;
  }
  auto refused = agent.sbx({"exec", id, "--", "true"});
  EXPECT_NE(refused.exitCode, 0);
  EXPECT_NE(refused.err.find("limitExceeded"), std::string::npos) << refused.err;
  EXPECT_NE(agent.sbx({"cp", "/etc/hostname", id + ":/tmp/x"}).err.find("limitExceeded"),
            std::string::npos);
  EXPECT_EQ(agent.sbx({"info", id}).exitCode, 0);
  auto usage = agent.sbx({"usage", id, "--json"});
  EXPECT_EQ(usage.exitCode, 0);
  EXPECT_EQ(agent.sbx({"kill", id}).exitCode, 0);
  EXPECT_TRUE(waitInfo(agent, id, "\"endReason\": \"killed\""));
}

TEST(Metering, CountsOnWhileTheAgentIsDownAndNothingTwice) {
  NODEAGENT_REQUIRE_ROOT();
  AgentProcess agent;
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  std::string id = agent.create({"--timeout", "120"});
  ASSERT_EQ(agent
                .sbx({"exec", id, "-d", "--", "python3", "-c",
                      "import time\nend = time.process_time() + 1.5\n"
                      "while time.process_time() < end: pass\n"})
                .exitCode,
            0);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_TRUE(waitStored(agent, id, api::SandboxState::RUNNING));
  agent.killHard();
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // most of the work runs now
  agent.startAgain();
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  // Until the worker (pid 2) has ended, should it still be running on a busy host.
  for (int i = 0; i < 200; ++i) {
    auto ps = agent.sbx({"ps", id, "--json"}).out;
    if (ps.find("\"running\": false") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  Cpu cpu = cpuOf(agent, id);
  ASSERT_GT(cpu.cgroup, 1'300'000'000u);
  EXPECT_NEAR(double(cpu.metered), double(cpu.cgroup), 0.02 * double(cpu.cgroup));
}

}  // namespace
}  // namespace nodeagent::testing
