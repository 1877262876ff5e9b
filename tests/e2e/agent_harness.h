// Runs the real nodeagent binary on a temporary state dir and socket, and the
// real sbx CLI against it.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "nodeagent/store.h"
#include "support/privileged.h"

extern char** environ;

namespace nodeagent::testing {

inline std::string binDir() {
  const char* dir = getenv("NODEAGENT_BIN_DIR");
  return dir ? dir : "build/bin";
}

struct CommandResult {
  int exitCode = -1;
  std::string out;
  std::string err;
};

// Runs argv with `input` on stdin; collects stdout and stderr separately.
inline CommandResult runCommand(const std::vector<std::string>& argv, const std::string& input = "",
                                const std::vector<std::string>& extraEnv = {}) {
  int inPipe[2], outPipe[2], errPipe[2];
  EXPECT_EQ(pipe2(inPipe, O_CLOEXEC), 0);
  EXPECT_EQ(pipe2(outPipe, O_CLOEXEC), 0);
  EXPECT_EQ(pipe2(errPipe, O_CLOEXEC), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0);
  posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2);
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<std::string> envStrings;
  for (char** e = environ; *e; ++e) envStrings.push_back(*e);
  for (auto& e : extraEnv) envStrings.push_back(e);
  std::vector<char*> env;
  for (auto& e : envStrings) env.push_back(const_cast<char*>(e.c_str()));
  env.push_back(nullptr);
  pid_t pid;
  int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), env.data());
  posix_spawn_file_actions_destroy(&actions);
  close(inPipe[0]);
  close(outPipe[1]);
  close(errPipe[1]);
  CommandResult result;
  if (rc != 0) {
    close(inPipe[1]);
    close(outPipe[0]);
    close(errPipe[0]);
    result.err = "spawn failed";
    return result;
  }
  size_t written = 0;
  int inFd = inPipe[1];
  if (input.empty()) {
    close(inFd);
    inFd = -1;
  } else {
    fcntl(inFd, F_SETFL, O_NONBLOCK);
  }
  int fds[2] = {outPipe[0], errPipe[0]};
  std::string* sinks[2] = {&result.out, &result.err};
  bool open[2] = {true, true};
  char buf[65536];
  while (open[0] || open[1]) {
    struct pollfd pfds[3];
    int n = 0;
    int map[3];
    for (int i = 0; i < 2; ++i) {
      if (open[i]) {
        pfds[n] = {fds[i], POLLIN, 0};
        map[n++] = i;
      }
    }
    if (inFd >= 0) {
      pfds[n] = {inFd, POLLOUT, 0};
      map[n++] = 2;
    }
    poll(pfds, n, -1);
    for (int k = 0; k < n; ++k) {
      if (!pfds[k].revents) continue;
      int i = map[k];
      if (i == 2) {
        ssize_t w = write(inFd, input.data() + written, input.size() - written);
        if (w > 0) written += size_t(w);
        if (w < 0 || written == input.size()) {
          close(inFd);
          inFd = -1;
        }
        continue;
      }
      ssize_t r = read(fds[i], buf, sizeof(buf));
      if (r <= 0) {
        open[i] = false;
        close(fds[i]);
      } else {
        sinks[i]->append(buf, size_t(r));
      }
    }
  }
  if (inFd >= 0) close(inFd);
  int status = 0;
  waitpid(pid, &status, 0);
  result.exitCode = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

// One agent process for a test suite.
// Whether `path` disappears within `timeoutMs`. A killed sandbox's cgroups and
// mounts are released just after the kill is answered.
// The whole file, or what could be read of it ("" if nothing). A read error
// (a /proc file of a task that died meanwhile: ESRCH) ends it, never throws.
inline std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream out;
  out << in.rdbuf();
  return out.str();
}

inline bool waitGone(const std::string& path, int timeoutMs = 2000) {
  for (int waited = 0; access(path.c_str(), F_OK) == 0; waited += 5) {
    if (waited >= timeoutMs) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

class AgentProcess {
 public:
  // `extraConfig` is spliced into the agent's JSON config file (",\"tls\": {...}").
  explicit AgentProcess(std::vector<std::string> extraArgs = {}, bool unixListen = true,
                        const std::string& extraConfig = "") {
    char tmpl[] = "/tmp/nodeagent-e2e-XXXXXX";
    dir_ = mkdtemp(tmpl);
    chmod(dir_.c_str(), 0711);  // sandboxes mount their root below it under their own uid
    socket_ = dir_ + "/agent.sock";
    // Tests run several agents at once: each gets its own cgroup subtree and
    // uid range, as separate hosts would.
    static int counter = 0;
    cgroupRoot_ = "nodeagent-test-" + std::to_string(getpid()) + "-" + std::to_string(counter++);
    uint64_t uidBase = 1000000000ull + uint64_t((getpid() * 7 + counter) % 400) * 6600000ull;
    {
      std::string config = "{\"cgroupRoot\": \"" + cgroupRoot_ +
                           "\", \"uidBase\": " + std::to_string(uidBase) + extraConfig;
      if (extraConfig.find("\"maxSandboxes\"") == std::string::npos) {
        config += ", \"maxSandboxes\": 100";
      }
      // Networking touches host-wide state (a bridge, NAT, port 53 on its
      // gateway): only tests that ask for it, with a bridge of their own.
      if (extraConfig.find("\"network\"") == std::string::npos) {
        config += ", \"network\": {\"enabled\": false}";
      }
      config += "}";
      FILE* f = fopen((dir_ + "/config.json").c_str(), "w");
      fputs(config.c_str(), f);
      fclose(f);
    }
    std::vector<std::string> argv = {binDir() + "/nodeagent", "--config", dir_ + "/config.json",
                                     "--state-dir", dir_ + "/state"};
    if (unixListen) {
      argv.push_back("--listen");
      argv.push_back("unix:" + socket_);
    }
    for (auto& a : extraArgs) argv.push_back(a);
    argv_ = argv;
    logPath_ = dir_ + "/agent.log";
    start();
  }

  // SIGKILLs the agent (no chance to clean up) and starts it again on the
  // same state dir and socket.
  void restartHard() {
    killHard();
    start();
  }
  // SIGKILLs the agent and waits until it is gone; startAgain() brings it back.
  void killHard() {
    kill(pid_, SIGKILL);
    int status;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }
  void startAgain() { start(); }
  // SIGTERMs the agent (a graceful stop) and returns its wait status.
  int stop() {
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }

  // Waits until the agent accepts connections (`sbx ls` works).
  bool waitReady(const std::string& connect = "") {
    for (int i = 0; i < 200; ++i) {
      auto r =
          runCommand({binDir() + "/sbx", "--connect", connect.empty() ? target() : connect, "ls"});
      if (r.exitCode == 0) return true;
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    return false;
  }

  ~AgentProcess() {
    if (pid_ > 0) {
      // Kill what the tests left running, then stop the agent.
      auto list = sbx({"ls"});
      size_t pos = 0;
      while ((pos = list.out.find("sbx-", pos)) != std::string::npos) {
        std::string id = list.out.substr(pos, list.out.find(' ', pos) - pos);
        size_t eol = list.out.find('\n', pos);
        if (list.out.find("running", pos) < eol || list.out.find("paused", pos) < eol) {
          sbx({"kill", id});
        }
        pos += id.size();
      }
      kill(pid_, SIGTERM);
      int status;
      waitpid(pid_, &status, 0);
    }
    // The agent leaves its (empty) cgroup root behind; a test host cleans up.
    for (const char* h : {"unified", "memory", "pids", "cpu", "cpuacct", "freezer", ""}) {
      std::string base = std::string("/sys/fs/cgroup/") + h + (h[0] ? "/" : "") + cgroupRoot_;
      std::string rm = "find '" + base + "' -depth -type d -exec rmdir {} + 2>/dev/null";
      if (system(rm.c_str()) < 0) perror("rmdir");
    }
    // The CPU meter's pinned program keeps counting until unpinned.
    std::string unpin = "rm -rf '/sys/fs/bpf/nodeagent/" + cgroupRoot_ +
                        "' '/sys/fs/bpf/nodeagent/" + cgroupRoot_ + "-egress'";
    if (system(unpin.c_str()) != 0) perror("unpin");
    std::string cmd = "rm -rf '" + dir_ + "'";
    if (system(cmd.c_str()) != 0) perror("rm");
  }

  std::string target() const { return "unix:" + socket_; }
  const std::string& cgroupRoot() const { return cgroupRoot_; }
  // A sandbox's cgroup directory in one hierarchy ("pids", "unified", ...).
  std::string cgroupDir(const std::string& hierarchy, const std::string& tenant,
                        const std::string& id) const {
    return "/sys/fs/cgroup/" + hierarchy + "/" + cgroupRoot_ + "/sandboxes/" + tenant + "/" + id;
  }
  const std::string& dir() const { return dir_; }
  const std::string& socketPath() const { return socket_; }
  pid_t pid() const { return pid_; }
  std::string log() const {
    std::string out;
    FILE* f = fopen(logPath_.c_str(), "r");
    if (!f) return out;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
    fclose(f);
    return out;
  }

  CommandResult sbx(std::vector<std::string> args, const std::string& input = "") {
    std::vector<std::string> argv = {binDir() + "/sbx", "--connect", target()};
    for (auto& a : args) argv.push_back(a);
    return runCommand(argv, input);
  }

  // Creates a python sandbox and returns its id ("" on failure).
  std::string create(std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"create", "--template", "python", "--tenant", "e2e"};
    for (auto& a : extra) args.push_back(a);
    auto r = sbx(args);
    EXPECT_EQ(r.exitCode, 0) << r.err;
    while (!r.out.empty() && r.out.back() == '\n') r.out.pop_back();
    return r.out;
  }

 private:
  void start() {
    std::vector<char*> args;
    for (auto& a : argv_) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    int log = open(logPath_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    int devNull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    pid_t parent = getpid();
    pid_ = fork();
    if (pid_ == 0) {
      // The agent dies with the test, and writes only to its log: a crashed
      // test must not leave an agent holding ctest's pipes open.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);
      dup2(devNull, 0);
      dup2(log, 1);
      dup2(log, 2);
      execv(args[0], args.data());
      _exit(127);
    }
    close(log);
    close(devNull);
  }

  std::vector<std::string> argv_;
  std::string cgroupRoot_;
  std::string dir_;
  std::string socket_;
  std::string logPath_;
  pid_t pid_ = -1;
};

// A test suite whose tests share one agent. The derived fixture may define
// `static std::string extraConfig()` (a JSON fragment, see AgentProcess).
template <typename Derived>
class SharedAgentTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // Tests of bad clients write to connections the agent closed on purpose.
    signal(SIGPIPE, SIG_IGN);
    if (geteuid() != 0) return;
    agent_ = new AgentProcess({}, true, Derived::extraConfig());
    ready_ = agent_->waitReady();
  }
  static void TearDownTestSuite() {
    delete agent_;
    agent_ = nullptr;
  }
  void SetUp() override {
    NODEAGENT_REQUIRE_ROOT();
    ASSERT_TRUE(ready_) << agent_->log();
  }
  // True when SetUp() skipped or failed, so a derived SetUp() stops.
  bool setUpStopped() { return IsSkipped() || HasFatalFailure(); }

  static std::string extraConfig() { return ""; }
  static AgentProcess& agent() { return *agent_; }

  static inline AgentProcess* agent_ = nullptr;
  static inline bool ready_ = false;
};

// Records reach LMDB a moment after the API answered (group commit on the
// writer thread); a kill -9 before then loses the change (and the agent sweeps
// what it cannot find). Waits until `id` is stored in `state`.
inline bool waitStored(AgentProcess& agent, const std::string& id, api::SandboxState state) {
  auto store = Store::open((agent.dir() + "/state").c_str());
  for (int i = 0; i < 400; ++i) {
    KJ_IF_MAYBE (record, store->getSandbox(id.c_str())) {
      if ((*record)->get().getState() == state) return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

// A number field of `sbx ... --json` output ("key": 123 or "key": "123").
inline uint64_t jsonNumber(const std::string& json, const std::string& key) {
  std::smatch m;
  if (!std::regex_search(json, m, std::regex("\"" + key + "\": \"?([0-9]+)"))) {
    ADD_FAILURE() << key << " missing from " << json;
    return 0;
  }
  return std::stoull(m[1]);
}

// The kernel's exact CPU time of a sandbox's cgroup: usage_usec of its v2
// leaf (the unified hierarchy on hybrid hosts). cpuacct's user/system split
// on v1 is sampled by ticks, so it is no yardstick for a few percent.
inline uint64_t cgroupUsageNs(AgentProcess& agent, const std::string& id,
                              const std::string& tenant = "e2e") {
  for (const char* hierarchy : {"unified", ""}) {
    std::ifstream in(agent.cgroupDir(hierarchy, tenant, id) + "/cpu.stat");
    std::string key;
    uint64_t value;
    while (in >> key >> value) {
      if (key == "usage_usec") return value * 1000;
    }
  }
  ADD_FAILURE() << "no cpu.stat for " << id;
  return 0;
}

}  // namespace nodeagent::testing
