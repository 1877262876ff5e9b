// What happens to sandboxes when the agent dies (needs root).
#include <fstream>

#include "e2e/agent_harness.h"
#include "support/privileged.h"

namespace nodeagent::testing {
namespace {

std::vector<pid_t> sandboxPids(AgentProcess& agent, const std::string& tenant,
                               const std::string& id) {
  std::vector<pid_t> pids;
  for (const char* hierarchy : {"pids", "unified"}) {
    std::ifstream in(agent.cgroupDir(hierarchy, tenant, id) + "/cgroup.procs");
    pid_t p;
    while (in >> p) pids.push_back(p);
    if (!pids.empty()) break;
  }
  return pids;
}

TEST(AgentRestart, KillingTheAgentKillsNoSandboxAndARestartLeavesNoLeak) {
  NODEAGENT_REQUIRE_ROOT();
  AgentProcess agent;
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  std::string id = agent.create();
  ASSERT_EQ(agent.sbx({"exec", id, "--", "sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo ok"}).out,
            "ok\n");
  auto pids = sandboxPids(agent, "e2e", id);
  ASSERT_GE(pids.size(), 2u);

  kill(agent.pid(), SIGKILL);
  usleep(200000);
  for (pid_t p : pids) {
    EXPECT_EQ(access(("/proc/" + std::to_string(p)).c_str(), F_OK), 0)
        << "the sandbox must outlive the agent";
  }

  // Until re-adoption exists, a restarted agent ends what it cannot serve,
  // records why, and leaks no process or cgroup.
  agent.restartHard();
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  auto info = agent.sbx({"info", id, "--json"});
  EXPECT_NE(info.out.find("\"endReason\": \"agent-restarted\""), std::string::npos)
      << info.out << info.err;
  for (pid_t p : pids) {
    bool gone = false;
    for (int i = 0; i < 100 && !gone; ++i) {
      std::ifstream status("/proc/" + std::to_string(p) + "/status");
      std::string line, state;
      while (std::getline(status, line)) {
        if (line.rfind("State:", 0) == 0) state = line;
      }
      gone = !status.is_open() || state.find('Z') != std::string::npos;
      if (!gone) usleep(20000);
    }
    EXPECT_TRUE(gone) << "pid " << p << " survived";
  }
  EXPECT_NE(access(agent.cgroupDir("pids", "e2e", id).c_str(), F_OK), 0);
  // And it serves new sandboxes.
  auto r = agent.sbx({"run", "--template", "python", "--", "echo", "again"});
  EXPECT_EQ(r.out, "again\n") << r.err;
}

}  // namespace
}  // namespace nodeagent::testing
