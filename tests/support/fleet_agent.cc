#include "support/fleet_agent.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace nodeagent::testing {
namespace {

using namespace std::chrono_literals;

constexpr const char* kCgroupPrefix = "nodeagent-flt-";
constexpr const char* kDirPrefix = "naflt-agent-";
constexpr const char* kBpfDir = "/sys/fs/bpf/nodeagent";
// "" is a pure cgroup v2 mount; the others are the hybrid v1 + v2 layout.
const char* const kHierarchies[] = {"unified", "memory", "pids",  "cpu", "cpuacct",
                                    "freezer", "cpuset", "blkio", ""};

// Agents on one host must not share uids: agent i gets its own 70M-uid band
// above 1.3e9, and inside it a slot chosen by the test's pid, so that fleets
// of parallel test processes rarely meet either.
constexpr uint64_t kUidFloor = 1'300'000'000;
constexpr uint64_t kUidBand = 70'000'000;

std::string cgroupDir(const char* hierarchy, const std::string& root) {
  return std::string("/sys/fs/cgroup/") + hierarchy + (hierarchy[0] ? "/" : "") + root;
}

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

}  // namespace

FleetAgent::FleetAgent(Spec spec) : spec_(std::move(spec)) {
  binDir_ = spec_.binDir.empty() ? defaultBinDir() : spec_.binDir;
  for (const char* bin : {"nodeagent", "sbx", "nodeagent-init"}) {
    if (access((binDir_ + "/" + bin).c_str(), X_OK) != 0) {
      throw std::runtime_error("FleetAgent: no executable " + binDir_ + "/" + bin +
                               " (build it, or set NODEAGENT_BIN_DIR)");
    }
  }
  if (spec_.netnsPath.empty() || access(spec_.netnsPath.c_str(), F_OK) != 0) {
    throw std::runtime_error("FleetAgent: no network namespace at '" + spec_.netnsPath + "'");
  }
  const uint64_t span = uint64_t(spec_.uidRangeSize) * spec_.maxSandboxes;
  if (span == 0 || span > kUidBand) {
    throw std::runtime_error("FleetAgent: uidRangeSize * maxSandboxes must be 1.." +
                             std::to_string(kUidBand));
  }
  const uint64_t slots = std::min<uint64_t>(kUidBand / span, 16);
  const uint64_t base = kUidFloor + uint64_t(spec_.index) * kUidBand + (getpid() % slots) * span;
  if (spec_.index < 0 || base + span > UINT32_MAX) {
    throw std::runtime_error("FleetAgent: node index " + std::to_string(spec_.index) +
                             " has no uid band (at most ~42 agents)");
  }
  uidBase_ = uint32_t(base);

  static std::atomic<int> counter{0};
  cgroupRoot_ = kCgroupPrefix + std::to_string(getpid()) + "-" + std::to_string(counter++);
  std::string tmpl = std::string("/tmp/") + kDirPrefix + std::to_string(getpid()) + "-" +
                     std::to_string(spec_.index) + "-XXXXXX";
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("FleetAgent: mkdtemp failed");
  dir_ = tmpl;
  try {
    chmod(dir_.c_str(), 0711);  // sandboxes mount their root below it under their own uid
    writeGossipKeys(spec_.gossipKeys);
    writeWholeFile(configPath(), configJson());
  } catch (...) {
    removeTree(dir_);
    throw;
  }
}

FleetAgent::~FleetAgent() {
  cleanUp();
}

std::string FleetAgent::configJson() const {
  std::string c = "{\"cgroupRoot\": " + quote(cgroupRoot_) +
                  ", \"uidBase\": " + std::to_string(uidBase_) +
                  ", \"uidRangeSize\": " + std::to_string(spec_.uidRangeSize) +
                  ", \"maxSandboxes\": " + std::to_string(spec_.maxSandboxes) +
                  ",\n \"network\": {\"enabled\": false}";
  if (spec_.clusterConfig) {
    c += ",\n \"tls\": {\"certFile\": " + quote(spec_.certFile) +
         ", \"keyFile\": " + quote(spec_.keyFile) + ", \"caFile\": " + quote(spec_.caFile) + "}";
    std::string seeds;
    for (const auto& s : spec_.seeds) seeds += (seeds.empty() ? "" : ", ") + quote(s);
    c += ",\n \"cluster\": {\"enabled\": true, \"bind\": " +
         quote(spec_.address + ":" + std::to_string(spec_.gossipPort)) + ", \"seeds\": [" + seeds +
         "], \"keyFile\": " + quote(gossipKeyFile()) +
         ", \"capacity\": {\"cpuMillis\": " + std::to_string(spec_.capacity.cpuMillis) +
         ", \"memoryBytes\": " + std::to_string(spec_.capacity.memoryBytes) +
         ", \"slots\": " + std::to_string(spec_.capacity.slots) + "}}";
  }
  return c + spec_.extraConfig + "}\n";
}

void FleetAgent::writeGossipKeys(const std::vector<std::string>& keys) {
  std::string text;
  for (const auto& k : keys) text += k + "\n";
  writeWholeFile(gossipKeyFile(), text, 0600);
}

void FleetAgent::start() {
  if (running()) throw std::runtime_error("FleetAgent " + std::to_string(index()) + ": running");
  std::vector<std::string> argv = {binDir_ + "/nodeagent", "--config", configPath(), "--state-dir",
                                   dir_ + "/state",        "--listen", target()};
  argv.insert(argv.end(), spec_.extraArgs.begin(), spec_.extraArgs.end());
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);

  // Everything the child needs is opened before fork().
  int log = open((dir_ + "/agent.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  int devNull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  int ns = open(spec_.netnsPath.c_str(), O_RDONLY | O_CLOEXEC);
  if (log < 0 || devNull < 0 || ns < 0) {
    int e = errno;
    for (int fd : {log, devNull, ns}) {
      if (fd >= 0) close(fd);
    }
    throw std::runtime_error("FleetAgent: cannot open log, /dev/null or netns: " +
                             std::string(strerror(e)));
  }
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    // The agent dies with the test, and writes only to its log: a crashed
    // test must not leave an agent holding ctest's pipes open.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    if (setns(ns, CLONE_NEWNET) != 0) _exit(126);
    dup2(devNull, 0);
    dup2(log, 1);
    dup2(log, 2);
    execv(args[0], args.data());
    _exit(127);
  }
  for (int fd : {log, devNull, ns}) close(fd);
  if (pid < 0) throw std::runtime_error("FleetAgent: fork failed");
  pid_ = pid;
}

bool FleetAgent::running() {
  if (pid_ <= 0) return false;
  int status;
  if (waitpid(pid_, &status, WNOHANG) == pid_) {
    pid_ = -1;
    return false;
  }
  return true;
}

void FleetAgent::kill9() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
}

int FleetAgent::terminate(int timeoutMs) {
  if (pid_ <= 0) return 0;
  kill(pid_, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeoutMs);
  int status = 0;
  for (;;) {
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_ || (r < 0 && errno != EINTR)) break;
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
      break;
    }
    std::this_thread::sleep_for(10ms);
  }
  pid_ = -1;
  return status;
}

void FleetAgent::restart() {
  if (running()) terminate();
  start();
}

bool FleetAgent::waitReady(int timeoutMs) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeoutMs);
  while (std::chrono::steady_clock::now() < deadline) {
    if (!running()) return false;
    if (sbx({"ls"}).exitCode == 0) return true;
    std::this_thread::sleep_for(25ms);
  }
  return false;
}

CommandOutput FleetAgent::sbx(const std::vector<std::string>& args,
                              const std::string& input) const {
  std::vector<std::string> argv = {binDir_ + "/sbx", "--connect", target()};
  argv.insert(argv.end(), args.begin(), args.end());
  return runProcess(argv, input);
}

std::string FleetAgent::log() const {
  return readWholeFile(dir_ + "/agent.log");
}

void FleetAgent::cleanUp() {
  if (running()) {
    // Kill what the test left running, so the agent releases its mounts.
    std::istringstream list(sbx({"ls"}).out);
    for (std::string line; std::getline(list, line);) {
      std::string id = line.substr(0, line.find(' '));
      if (id.starts_with("sbx-") &&
          (line.find("running") != std::string::npos || line.find("paused") != std::string::npos)) {
        sbx({"kill", id});
      }
    }
    terminate();
  }
  // Sandboxes outlive an agent that was kill -9'd; they all sit in its cgroups.
  for (const char* h : kHierarchies) killAndRemoveCgroup(cgroupDir(h, cgroupRoot_));
  // The CPU meter's pinned program keeps counting until unpinned.
  removeTree(std::string(kBpfDir) + "/" + cgroupRoot_);
  removeTree(std::string(kBpfDir) + "/" + cgroupRoot_ + "-egress");
  removeTree(dir_);
}

void FleetAgent::removeLeftovers() {
  namespace fs = std::filesystem;
  std::error_code ec;
  for (const char* h : kHierarchies) {
    const std::string base = std::string("/sys/fs/cgroup/") + h;
    for (const auto& e : fs::directory_iterator(base, ec)) {
      if (leftoverOfDeadProcess(e.path().filename().string(), kCgroupPrefix)) {
        killAndRemoveCgroup(e.path().string());
      }
    }
  }
  for (const auto& e : fs::directory_iterator(kBpfDir, ec)) {
    if (leftoverOfDeadProcess(e.path().filename().string(), kCgroupPrefix)) {
      removeTree(e.path().string());
    }
  }
  for (const auto& e : fs::directory_iterator("/tmp", ec)) {
    const std::string name = e.path().filename().string();
    if (leftoverOfDeadProcess(name, kDirPrefix) || leftoverOfDeadProcess(name, "naflt-pki-")) {
      removeTree(e.path().string());
    }
  }
}

}  // namespace nodeagent::testing
