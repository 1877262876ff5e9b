// The sched_switch CPU meter against the kernel's own per-cgroup counter
// (cpu.stat usage_usec of the v2 cgroup), with real busy and idle processes.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>

#include <kj/debug.h>

#include "ebpf/cpu_meter.h"
#include "support/privileged.h"

namespace nodeagent::ebpf {
namespace {

// The cgroup2 mount: /sys/fs/cgroup/unified on hybrid hosts, else /sys/fs/cgroup.
std::string cgroup2Root() {
  struct stat st;
  if (stat("/sys/fs/cgroup/unified/cgroup.procs", &st) == 0) return "/sys/fs/cgroup/unified";
  return "/sys/fs/cgroup";
}

// A v2 cgroup of this test's own, removed (once empty) at the end.
class TestCgroup {
 public:
  explicit TestCgroup(const std::string& name)
      : path_(cgroup2Root() + "/nodeagent-ebpftest-" + std::to_string(getpid()) + "-" + name) {
    KJ_SYSCALL(mkdir(path_.c_str(), 0755), path_);
  }
  ~TestCgroup() {
    for (int i = 0; i < 200 && rmdir(path_.c_str()) != 0 && errno == EBUSY; ++i) usleep(10000);
  }
  const std::string& path() const { return path_; }
  uint64_t usageNs() const {
    std::ifstream in(path_ + "/cpu.stat");
    std::string key;
    uint64_t value;
    while (in >> key >> value) {
      if (key == "usage_usec") return value * 1000;
    }
    ADD_FAILURE() << "no usage_usec in " << path_ << "/cpu.stat";
    return 0;
  }

  // Forks a child that joins this cgroup and runs `body`, then exits.
  template <typename Body>
  pid_t run(Body body) const {
    pid_t pid = fork();
    if (pid == 0) {
      std::string procs = path_ + "/cgroup.procs";
      int fd = open(procs.c_str(), O_WRONLY);
      if (fd < 0 || write(fd, "0", 1) != 1) _exit(3);
      close(fd);
      body();
      _exit(0);
    }
    return pid;
  }

 private:
  std::string path_;
};

void spinFor(std::chrono::microseconds duration) {
  auto until = std::chrono::steady_clock::now() + duration;
  volatile uint64_t sink = 0;
  while (std::chrono::steady_clock::now() < until) sink = sink + 1;
}

int waitExit(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(CpuMeter, AgreesWithTheCgroupCounterWithinTwoPercentOnABusyWorkload) {
  NODEAGENT_REQUIRE_ROOT();
  auto meter = CpuMeter::start();
  TestCgroup busy("busy");
  uint64_t id = cgroupIdOf(busy.path());
  meter->track(id);
  // Two spinners, so stretches end and start on both CPUs, plus one that
  // yields often (many short stretches).
  pid_t a = busy.run([] { spinFor(std::chrono::milliseconds(1500)); });
  pid_t b = busy.run([] { spinFor(std::chrono::milliseconds(1500)); });
  pid_t c = busy.run([] {
    for (int i = 0; i < 3000; ++i) {
      spinFor(std::chrono::microseconds(200));
      usleep(100);
    }
  });
  EXPECT_EQ(waitExit(a), 0);
  EXPECT_EQ(waitExit(b), 0);
  EXPECT_EQ(waitExit(c), 0);
  uint64_t measured = meter->read(id);
  uint64_t kernel = busy.usageNs();
  ASSERT_GT(kernel, 1'000'000'000u) << "the workload did not run";
  double error = (double(measured) - double(kernel)) / double(kernel);
  EXPECT_LT(std::abs(error), 0.02) << "bpf " << measured << " ns, cgroup " << kernel << " ns";
  meter->untrack(id);
}

TEST(CpuMeter, CountsARunningTaskBeforeItIsSwitchedOut) {
  NODEAGENT_REQUIRE_ROOT();
  auto meter = CpuMeter::start();
  TestCgroup busy("open");
  uint64_t id = cgroupIdOf(busy.path());
  meter->track(id);
  pid_t spinner = busy.run([] { spinFor(std::chrono::milliseconds(3000)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  uint64_t previous = 0;
  for (int i = 0; i < 5; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    uint64_t now = meter->read(id);
    uint64_t kernel = busy.usageNs();
    EXPECT_GE(now, previous);
    // The cgroup counter lags by up to a tick; the meter by a missed stretch.
    EXPECT_NEAR(double(now), double(kernel), 0.05 * double(kernel) + 10e6);
    previous = now;
  }
  kill(spinner, SIGKILL);
  waitExit(spinner);
}

TEST(CpuMeter, ASleepingCgroupAccruesNothingAndUntrackedOnesAreNotCharged) {
  NODEAGENT_REQUIRE_ROOT();
  auto meter = CpuMeter::start();
  TestCgroup idle("idle");
  TestCgroup untracked("untracked");
  uint64_t id = cgroupIdOf(idle.path());
  meter->track(id);
  pid_t sleeper = idle.run([] { usleep(800000); });
  pid_t other = untracked.run([] { spinFor(std::chrono::milliseconds(500)); });
  EXPECT_EQ(waitExit(sleeper), 0);
  EXPECT_EQ(waitExit(other), 0);
  EXPECT_LT(meter->read(id), 20'000'000u);  // fork, exec-less start and exit only
  EXPECT_THROW(meter->read(cgroupIdOf(untracked.path())), kj::Exception);
  meter->untrack(id);
  EXPECT_THROW(meter->read(id), kj::Exception);
}

}  // namespace
}  // namespace nodeagent::ebpf
