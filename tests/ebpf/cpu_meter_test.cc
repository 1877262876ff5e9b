// The sched_switch CPU meter against the kernel's own per-cgroup counter
// (cpu.stat usage_usec of the v2 cgroup), with real busy and idle processes.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>

#include <kj/debug.h>

#include "ebpf/cpu_meter.h"
#include "support/privileged.h"

namespace nodeagent::ebpf {
namespace {

// Each test pins under a directory of its own and removes it after.
class PinnedMeter {
 public:
  PinnedMeter() : dir_(kj::str("/sys/fs/bpf/nodeagent-test-", getpid())) {}
  ~PinnedMeter() { CpuMeter::removePinned(dir_); }
  kj::Own<CpuMeter> start() { return CpuMeter::start(dir_); }
  kj::StringPtr dir() const { return dir_; }

 private:
  kj::String dir_;
};

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

  // Runs `body` in a process born in this cgroup, as a sandbox's processes
  // are (a child joins, then forks it); returns the child, which exits with
  // its status.
  template <typename Body>
  pid_t run(Body body) const {
    pid_t pid = fork();
    if (pid == 0) {
      std::string procs = path_ + "/cgroup.procs";
      int fd = open(procs.c_str(), O_WRONLY);
      if (fd < 0 || write(fd, "0", 1) != 1) _exit(3);
      close(fd);
      pid_t worker = fork();
      if (worker == 0) {
        body();
        _exit(0);
      }
      int status = 0;
      waitpid(worker, &status, 0);
      _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 4);
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
  PinnedMeter pinned;
  auto meter = pinned.start();
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
  uint64_t measured = meter->read(id, busy.path());
  uint64_t kernel = busy.usageNs();
  ASSERT_GT(kernel, 1'000'000'000u) << "the workload did not run";
  double error = (double(measured) - double(kernel)) / double(kernel);
  RecordProperty("relative_error_ppm", int(error * 1e6));
  printf("bpf %llu ns, cgroup %llu ns, error %+.3f%%\n", (unsigned long long)measured,
         (unsigned long long)kernel, error * 100);
  EXPECT_LT(std::abs(error), 0.02) << "bpf " << measured << " ns, cgroup " << kernel << " ns";
  meter->untrack(id);
}

TEST(CpuMeter, CountsARunningTaskBeforeItIsSwitchedOut) {
  NODEAGENT_REQUIRE_ROOT();
  PinnedMeter pinned;
  auto meter = pinned.start();
  TestCgroup busy("open");
  uint64_t id = cgroupIdOf(busy.path());
  meter->track(id);
  pid_t spinner = busy.run([] { spinFor(std::chrono::milliseconds(3000)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  uint64_t previous = 0;
  for (int i = 0; i < 5; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    uint64_t now = meter->read(id, busy.path());
    uint64_t kernel = busy.usageNs();
    EXPECT_GE(now, previous);
    // The cgroup counter lags by up to a tick; the meter by a missed stretch.
    EXPECT_NEAR(double(now), double(kernel), 0.05 * double(kernel) + 10e6);
    previous = now;
  }
  kill(spinner, SIGKILL);  // the launcher; its worker ends on its own
  waitExit(spinner);
}

TEST(CpuMeter, ASleepingCgroupAccruesNothingAndUntrackedOnesAreNotCharged) {
  NODEAGENT_REQUIRE_ROOT();
  PinnedMeter pinned;
  auto meter = pinned.start();
  TestCgroup idle("idle");
  TestCgroup untracked("untracked");
  uint64_t id = cgroupIdOf(idle.path());
  meter->track(id);
  pid_t sleeper = idle.run([] { usleep(800000); });
  pid_t other = untracked.run([] { spinFor(std::chrono::milliseconds(500)); });
  EXPECT_EQ(waitExit(sleeper), 0);
  EXPECT_EQ(waitExit(other), 0);
  EXPECT_LT(meter->read(id, idle.path()), 20'000'000u);  // fork, exec-less start and exit only
  EXPECT_THROW(meter->read(cgroupIdOf(untracked.path()), untracked.path()), kj::Exception);
  meter->untrack(id);
  EXPECT_THROW(meter->read(id, idle.path()), kj::Exception);
}

TEST(CpuMeter, ACgroupTrackedWhileItsTasksRunIsChargedFromThenOn) {
  NODEAGENT_REQUIRE_ROOT();
  PinnedMeter pinned;
  auto meter = pinned.start();
  TestCgroup late("late");
  uint64_t id = cgroupIdOf(late.path());
  // Its tasks leave CPUs untracked first: the program remembers them as
  // such, and must learn otherwise once the cgroup is tracked.
  pid_t worker = late.run([] {
    for (int i = 0; i < 5000; ++i) {
      spinFor(std::chrono::microseconds(200));
      usleep(100);
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  uint64_t before = late.usageNs();
  meter->track(id);
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  uint64_t measured = meter->read(id, late.path());
  uint64_t used = late.usageNs() - before;
  ASSERT_GT(used, 200'000'000u) << "the workload did not run";
  EXPECT_NEAR(double(measured), double(used), 0.05 * double(used) + 10e6);
  kill(worker, SIGKILL);
  waitExit(worker);
  meter->untrack(id);
}

TEST(CpuMeter, AReusedSlotStartsFromZeroAndAFullMeterRefusesClearly) {
  NODEAGENT_REQUIRE_ROOT();
  PinnedMeter pinned;
  auto meter = pinned.start();
  TestCgroup first("first");
  uint64_t id = cgroupIdOf(first.path());
  meter->track(id);
  EXPECT_EQ(waitExit(first.run([] { spinFor(std::chrono::milliseconds(300)); })), 0);
  ASSERT_GT(meter->read(id, first.path()), 200'000'000u);
  meter->untrack(id);
  // Ids no cgroup has: only the program's counters are read for them. The
  // last one takes the slot `first` held.
  constexpr uint64_t kNoSuchCgroup = uint64_t(1) << 62;
  constexpr uint64_t kSlots = 16384;
  for (uint64_t i = 0; i < kSlots; ++i) meter->track(kNoSuchCgroup + i);
  EXPECT_EQ(meter->read(kNoSuchCgroup + kSlots - 1, "/nonexistent"), 0u);
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { meter->track(kNoSuchCgroup + kSlots); })) {
    EXPECT_TRUE(strstr(e->getDescription().cStr(), "as many cgroups as it can") != nullptr)
        << e->getDescription().cStr();
  } else {
    ADD_FAILURE() << "a full meter took one more cgroup";
  }
  EXPECT_FALSE(meter->tracks(kNoSuchCgroup + kSlots));
  meter->untrack(kNoSuchCgroup);
  meter->track(kNoSuchCgroup + kSlots);
  EXPECT_TRUE(meter->tracks(kNoSuchCgroup + kSlots));
}

}  // namespace
}  // namespace nodeagent::ebpf

namespace nodeagent::ebpf {
namespace {

TEST(CpuMeter, CountsOnWhileNoAgentRunsAndTheNextStartTakesOver) {
  NODEAGENT_REQUIRE_ROOT();
  PinnedMeter pinned;
  TestCgroup busy("handover");
  uint64_t id = cgroupIdOf(busy.path());
  auto meter = pinned.start();
  meter->track(id);
  meter = nullptr;  // the agent stops; the pinned program keeps counting
  pid_t spinner = busy.run([] { spinFor(std::chrono::milliseconds(600)); });
  EXPECT_EQ(waitExit(spinner), 0);
  meter = pinned.start();  // the next agent
  ASSERT_TRUE(meter->tracks(id));
  uint64_t kernel = busy.usageNs();
  EXPECT_NEAR(double(meter->read(id, busy.path())), double(kernel), 0.02 * double(kernel));
  // Restarting again changes nothing: one program attached, nothing counted twice.
  meter = pinned.start();
  spinner = busy.run([] { spinFor(std::chrono::milliseconds(300)); });
  EXPECT_EQ(waitExit(spinner), 0);
  kernel = busy.usageNs();
  EXPECT_NEAR(double(meter->read(id, busy.path())), double(kernel), 0.02 * double(kernel));
  // Sandboxes that ended meanwhile are forgotten.
  meter->track(12345);
  uint64_t keep[] = {id};
  meter->retainOnly(keep);
  EXPECT_TRUE(meter->tracks(id));
  EXPECT_FALSE(meter->tracks(12345));
}

}  // namespace
}  // namespace nodeagent::ebpf
