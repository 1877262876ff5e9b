// A launched sandbox for privileged tests: its own skeleton, work dir, uid range and
// cgroup (test root "nodeagent-isotest", one tenant per test process), torn down in the
// destructor (kill, reap, remove cgroup, remove dirs).
#pragma once

#include <kj/memory.h>

#include <optional>
#include <string>
#include <vector>

#include "isolator/cgroup.h"
#include "isolator/launcher.h"
#include "isolator/seccomp_profile.h"
#include "isolator/zygote.h"
#include "tests/isolator/init_client.h"

namespace nodeagent::isolator::testing {

constexpr const char kTestCgroupRoot[] = "nodeagent-isotest";

// Per-process scratch dir under /tmp (0711, so sandboxes can traverse it), removed at exit.
const std::string& scratchDir();
// The skeleton, prepared once per process.
const std::string& skeletonDir();
// readSkeletonSeed(skeletonDir()), once per process.
const std::vector<SeedEntry>& skeletonSeed();
// "t<pid>": one tenant per test process, so parallel test binaries do not collide.
std::string testTenant();
// The nodeagent-init binary: $NODEAGENT_BIN_DIR/nodeagent-init.
std::string initPath();
// A fresh uid range for each sandbox of this process.
uint32_t nextUidBase();
std::string uniqueId(const char* prefix);
// The default seccomp program, compiled once per process.
kj::ArrayPtr<const kj::byte> seccompFilter();
// One zygote per process, started at first use, as the agent keeps one.
Zygote& testZygote();

struct SandboxOptions {
  CgroupLimits limits;
  uint64_t diskBytes = 64ull << 20;
  std::string hostname = "sbx-test";
  std::string skeleton;  // default: skeletonDir()
  int netnsFd = -1;      // a network namespace made ahead (LaunchSpec::netnsFd)
  // How init starts: forked by testZygote() (the agent's default), or exec'd.
  bool execInit = false;
  // Default: the skeleton's (none for a skeleton that does not exist, so that
  // init is the one to report it).
  std::optional<std::vector<SeedEntry>> seed;
};

class TestSandbox {
 public:
  explicit TestSandbox(SandboxOptions options = {});
  ~TestSandbox();

  CgroupTree& tree() { return *tree_; }
  SandboxCgroup& cgroup() { return *cgroup_; }
  LaunchedSandbox& launched() { return launched_; }
  InitClient& client() { return *client_; }
  // A new connection to init's listening socket, as a restarted agent makes;
  // client() uses it from now on.
  InitClient& reconnect();
  const LaunchSpec& spec() const { return spec_; }

  // Kills everything, reaps init; returns init's wait status. Idempotent.
  int shutdown();
  // shutdown() and remove the cgroup (else the destructor does).
  void removeCgroup();

 private:
  kj::Own<CgroupTree> tree_;
  kj::Own<SandboxCgroup> cgroup_;
  std::vector<SeedEntry> seed_;
  LaunchSpec spec_;
  LaunchedSandbox launched_;
  kj::AutoCloseFd reconnected_;
  std::optional<InitClient> client_;
  std::optional<int> initStatus_;
  bool cgroupRemoved_ = false;
};

// The host pid behind a pidfd (from /proc/self/fdinfo).
pid_t hostPidOf(int pidfd);
// The "Key:" line of /proc/<pid>/status, value only ("" if missing).
std::string procStatusField(pid_t pid, const char* key);
// Whether the process behind `pidfd` has exited, waiting up to timeoutMs.
bool pidfdExited(int pidfd, int timeoutMs);
// Number of open fds of this process.
int countOpenFds();

}  // namespace nodeagent::isolator::testing
