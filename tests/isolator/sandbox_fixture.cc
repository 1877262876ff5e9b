#include "tests/isolator/sandbox_fixture.h"

#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <kj/debug.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "isolator/file_util.h"
#include "isolator/template.h"

namespace nodeagent::isolator::testing {
namespace {

struct Scratch {
  std::string path;
  Scratch() {
    path = "/tmp/nodeagent-isotest." + std::to_string(getpid());
    removeTree(path);
    KJ_SYSCALL(mkdir(path.c_str(), 0711), path.c_str());
    KJ_SYSCALL(chmod(path.c_str(), 0711), path.c_str());
  }
  ~Scratch() {
    try {
      removeTree(path);
    } catch (const kj::Exception& e) {
      fprintf(stderr, "cleanup of %s failed: %s\n", path.c_str(), e.getDescription().cStr());
    }
  }
};

// Removes the test cgroup root once the binary's tests are done (if no other test
// process still uses it).
class CgroupRootCleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    if (geteuid() != 0) return;
    try {
      CgroupTree::open(kTestCgroupRoot)->removeIfEmpty();
    } catch (const kj::Exception& e) {
      fprintf(stderr, "cgroup cleanup failed: %s\n", e.getDescription().cStr());
    }
  }
};
[[maybe_unused]] ::testing::Environment* const cgroupRootCleanup =
    ::testing::AddGlobalTestEnvironment(new CgroupRootCleanup);

}  // namespace

const std::string& scratchDir() {
  static Scratch scratch;
  return scratch.path;
}

const std::string& skeletonDir() {
  static std::string dir = [] {
    std::string d = scratchDir() + "/skeleton";
    prepareSkeleton(d);
    return d;
  }();
  return dir;
}

const std::vector<SeedEntry>& skeletonSeed() {
  static std::vector<SeedEntry> seed = readSkeletonSeed(skeletonDir());
  return seed;
}

std::string testTenant() {
  return "t" + std::to_string(getpid());
}

std::string initPath() {
  if (const char* bin = getenv("NODEAGENT_BIN_DIR")) return std::string(bin) + "/nodeagent-init";
  // Run by hand: tests live in build/tests, binaries in build/bin.
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  KJ_REQUIRE(n > 0, "cannot find the test binary; set NODEAGENT_BIN_DIR");
  std::string dir(self, size_t(n));
  dir = dir.substr(0, dir.rfind('/'));
  return dir.substr(0, dir.rfind('/')) + "/bin/nodeagent-init";
}

uint32_t nextUidBase() {
  static std::atomic<uint32_t> counter{0};
  // 1e9 + 64K * (16 * (pid % 1000) + n % 16): far from real users and the agent's default range.
  uint32_t slot = uint32_t(getpid() % 1000) * 16 + (counter++ % 16);
  return 1000000000u + slot * 65536u;
}

kj::ArrayPtr<const kj::byte> seccompFilter() {
  static const SeccompProgram program = SeccompProgram::compileDefault();
  return program.bytes();
}

Zygote& testZygote() {
  static Zygote zygote(initPath(), STDERR_FILENO);
  return zygote;
}

std::string uniqueId(const char* prefix) {
  static std::atomic<int> counter{0};
  return std::string(prefix) + "-" + std::to_string(getpid()) + "-" + std::to_string(counter++);
}

TestSandbox::TestSandbox(SandboxOptions options) {
  tree_ = CgroupTree::open(kTestCgroupRoot);
  std::string id = uniqueId("sbx");
  cgroup_ = SandboxCgroup::create(*tree_, testTenant(), id, options.limits);
  spec_.sandboxId = id;
  spec_.hostname = options.hostname;
  spec_.uidBase = nextUidBase();
  spec_.uidCount = 65536;
  spec_.initPath = initPath();
  spec_.skeletonDir = options.skeleton.empty() ? skeletonDir() : options.skeleton;
  spec_.usrDir = "/usr";
  spec_.workDir = scratchDir() + "/work-" + id;
  spec_.diskBytes = options.diskBytes;
  spec_.cgroup = cgroup_.get();
  spec_.initStderrFd = STDERR_FILENO;
  spec_.controlSocketPath = scratchDir() + "/" + id + ".sock";
  spec_.seccompFilter = seccompFilter();
  spec_.netnsFd = options.netnsFd;
  if (!options.execInit) spec_.zygote = &testZygote();
  if (options.seed) {
    seed_ = *options.seed;
  } else if (options.skeleton.empty()) {
    seed_ = skeletonSeed();
  } else if (access(options.skeleton.c_str(), F_OK) == 0) {
    seed_ = readSkeletonSeed(options.skeleton);
  }
  spec_.seed = &seed_;
  try {
    launched_ = launch(spec_);
  } catch (...) {
    cgroup_->remove();
    rmdir(spec_.workDir.c_str());
    throw;
  }
  client_.emplace(launched_.control);
}

InitClient& TestSandbox::reconnect() {
  reconnected_ = reconnectInit(spec_.controlSocketPath);
  client_.emplace(reconnected_);
  return *client_;
}

int TestSandbox::shutdown() {
  if (!initStatus_) {
    KJ_IF_MAYBE (status, tryReap(launched_)) {
      initStatus_ = *status;
    } else {
      cgroup_->killAll();
      initStatus_ = reap(launched_);
    }
  }
  return *initStatus_;
}

void TestSandbox::removeCgroup() {
  shutdown();
  if (!cgroupRemoved_) cgroup_->remove();
  cgroupRemoved_ = true;
}

TestSandbox::~TestSandbox() {
  try {
    removeCgroup();
    rmdir(spec_.workDir.c_str());
    unlink(spec_.controlSocketPath.c_str());
  } catch (const kj::Exception& e) {
    ADD_FAILURE_AT(__FILE__, __LINE__) << "sandbox teardown: " << e.getDescription().cStr();
  }
}

pid_t hostPidOf(int pidfd) {
  std::ifstream in("/proc/self/fdinfo/" + std::to_string(pidfd));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Pid:", 0) == 0) return pid_t(std::stol(line.substr(4)));
  }
  return -1;
}

std::string procStatusField(pid_t pid, const char* key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line, prefix = std::string(key) + ":";
  while (std::getline(in, line)) {
    if (line.rfind(prefix, 0) == 0) {
      std::string value = line.substr(prefix.size());
      size_t start = value.find_first_not_of(" \t");
      return start == std::string::npos ? "" : value.substr(start);
    }
  }
  return "";
}

bool pidfdExited(int pidfd, int timeoutMs) {
  pollfd p{pidfd, POLLIN, 0};
  return poll(&p, 1, timeoutMs) == 1;
}

int countOpenFds() {
  int count = 0;
  DIR* dir = opendir("/proc/self/fd");
  KJ_REQUIRE(dir != nullptr);
  while (struct dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(dir);
  return count - 1;  // the DIR's own fd
}

}  // namespace nodeagent::isolator::testing
