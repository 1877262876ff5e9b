// End to end through the real agent and the real sbx CLI (needs root).
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <thread>

#include "e2e/agent_harness.h"
#include "nodeagent/store.h"
#include "support/privileged.h"

namespace nodeagent::testing {
namespace {

class CliTest : public SharedAgentTest<CliTest> {};

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

TEST_F(CliTest, SocketIsPrivateToRoot) {
  struct stat st;
  ASSERT_EQ(stat(agent().socketPath().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // A second agent on the same socket refuses to start rather than steal it.
  auto second = runCommand({binDir() + "/nodeagent", "--state-dir", agent().dir() + "/state2",
                            "--listen", agent().target()});
  EXPECT_NE(second.exitCode, 0);
}

TEST_F(CliTest, ExitCodesAndSeparateStreams) {
  std::string id = agent().create();
  ASSERT_FALSE(id.empty());
  auto r = agent().sbx({"exec", id, "--", "sh", "-c", "echo out; echo err >&2; exit 3"});
  EXPECT_EQ(r.exitCode, 3);
  EXPECT_EQ(r.out, "out\n");
  EXPECT_EQ(r.err, "err\n");
  r = agent().sbx({"exec", id, "--", "true"});
  EXPECT_EQ(r.exitCode, 0);
  r = agent().sbx({"exec", id, "--", "sh", "-c", "kill -TERM $$"});
  EXPECT_EQ(r.exitCode, 128 + 15);
  EXPECT_EQ(agent().sbx({"kill", id}).exitCode, 0);
}

TEST_F(CliTest, PythonAndNodeRun) {
  std::string id = agent().create();
  auto r = agent().sbx({"exec", id, "--", "python3", "-c", "print(sum(range(10)))"});
  EXPECT_EQ(r.exitCode, 0) << r.err;
  EXPECT_EQ(r.out, "45\n");
  r = agent().sbx({"exec", id, "--", "node", "-e", "console.log(6*7)"});
  EXPECT_EQ(r.exitCode, 0) << r.err;
  EXPECT_EQ(r.out, "42\n");
  agent().sbx({"kill", id});
}

TEST_F(CliTest, StdinIsForwarded) {
  std::string id = agent().create();
  std::string input;
  for (int i = 0; i < 20000; ++i) input += "line " + std::to_string(i) + "\n";
  auto r = agent().sbx({"exec", id, "-i", "--", "python3", "-c",
                        "import sys,hashlib; d=sys.stdin.buffer.read(); "
                        "print(len(d), hashlib.sha256(d).hexdigest())"},
                       input);
  EXPECT_EQ(r.exitCode, 0) << r.err;
  auto local = runCommand({"/bin/sh", "-c", "sha256sum | cut -d' ' -f1"}, input);
  EXPECT_EQ(r.out, std::to_string(input.size()) + " " + local.out);
  agent().sbx({"kill", id});
}

TEST_F(CliTest, RunCreatesExecsAndKills) {
  auto before = agent().sbx({"ls"});
  auto r = agent().sbx({"run", "--template", "python", "--tenant", "e2e-run", "--", "python3", "-c",
                        "import os; print(os.getpid())"});
  EXPECT_EQ(r.exitCode, 0) << r.err;
  EXPECT_EQ(r.out, "2\n");  // init is 1; the command is its first child
  auto list = agent().sbx({"ls", "--tenant", "e2e-run"});
  EXPECT_EQ(list.out.find("running"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("stopped(killed)"), std::string::npos) << list.out;
}

TEST_F(CliTest, SandboxSeesItsOwnWorld) {
  std::string id = agent().create();
  auto r = agent().sbx({"exec", id, "--", "sh", "-c",
                        "hostname; ls /proc | grep -c '^[0-9]'; cat /etc/passwd | cut -d: -f1; "
                        "ls -A /home /root | wc -l; id -u"});
  EXPECT_EQ(r.exitCode, 0) << r.err;
  std::istringstream lines(r.out);
  std::string hostname, processes;
  std::getline(lines, hostname);
  std::getline(lines, processes);
  EXPECT_EQ(hostname, id);
  // init, sh, ls, grep (and possibly cut) — never the host's hundreds.
  EXPECT_LE(std::stoi(processes), 6);
  EXPECT_EQ(r.out.find("systemd"), std::string::npos);
  EXPECT_NE(r.out.find("root\n"), std::string::npos);
  EXPECT_EQ(trim(r.out).substr(trim(r.out).size() - 1), "0");  // uid 0 inside
  agent().sbx({"kill", id});
}

TEST_F(CliTest, FileRoundTripOf100MiB) {
  std::string id = agent().create({"--disk", "512M"});
  std::string local = agent().dir() + "/big.bin";
  {
    std::ofstream out(local, std::ios::binary);
    std::mt19937_64 rng(42);
    std::vector<uint64_t> chunk(1 << 17);
    for (int i = 0; i < 100; ++i) {  // 100 x 1 MiB
      for (auto& w : chunk) w = rng();
      out.write(reinterpret_cast<const char*>(chunk.data()), chunk.size() * 8);
    }
  }
  auto localSum = runCommand({"/bin/sh", "-c", "sha256sum " + local + " | cut -d' ' -f1"});
  auto up = agent().sbx({"cp", local, id + ":/tmp/big.bin"});
  ASSERT_EQ(up.exitCode, 0) << up.err;
  auto inside =
      agent().sbx({"exec", id, "--", "sh", "-c", "sha256sum /tmp/big.bin | cut -d' ' -f1"});
  EXPECT_EQ(inside.out, localSum.out);
  std::string back = agent().dir() + "/back.bin";
  auto down = agent().sbx({"cp", id + ":/tmp/big.bin", back});
  ASSERT_EQ(down.exitCode, 0) << down.err;
  auto backSum = runCommand({"/bin/sh", "-c", "sha256sum " + back + " | cut -d' ' -f1"});
  EXPECT_EQ(backSum.out, localSum.out);
  struct stat st;
  ASSERT_EQ(stat(back.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 100 << 20);
  unlink(local.c_str());
  unlink(back.c_str());
  agent().sbx({"kill", id});
}

TEST_F(CliTest, UploadedFileBelongsToTheTenant) {
  std::string id = agent().create();
  std::string local = agent().dir() + "/small.txt";
  { std::ofstream(local) << "hello sandbox\n"; }
  ASSERT_EQ(agent().sbx({"cp", local, id + ":/root/hello.txt"}).exitCode, 0);
  auto r = agent().sbx({"exec", id, "--", "sh", "-c",
                        "stat -c '%u %a' /root/hello.txt; cat /root/hello.txt; "
                        "echo more >> /root/hello.txt && echo appended"});
  EXPECT_EQ(r.out, "0 644\nhello sandbox\nappended\n") << r.err;
  agent().sbx({"kill", id});
}

TEST_F(CliTest, TimeoutKillsTheSandbox) {
  std::string id = agent().create({"--timeout", "2"});
  auto r = agent().sbx({"exec", id, "--", "sleep", "30"});
  EXPECT_EQ(r.exitCode, 128 + 9);
  auto info = agent().sbx({"info", id, "--json"});
  EXPECT_NE(info.out.find("\"endReason\": \"timeout\""), std::string::npos) << info.out << info.err;
  auto after = agent().sbx({"exec", id, "--", "true"});
  EXPECT_NE(after.exitCode, 0);
  EXPECT_NE(after.err.find("notRunning"), std::string::npos) << after.err;
}

std::vector<pid_t> cgroupPids(AgentProcess& agent, const std::string& id) {
  std::vector<pid_t> pids;
  for (const char* hierarchy : {"pids", "unified"}) {
    std::ifstream in(agent.cgroupDir(hierarchy, "e2e", id) + "/cgroup.procs");
    pid_t p;
    while (in >> p) pids.push_back(p);
    if (!pids.empty()) break;
  }
  return pids;
}

TEST_F(CliTest, KilledSandboxLeavesNoProcess) {
  std::string id = agent().create();
  // Background processes that outlive the exec, one of them double-forked.
  auto r = agent().sbx({"exec", id, "--", "sh", "-c",
                        "sleep 1000 >/dev/null 2>&1 & (setsid sleep 1001 >/dev/null 2>&1 &) ; "
                        "echo started"});
  EXPECT_EQ(r.out, "started\n");
  std::vector<pid_t> pids = cgroupPids(agent(), id);
  ASSERT_GE(pids.size(), 3u) << "init and two sleeps expected";
  ASSERT_EQ(agent().sbx({"kill", id}).exitCode, 0);
  // Doomed when the kill answers; gone as soon as the kernel has torn them down.
  for (pid_t p : pids) {
    EXPECT_TRUE(waitGone("/proc/" + std::to_string(p))) << "pid " << p << " lives";
  }
  EXPECT_TRUE(waitGone(agent().cgroupDir("pids", "e2e", id)));
  EXPECT_TRUE(waitGone(agent().cgroupDir("unified", "e2e", id)));
}

TEST_F(CliTest, ListInfoUsageAsJson) {
  std::string id = agent().create({"--memory", "256M", "--cpus", "0.5"});
  agent().sbx({"exec", id, "--", "python3", "-c", "sum(range(3000000))"});
  auto info = agent().sbx({"info", id, "--json"});
  EXPECT_EQ(info.exitCode, 0);
  EXPECT_NE(info.out.find("\"memoryBytes\": \"268435456\""), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("\"cpuMillis\": 500"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("\"state\": \"running\""), std::string::npos) << info.out;
  auto usage = agent().sbx({"usage", id, "--json"});
  EXPECT_EQ(usage.exitCode, 0);
  EXPECT_NE(usage.out.find("\"cpuUserNs\""), std::string::npos) << usage.out;
  EXPECT_EQ(usage.out.find("\"cpuUserNs\": \"0\""), std::string::npos) << usage.out;
  auto ls = agent().sbx({"ls", "--json"});
  EXPECT_NE(ls.out.find(id), std::string::npos);
  agent().sbx({"kill", id});
}

TEST_F(CliTest, BadInputGetsTypedErrors) {
  auto r = agent().sbx({"create", "--template", "cobol"});
  EXPECT_NE(r.exitCode, 0);
  EXPECT_NE(r.err.find("unknownTemplate"), std::string::npos) << r.err;
  r = agent().sbx({"exec", "sbx-doesnotexist", "--", "true"});
  EXPECT_NE(r.exitCode, 0);
  EXPECT_NE(r.err.find("notFound"), std::string::npos) << r.err;
  r = agent().sbx({"create", "--template", "python", "--tenant", "../evil"});
  EXPECT_NE(r.err.find("invalidArgument"), std::string::npos) << r.err;
  r = agent().sbx({"create", "--template", "python", "--memory", "lots"});
  EXPECT_NE(r.exitCode, 0);
  EXPECT_NE(r.err.find("not a size"), std::string::npos) << r.err;

  std::string id = agent().create();
  r = agent().sbx({"exec", id, "--", "/no/such/binary"});
  EXPECT_NE(r.exitCode, 0);
  EXPECT_NE(r.err.find("/no/such/binary"), std::string::npos) << r.err;
  // The agent is still serving.
  EXPECT_EQ(agent().sbx({"exec", id, "--", "true"}).exitCode, 0);
  agent().sbx({"kill", id});
}

TEST_F(CliTest, PathsNeverEscapeTheSandbox) {
  // A file on the host that a tenant would love to read.
  std::string secret = agent().dir() + "/host-secret";
  { std::ofstream(secret) << "HOST SECRET\n"; }
  std::string id = agent().create();
  std::string out = agent().dir() + "/escaped";

  auto r = agent().sbx({"cp", id + ":../../../../" + secret, out});
  EXPECT_NE(r.exitCode, 0);
  EXPECT_NE(r.err.find("invalidPath"), std::string::npos) << r.err;

  // Absolute paths are the sandbox's own: the host file is not there.
  r = agent().sbx({"cp", id + ":" + secret, out});
  EXPECT_NE(r.err.find("notFound"), std::string::npos) << r.err;

  // A symlink planted inside the sandbox, pointing at the host file, and one
  // climbing out with "..": both resolve inside the sandbox root.
  agent().sbx({"exec", id, "--", "sh", "-c",
               "ln -s " + secret + " /tmp/abs && ln -s ../../../../../" + secret +
                   " /tmp/rel && ln -s /proc/1/root/etc/hostname /tmp/magic"});
  for (const char* link : {"/tmp/abs", "/tmp/rel"}) {
    r = agent().sbx({"cp", id + ":" + link, out});
    EXPECT_NE(r.exitCode, 0) << link;
    EXPECT_NE(r.err.find("notFound"), std::string::npos) << link << r.err;
  }
  r = agent().sbx({"cp", id + ":/tmp/magic", out});
  EXPECT_NE(r.exitCode, 0);
  EXPECT_NE(r.err.find("invalidPath"), std::string::npos) << r.err;
  EXPECT_NE(access(out.c_str(), F_OK), 0) << "nothing may have been written";

  // Uploading onto a planted symlink replaces the link, never the host file.
  std::string payload = agent().dir() + "/payload";
  { std::ofstream(payload) << "overwritten\n"; }
  r = agent().sbx({"cp", payload, id + ":/tmp/abs"});
  EXPECT_EQ(r.exitCode, 0) << r.err;
  EXPECT_EQ(readFile(secret), "HOST SECRET\n");
  r = agent().sbx({"exec", id, "--", "cat", "/tmp/abs"});
  EXPECT_EQ(r.out, "overwritten\n");

  // Kernel interfaces are not files to move: the agent would read them with
  // its own eyes (e.g. real kernel addresses in kallsyms).
  for (const char* special : {"/proc/kallsyms", "/proc/1/status", "/proc/1/environ"}) {
    r = agent().sbx({"cp", id + ":" + special, out});
    EXPECT_NE(r.exitCode, 0) << special;
    EXPECT_NE(r.err.find("invalidPath"), std::string::npos) << special << r.err;
  }
  r = agent().sbx({"cp", id + ":/dev/zero", out});
  EXPECT_NE(r.err.find("invalidPath"), std::string::npos) << r.err;

  // A fifo does not block the agent.
  agent().sbx({"exec", id, "--", "mkfifo", "/tmp/fifo"});
  r = agent().sbx({"cp", id + ":/tmp/fifo", out});
  EXPECT_NE(r.err.find("invalidPath"), std::string::npos) << r.err;
  agent().sbx({"kill", id});
}

// A hard link the tenant would plant to a host file: the kernel refuses one
// to a file the sandbox's root does not own (protected_hardlinks) or on
// another mount; one the host allows would name the sandbox's own copy (its
// layer copies the file up first). Either way an upload onto the name
// replaces the link, and the host's file stays as it was.
TEST_F(CliTest, PlantedHardLinksNeverReachTheHostsFiles) {
  std::string id = agent().create();
  std::string hostTrue = readFile("/usr/bin/true");
  ASSERT_FALSE(hostTrue.empty());
  auto r = agent().sbx({"exec", id, "--", "ln", "/usr/bin/true", "/usr/local/link"});
  if (r.exitCode != 0) {
    EXPECT_NE(r.err.find("Operation not permitted"), std::string::npos) << r.err;
  }
  r = agent().sbx({"exec", id, "--", "ln", "/usr/bin/true", "/tmp/link"});
  EXPECT_NE(r.exitCode, 0);
  EXPECT_TRUE(r.err.find("Invalid cross-device link") != std::string::npos ||
              r.err.find("Operation not permitted") != std::string::npos)
      << r.err;
  // A hard link to its own file is the tenant's business.
  r = agent().sbx({"exec", id, "--", "sh", "-c",
                   "echo mine > /tmp/own && ln /tmp/own /tmp/own-link && stat -c %h /tmp/own"});
  ASSERT_EQ(r.out, "2\n") << r.err;

  std::string payload = agent().dir() + "/hardlink-payload";
  { std::ofstream(payload) << "replaced\n"; }
  r = agent().sbx({"cp", payload, id + ":/tmp/own-link"});
  EXPECT_EQ(r.exitCode, 0) << r.err;
  EXPECT_EQ(agent().sbx({"exec", id, "--", "cat", "/tmp/own-link"}).out, "replaced\n");
  // The agent writes as the tenant: not where the tenant may not.
  r = agent().sbx({"cp", payload, id + ":/usr/bin/true"});
  EXPECT_NE(r.err.find("invalidPath"), std::string::npos) << r.err;
  // The upload replaced the name; the other name keeps the old file.
  EXPECT_EQ(agent().sbx({"exec", id, "--", "cat", "/tmp/own"}).out, "mine\n");
  EXPECT_EQ(agent().sbx({"exec", id, "--", "/usr/bin/true"}).exitCode, 0);
  EXPECT_EQ(readFile("/usr/bin/true"), hostTrue);
  agent().sbx({"kill", id});
}

// The tenant swaps a directory for a symlink to a host directory, over and
// over, while files are uploaded into it: every upload lands inside the
// sandbox or fails cleanly, and nothing appears on the host.
TEST_F(CliTest, APathSwapDuringUploadsNeverReachesTheHost) {
  std::string id = agent().create();
  std::string hostDir = agent().dir() + "/swap-target";
  ASSERT_EQ(mkdir(hostDir.c_str(), 0777), 0);
  auto r = agent().sbx({"exec", id, "-d", "--", "sh", "-c",
                        "mkdir -p /tmp/swap/d && cd /tmp/swap && while [ ! -e /tmp/stop ]; do "
                        "mv d real; ln -s " +
                            hostDir + " d; rm d; mv real d; done; touch /tmp/stopped"});
  ASSERT_EQ(r.exitCode, 0) << r.err;
  std::string payload = agent().dir() + "/swap-payload";
  { std::ofstream(payload) << "payload\n"; }
  int landed = 0, refused = 0;
  for (int i = 0; i < 60; ++i) {
    r = agent().sbx({"cp", payload, id + ":/tmp/swap/d/f" + std::to_string(i)});
    if (r.exitCode == 0) {
      ++landed;
    } else {
      ++refused;
      EXPECT_TRUE(r.err.find("notFound") != std::string::npos ||
                  r.err.find("invalidPath") != std::string::npos)
          << r.err;
    }
  }
  // The swap raced the uploads both ways (a quarter of the time d is a link).
  EXPECT_GT(landed, 0);
  EXPECT_GT(refused, 0);
  DIR* dir = opendir(hostDir.c_str());
  ASSERT_NE(dir, nullptr);
  int onHost = 0;
  while (dirent* e = readdir(dir)) onHost += e->d_name[0] != '.';
  closedir(dir);
  EXPECT_EQ(onHost, 0) << "an upload followed the swap out of the sandbox";
  // What landed is in the sandbox, and the agent still serves.
  r = agent().sbx({"exec", id, "--", "sh", "-c",
                   "touch /tmp/stop; while [ ! -e /tmp/stopped ]; do sleep 0.01; done; "
                   "cat /tmp/swap/d/f* | wc -l"});
  EXPECT_EQ(r.out, std::to_string(landed) + "\n") << r.err;
  agent().sbx({"kill", id});
}

// The agent's socket is a host path: the sandbox has its own root, and its
// own network namespace for abstract sockets.
TEST_F(CliTest, TheAgentsSocketIsOutOfReach) {
  std::string id = agent().create();
  auto r = agent().sbx({"exec", id, "--", "python3", "-c",
                        "import socket, sys\n"
                        "s = socket.socket(socket.AF_UNIX)\n"
                        "try:\n"
                        "  s.connect(sys.argv[1]); print('connected')\n"
                        "except OSError as e: print(e.errno)\n",
                        agent().socketPath()});
  EXPECT_EQ(r.out, std::to_string(ENOENT) + "\n") << r.err;
  agent().sbx({"kill", id});
}

TEST_F(CliTest, DrainingRefusesCreatesAndKeepsServing) {
  std::string id = agent().create();
  ASSERT_EQ(agent().sbx({"drain"}).exitCode, 0);
  auto refused = agent().sbx({"create", "--template", "python", "--tenant", "e2e"});
  EXPECT_NE(refused.exitCode, 0);
  EXPECT_NE(refused.err.find("unavailable"), std::string::npos) << refused.err;
  EXPECT_EQ(agent().sbx({"exec", id, "--", "echo", "still"}).out, "still\n");
  EXPECT_NE(agent().sbx({"node", "--json"}).out.find("\"draining\": true"), std::string::npos);
  // Waiting for the live ones to finish: given up after the timeout while
  // one runs, done once it has ended.
  auto lone = agent().sbx({"drain", "--timeout", "5"});
  EXPECT_NE(lone.err.find("--timeout goes with --wait"), std::string::npos) << lone.err;
  auto waited = agent().sbx({"drain", "--wait", "--timeout", "1"});
  EXPECT_EQ(waited.exitCode, 1);
  EXPECT_NE(waited.err.find("still live after 1 s"), std::string::npos) << waited.err;
  std::thread finisher([&]() {
    usleep(500000);
    runCommand({binDir() + "/sbx", "--connect", agent().target(), "kill", id});
  });
  auto start = std::chrono::steady_clock::now();
  waited = agent().sbx({"drain", "--wait", "--timeout", "30"});
  finisher.join();
  EXPECT_EQ(waited.exitCode, 0) << waited.err;
  EXPECT_NE(waited.err.find("drained"), std::string::npos) << waited.err;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  ASSERT_EQ(agent().sbx({"drain", "--off"}).exitCode, 0);
  EXPECT_NE(agent().sbx({"node", "--json"}).out.find("\"draining\": false"), std::string::npos);
  std::string again = agent().create();
  EXPECT_FALSE(again.empty());
  agent().sbx({"kill", again});
}

TEST_F(CliTest, AuditLogRecordsAdminActions) {
  std::string id = agent().create();
  ASSERT_EQ(agent().sbx({"kill", id}).exitCode, 0);
  // The agent's LMDB store, read by a second process as an operator would.
  auto store = Store::open((agent().dir() + "/state").c_str());
  // The agent commits on a writer thread: the end of the sandbox lands
  // within moments of kill returning.
  for (int i = 0; i < 100; ++i) {
    auto record = store->getSandbox(id.c_str());
    bool stopped = false;
    KJ_IF_MAYBE (r, record) {
      stopped = (*r)->get().getState() == api::SandboxState::STOPPED;
    }
    if (stopped) break;
    usleep(20000);
  }
  bool sawConfig = false, sawCreate = false, sawKill = false, sawEnd = false;
  uint64_t lastSeq = 0;
  for (auto& stored : store->readAudit(0, 100000)) {
    auto e = stored->get();
    EXPECT_GT(e.getSeq(), lastSeq);
    lastSeq = e.getSeq();
    if (e.getAction() == "config") sawConfig = true;
    if (e.getSandboxId() != id.c_str()) continue;
    if (e.getAction() == "create") {
      sawCreate = true;
      EXPECT_TRUE(e.getActor().startsWith("unix:uid=0")) << e.getActor().cStr();
      EXPECT_EQ(e.getTenant(), "e2e");
    }
    if (e.getAction() == "kill") sawKill = true;
    if (e.getAction() == "end") {
      sawEnd = true;
      EXPECT_EQ(e.getDetail(), "reason=killed");
    }
  }
  EXPECT_TRUE(sawConfig && sawCreate && sawKill && sawEnd);
  auto record = store->getSandbox(id.c_str());
  ASSERT_TRUE(record != nullptr);
  KJ_IF_MAYBE (r, record) {
    EXPECT_EQ((*r)->get().getState(), api::SandboxState::STOPPED);
    EXPECT_EQ((*r)->get().getEndReason(), "killed");
  }
}

}  // namespace
}  // namespace nodeagent::testing
