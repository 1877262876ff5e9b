// Sandboxes survive the agent (needs root): kill -9 the agent while 50
// sandboxes run processes that keep writing, start it again, and everything is
// re-adopted from LMDB, the cgroup tree and each init's control socket.
#include <dirent.h>

#include <chrono>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include <capnp/message.h>

#include "e2e/agent_harness.h"
#include "support/privileged.h"

namespace nodeagent::testing {
namespace {

constexpr int kSandboxes = 50;
const char kTicker[] = "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.05; done";

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::vector<pid_t> cgroupPids(AgentProcess& agent, const std::string& tenant,
                              const std::string& id) {
  std::vector<pid_t> pids;
  std::ifstream in(agent.cgroupDir("pids", tenant, id) + "/cgroup.procs");
  pid_t p;
  while (in >> p) pids.push_back(p);
  return pids;
}

// The sandbox's init: the member of its cgroup whose command is nodeagent-init.
pid_t initPid(AgentProcess& agent, const std::string& id) {
  for (pid_t p : cgroupPids(agent, "e2e", id)) {
    if (trim(readFile("/proc/" + std::to_string(p) + "/comm")) == "nodeagent-init") return p;
  }
  return -1;
}

// The host pid of the process that is `inner` in the sandbox's pid namespace.
pid_t hostPidOf(AgentProcess& agent, const std::string& id, int inner) {
  for (pid_t p : cgroupPids(agent, "e2e", id)) {
    std::istringstream status(readFile("/proc/" + std::to_string(p) + "/status"));
    std::string line;
    while (std::getline(status, line)) {
      if (line.rfind("NSpid:", 0) != 0) continue;
      std::istringstream ids(line.substr(6));
      std::vector<int> levels;
      int v;
      while (ids >> v) levels.push_back(v);
      if (levels.size() >= 2 && levels.back() == inner) return p;
    }
  }
  return -1;
}

// Sandboxes (cgroup directories) the agent's tree holds for tenant e2e.
std::set<std::string> sandboxCgroups(AgentProcess& agent) {
  std::set<std::string> ids;
  std::string dir = "/sys/fs/cgroup/pids/" + agent.cgroupRoot() + "/sandboxes/e2e";
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      if (std::string(e->d_name).rfind("sbx-", 0) == 0) ids.insert(e->d_name);
    }
    closedir(d);
  }
  return ids;
}

// stdoutBytes of `pid` in `sbx ps ID --json`, or -1 if it is not listed as running.
long runningStdoutBytes(const std::string& psJson, int pid) {
  std::regex entry("\\{\\s*\"pid\": " + std::to_string(pid) +
                   ",[^{}]*\"running\": true,[^{}]*\"stdoutBytes\": \"([0-9]+)\"");
  std::smatch m;
  if (!std::regex_search(psJson, m, entry)) return -1;
  return std::stol(m[1]);
}

long lastTick(const std::string& output) {
  long last = -1;
  std::regex tick("tick ([0-9]+)");
  for (auto it = std::sregex_iterator(output.begin(), output.end(), tick);
       it != std::sregex_iterator(); ++it) {
    last = std::stol((*it)[1]);
  }
  return last;
}

uint64_t jsonNumber(const std::string& json, const std::string& key) {
  std::smatch m;
  if (!std::regex_search(json, m, std::regex("\"" + key + "\": \"?([0-9]+)"))) return 0;
  return std::stoull(m[1]);
}

TEST(AgentRestart, FiftySandboxesAreReadoptedAfterKillDashNine) {
  NODEAGENT_REQUIRE_ROOT();
  AgentProcess agent;
  ASSERT_TRUE(agent.waitReady()) << agent.log();

  std::vector<std::string> ids;
  for (int i = 0; i < kSandboxes; ++i) {
    ids.push_back(agent.create({"--timeout", "600"}));
    ASSERT_FALSE(ids.back().empty());
    auto r = agent.sbx({"exec", ids.back(), "-d", "--", "sh", "-c", kTicker});
    ASSERT_EQ(trim(r.out), "2") << r.err;
  }
  // Special cases: a process that ends while no agent runs, one whose exec
  // timeout fires after the restart, a paused sandbox, and one whose own
  // lifetime runs out after the restart.
  // (It ends with code 7 when the test sends it SIGTERM from the host, once
  // the agent is down.)
  auto r = agent.sbx(
      {"exec", ids[0], "-d", "--", "sh", "-c", "trap 'exit 7' TERM; while :; do sleep 0.05; done"});
  ASSERT_EQ(r.exitCode, 0) << r.err;
  int exitsWhileDown = std::stoi(r.out);
  r = agent.sbx({"exec", ids[1], "-d", "--exec-timeout", "4", "--", "sleep", "1000"});
  ASSERT_EQ(r.exitCode, 0) << r.err;
  int timesOutLater = std::stoi(r.out);
  ASSERT_EQ(agent.sbx({"pause", ids[2]}).exitCode, 0);
  std::string expiring = agent.create({"--timeout", "5"});
  ASSERT_EQ(agent.sbx({"exec", expiring, "-d", "--", "sh", "-c", kTicker}).exitCode, 0);
  ASSERT_EQ(agent.sbx({"cp", "/etc/hostname", ids[3] + ":/tmp/before"}).exitCode, 0);
  // CPU that a double count would show: half a second of CPU time (not of
  // the clock: other tests may share the CPUs), in a sandbox that then idles.
  std::string burner = agent.create();
  ASSERT_EQ(agent
                .sbx({"exec", burner, "--", "python3", "-c",
                      "import time\nt = time.process_time()\n"
                      "while time.process_time() - t < 0.5: pass"})
                .exitCode,
            0);

  auto tickBefore = runCommand({"/usr/bin/timeout", "0.5", binDir() + "/sbx", "--connect",
                                agent.target(), "attach", ids[4], "2"});
  long ticksBefore = lastTick(tickBefore.out);
  ASSERT_GT(ticksBefore, 0) << tickBefore.out << tickBefore.err;
  auto cpuOf = [&](const std::string& id) {
    auto usage = agent.sbx({"usage", id, "--json"}).out;
    return jsonNumber(usage, "cpuSystemNs") + jsonNumber(usage, "cpuUserNs");
  };
  uint64_t cpuBefore = cpuOf(burner);
  ASSERT_GT(cpuBefore, 450000000u) << agent.sbx({"usage", burner}).out;
  // The tickers' sandboxes, the expiring one and the burner.
  constexpr int kLive = kSandboxes + 2;
  ASSERT_EQ(jsonNumber(agent.sbx({"node", "--json"}).out, "sandboxes"), uint64_t(kLive));
  auto cgroupsBefore = sandboxCgroups(agent);
  ASSERT_EQ(cgroupsBefore.size(), size_t(kLive));
  std::map<std::string, pid_t> initsBefore;
  for (auto& id : cgroupsBefore) initsBefore[id] = initPid(agent, id);

  for (auto& id : cgroupsBefore) {
    ASSERT_TRUE(waitStored(agent, id,
                           id == ids[2] ? api::SandboxState::PAUSED : api::SandboxState::RUNNING))
        << id;
  }
  agent.killHard();
  pid_t endsWhileDown = hostPidOf(agent, ids[0], exitsWhileDown);
  ASSERT_GT(endsWhileDown, 0);
  ASSERT_EQ(kill(endsWhileDown, SIGTERM), 0);
  // Long enough for it to end and for the output pipes to fill.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  for (auto& [id, pid] : initsBefore) {
    EXPECT_EQ(access(("/proc/" + std::to_string(pid)).c_str(), F_OK), 0)
        << id << ": the sandbox must outlive the agent";
  }
  agent.startAgain();
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  EXPECT_NE(agent.log().find("\"event\":\"agent.adopted\",\"adopted\":" + std::to_string(kLive)),
            std::string::npos)
      << agent.log();

  // The same sandboxes, each once, with the same inits: nothing relaunched,
  // nothing leaked.
  auto list = agent.sbx({"ls", "--tenant", "e2e"});
  for (auto& id : cgroupsBefore) {
    size_t first = list.out.find(id);
    EXPECT_NE(first, std::string::npos) << id << "\n" << list.out;
    EXPECT_EQ(list.out.find(id, first + 1), std::string::npos) << id << " listed twice";
  }
  EXPECT_EQ(sandboxCgroups(agent), cgroupsBefore);
  for (auto& [id, pid] : initsBefore) EXPECT_EQ(initPid(agent, id), pid) << id;

  // The node counts each live sandbox once (the short-lived one may have
  // expired by now).
  {
    std::string listed = agent.sbx({"ls", "--json"}).out;
    std::regex live("\"state\":\\s*\"(running|paused)\"");
    auto count = std::distance(std::sregex_iterator(listed.begin(), listed.end(), live),
                               std::sregex_iterator());
    EXPECT_GE(count, kSandboxes) << listed;
    EXPECT_EQ(jsonNumber(agent.sbx({"node", "--json"}).out, "sandboxes"), uint64_t(count));
  }

  // Every ticker still runs and its output flows to the new agent: more of it
  // a moment later.
  std::vector<long> firstBytes(kSandboxes, -1);
  for (int i = 0; i < kSandboxes; ++i) {
    if (i == 2) continue;  // paused
    firstBytes[size_t(i)] = runningStdoutBytes(agent.sbx({"ps", ids[i], "--json"}).out, 2);
    EXPECT_GE(firstBytes[size_t(i)], 0) << ids[i] << ": ticker not running after the restart";
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  for (int i = 0; i < kSandboxes; ++i) {
    if (i == 2) continue;
    auto ps = agent.sbx({"ps", ids[i], "--json"}).out;
    EXPECT_GT(runningStdoutBytes(ps, 2), firstBytes[size_t(i)])
        << ids[i] << ": no output since the restart\n"
        << ps;
  }
  auto attached = runCommand({"/usr/bin/timeout", "0.5", binDir() + "/sbx", "--connect",
                              agent.target(), "attach", ids[4], "2"});
  EXPECT_GT(lastTick(attached.out), ticksBefore) << attached.out << attached.err;

  // exec and files work everywhere.
  for (int i = 0; i < kSandboxes; ++i) {
    if (i == 2) continue;
    auto e = agent.sbx({"exec", ids[i], "--", "echo", "ok"});
    EXPECT_EQ(e.out, "ok\n") << ids[i] << ": " << e.err;
  }
  auto got = agent.sbx({"exec", ids[3], "--", "cat", "/tmp/before"});
  EXPECT_EQ(got.out, readFile("/etc/hostname"));
  std::string local = agent.dir() + "/roundtrip";
  EXPECT_EQ(agent.sbx({"cp", ids[3] + ":/tmp/before", local}).exitCode, 0);
  EXPECT_EQ(readFile(local), readFile("/etc/hostname"));

  // The process that ended while no agent ran reports how it ended.
  auto ps0 = agent.sbx({"ps", ids[0], "--json"}).out;
  EXPECT_TRUE(std::regex_search(
      ps0, std::regex("\\{\\s*\"pid\": " + std::to_string(exitsWhileDown) +
                      ",[^{}]*\"running\": false,\\s*\"status\": \\{\"reason\": \"exited\", "
                      "\"code\": 7")))
      << ps0;

  // CPU is the cgroup's: it carries on, neither reset nor counted twice. The
  // burner has idled since; a second count of its half second before would
  // add that half second again.
  uint64_t cpuAfter = cpuOf(burner);
  EXPECT_GE(cpuAfter, cpuBefore);
  EXPECT_LT(cpuAfter - cpuBefore, cpuBefore / 2) << agent.sbx({"usage", burner}).out;

  // The paused sandbox stayed paused, and resumes with its processes.
  EXPECT_NE(agent.sbx({"info", ids[2], "--json"}).out.find("\"state\": \"paused\""),
            std::string::npos);
  auto paused = agent.sbx({"ps", ids[2]});
  EXPECT_NE(paused.exitCode, 0);
  EXPECT_NE(paused.err.find("unavailable"), std::string::npos) << paused.err;
  auto pausedUsage = agent.sbx({"usage", ids[2], "--json"}).out;
  EXPECT_GE(jsonNumber(pausedUsage, "wallPausedNs"), 1500000000u) << pausedUsage;
  ASSERT_EQ(agent.sbx({"resume", ids[2]}).exitCode, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_GT(runningStdoutBytes(agent.sbx({"ps", ids[2], "--json"}).out, 2), 0);

  // Timeouts armed before the restart still fire: the exec's and the sandbox's.
  bool timedOut = false, expired = false;
  for (int i = 0; i < 100 && !(timedOut && expired); ++i) {
    auto ps1 = agent.sbx({"ps", ids[1], "--json"}).out;
    timedOut =
        std::regex_search(ps1, std::regex("\\{\\s*\"pid\": " + std::to_string(timesOutLater) +
                                          ",[^{}]*\"status\": \\{\"reason\": \"timeout\""));
    auto info = agent.sbx({"info", expiring, "--json"}).out;
    expired = info.find("\"endReason\": \"timeout\"") != std::string::npos;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(timedOut) << agent.sbx({"ps", ids[1]}).out;
  EXPECT_TRUE(expired) << agent.sbx({"info", expiring}).out;

  // A new sandbox gets a uid range of its own: the adopted ones are taken.
  std::string fresh = agent.create();
  ASSERT_FALSE(fresh.empty());
  std::set<std::string> uidRanges;
  for (auto& id : sandboxCgroups(agent)) {
    pid_t p = initPid(agent, id);
    ASSERT_GT(p, 0) << id;
    std::istringstream map(readFile("/proc/" + std::to_string(p) + "/uid_map"));
    std::string inside, outside;
    map >> inside >> outside;
    EXPECT_TRUE(uidRanges.insert(outside).second) << id << " shares host uid " << outside;
  }

  // Killing them all leaves nothing behind: no cgroup, no init, no socket.
  for (auto& id : sandboxCgroups(agent)) agent.sbx({"kill", id});
  for (int i = 0; i < 100 && !sandboxCgroups(agent).empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(sandboxCgroups(agent).empty());
  for (auto& [id, pid] : initsBefore) {
    std::string status = readFile("/proc/" + std::to_string(pid) + "/status");
    EXPECT_TRUE(status.empty() || status.find("State:\tZ") != std::string::npos)
        << id << ": init " << pid << " survived";
  }
  std::string controlDir = agent.dir() + "/state/control";
  size_t sockets = 0;
  if (DIR* d = opendir(controlDir.c_str())) {
    while (dirent* e = readdir(d)) sockets += e->d_name[0] != '.';
    closedir(d);
  }
  EXPECT_EQ(sockets, 0u);
}

TEST(AgentRestart, ASandboxWhoseInitDiedWhileTheAgentWasDownIsEndedCleanly) {
  NODEAGENT_REQUIRE_ROOT();
  AgentProcess agent;
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  std::string id = agent.create();
  pid_t init = initPid(agent, id);
  ASSERT_GT(init, 0);
  ASSERT_TRUE(waitStored(agent, id, api::SandboxState::RUNNING));
  agent.killHard();
  kill(init, SIGKILL);
  for (int i = 0; i < 100 && initPid(agent, id) > 0; ++i) usleep(10000);
  agent.startAgain();
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  auto info = agent.sbx({"info", id, "--json"});
  EXPECT_NE(info.out.find("\"endReason\": \"lost-on-restart\""), std::string::npos)
      << info.out << info.err;
  EXPECT_TRUE(waitGone(agent.cgroupDir("pids", "e2e", id)));
  auto again = agent.sbx({"run", "--template", "python", "--", "echo", "again"});
  EXPECT_EQ(again.out, "again\n") << again.err;
}

// A record written before burst credit existed has no bucket size (0, which
// means the template's): the next agent adopts it with the template's
// bucket, a tenth full, at the burst, not held at the sustained share.
TEST(AgentRestart, ASandboxFromBeforeBurstCreditGetsItsTemplatesBucket) {
  NODEAGENT_REQUIRE_ROOT();
  AgentProcess agent;
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  std::string id = agent.create();
  ASSERT_TRUE(waitStored(agent, id, api::SandboxState::RUNNING));
  agent.killHard();
  {
    auto store = Store::open((agent.dir() + "/state").c_str());
    auto stored = KJ_ASSERT_NONNULL(store->getSandbox(id.c_str()));
    capnp::MallocMessageBuilder old;
    old.setRoot(stored->get());
    old.getRoot<state::SandboxRecord>().getSpec().setCpuBurstSeconds(0);
    store->putSandbox(old.getRoot<state::SandboxRecord>().asReader());
  }
  agent.startAgain();
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  auto usage = agent.sbx({"usage", id, "--json"}).out;
  EXPECT_EQ(jsonNumber(usage, "cpuQuotaMillis"), 1000u) << usage;
  // A tenth of 0.75 CPU for 30 s: 2.25 s of credit.
  uint64_t credit = jsonNumber(usage, "cpuCreditNs");
  EXPECT_GE(credit, 2200000000u) << usage;
  EXPECT_LE(credit, 2400000000u) << usage;
  agent.sbx({"kill", id});
}

}  // namespace
}  // namespace nodeagent::testing
