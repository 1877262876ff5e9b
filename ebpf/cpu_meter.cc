#include "ebpf/cpu_meter.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <kj/debug.h>

#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "ebpf/cpu_accounting.skel.h"

namespace nodeagent::ebpf {
namespace {

// /proc gives start times in clock ticks: a task born within one of the
// tracking start counts as older (charged from its first departure on).
constexpr uint64_t kTickSlackNs = 20'000'000;

// The program's records (cpu_accounting.bpf.c).
constexpr uint32_t kMaxTracked = 16384;
constexpr uint32_t kNoSlot = 0xffffffffu;
struct Tracking {
  uint64_t since;
  uint32_t slot;
  uint32_t unused;
};
struct TaskMeter {
  uint64_t runtime;
  uint64_t cgroup;
  uint64_t epoch;
  uint32_t slot;
  uint32_t unused;
};

// What the pins are called, in the layout of this build, and in the one
// before it (a percpu hash by cgroup id, looked up on every switch), whose
// pins a start removes once its own program counts.
constexpr const char* kPins[] = {"cpu_link",    "cpu_active", "cpu_tracked",
                                 "cpu_slot_ns", "cpu_epoch",  "cpu_task_meters"};
constexpr const char* kEarlierPins[] = {"cpu_ns", "cpu_last_seen", "cpu_tracked_since"};

#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif

// A task's scheduler clock (se.sum_exec_runtime), from /proc; -1 if gone.
int64_t taskRuntimeNs(const std::string& tid) {
  std::ifstream in("/proc/" + tid + "/schedstat");
  uint64_t runtime;
  if (!(in >> runtime)) return -1;
  return int64_t(runtime);
}

// When a task started, on the CLOCK_MONOTONIC scale, from /proc (which keeps
// it in clock ticks since boot); 0 if gone.
uint64_t taskStartNs(const std::string& tid) {
  std::ifstream in("/proc/" + tid + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t end = stat.rfind(')');  // the command may hold spaces and parentheses
  if (end == std::string::npos) return 0;
  std::istringstream fields(stat.substr(end + 2));
  std::string field;
  // Field 22 (starttime); fields.begin() is field 3 (state).
  for (int i = 3; i <= 22 && fields >> field; ++i) {
  }
  static const uint64_t nsPerTick = 1000000000 / uint64_t(sysconf(_SC_CLK_TCK));
  timespec boot, mono;
  clock_gettime(CLOCK_BOOTTIME, &boot);
  clock_gettime(CLOCK_MONOTONIC, &mono);
  int64_t offset =
      (int64_t(boot.tv_sec) - mono.tv_sec) * 1000000000 + (boot.tv_nsec - mono.tv_nsec);
  int64_t start = int64_t(std::stoull(field) * nsPerTick) - offset;
  return start > 0 ? uint64_t(start) : 0;
}

uint64_t monotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);  // the clock bpf_ktime_get_ns() reads
  return uint64_t(ts.tv_sec) * 1000000000 + uint64_t(ts.tv_nsec);
}

}  // namespace

kj::Own<CpuMeter> CpuMeter::start(kj::StringPtr pinDir) {
  ensureBpffs();
  if (mkdir(pinDir.cStr(), 0700) != 0 && errno != EEXIST) KJ_FAIL_SYSCALL("mkdir", errno, pinDir);
  cpu_accounting* skeleton = cpu_accounting::open();
  if (skeleton == nullptr) KJ_FAIL_SYSCALL("opening the CPU accounting BPF program", errno);
  auto meter = kj::heap<CpuMeter>(skeleton);
  uint64_t generation = monotonicNs();  // unique per start on this host
  skeleton->rodata->generation = generation;
  // Pinned maps that exist are reused by load(): the counts carry on.
  kj::String activePin = kj::str(pinDir, "/cpu_active");
  kj::String trackedPin = kj::str(pinDir, "/cpu_tracked");
  kj::String slotsPin = kj::str(pinDir, "/cpu_slot_ns");
  kj::String epochPin = kj::str(pinDir, "/cpu_epoch");
  kj::String tasksPin = kj::str(pinDir, "/cpu_task_meters");
  bpf_map__set_pin_path(skeleton->maps.active, activePin.cStr());
  bpf_map__set_pin_path(skeleton->maps.tracked, trackedPin.cStr());
  bpf_map__set_pin_path(skeleton->maps.slot_ns, slotsPin.cStr());
  bpf_map__set_pin_path(skeleton->maps.epoch, epochPin.cStr());
  bpf_map__set_pin_path(skeleton->maps.task_meters, tasksPin.cStr());
  int rc = cpu_accounting::load(skeleton);
  if (rc != 0) KJ_FAIL_SYSCALL("loading the CPU accounting BPF program", -rc, pinDir);
  meter->loadSlots();

  // Attached, then made the one that counts, then the previous agent's copy
  // (still attached, pinned) goes: no switch is missed or counted twice.
  rc = cpu_accounting::attach(skeleton);
  if (rc != 0) KJ_FAIL_SYSCALL("attaching the CPU accounting program to sched_switch", -rc);
  uint32_t zero = 0;
  KJ_SYSCALL(bpf_map_update_elem(bpf_map__fd(skeleton->maps.active), &zero, &generation, BPF_ANY),
             "activating the CPU accounting program");
  kj::String linkPin = kj::str(pinDir, "/cpu_link");
  if (access(linkPin.cStr(), F_OK) == 0) {
    if (bpf_link* old = bpf_link__open(linkPin.cStr())) {
      bpf_link__unpin(old);
      bpf_link__destroy(old);
    }
  }
  rc = bpf_link__pin(skeleton->links.on_sched_switch, linkPin.cStr());
  if (rc != 0) KJ_FAIL_SYSCALL("pinning the CPU accounting link", -rc, linkPin);
  // An agent of the earlier layout counted into maps this one does not read:
  // its sandboxes' counts start again from here.
  for (const char* name : kEarlierPins) unlink(kj::str(pinDir, "/", name).cStr());
  return meter;
}

void CpuMeter::removePinned(kj::StringPtr pinDir) {
  auto remove = [&](const char* name) {
    kj::String path = kj::str(pinDir, "/", name);
    if (unlink(path.cStr()) != 0 && errno != ENOENT) KJ_FAIL_SYSCALL("unlink", errno, path);
  };
  for (const char* name : kPins) remove(name);
  for (const char* name : kEarlierPins) remove(name);
  if (rmdir(pinDir.cStr()) != 0 && errno != ENOENT) KJ_FAIL_SYSCALL("rmdir", errno, pinDir);
}

CpuMeter::CpuMeter(cpu_accounting* skeleton)
    : skeleton_(skeleton),
      cpus_(libbpf_num_possible_cpus()),
      slotTaken_(kj::heapArray<bool>(kMaxTracked)) {
  KJ_REQUIRE(cpus_ > 0, "cannot count the possible CPUs", cpus_);
  for (bool& taken : slotTaken_) taken = false;
}

CpuMeter::~CpuMeter() {
  cpu_accounting::destroy(skeleton_);
}

void CpuMeter::loadSlots() {
  int fd = bpf_map__fd(skeleton_->maps.tracked);
  uint64_t key, next;
  uint64_t* previous = nullptr;
  while (bpf_map_get_next_key(fd, previous, &next) == 0) {
    Tracking tracking;
    if (bpf_map_lookup_elem(fd, &next, &tracking) == 0 && tracking.slot < kMaxTracked) {
      slotTaken_[tracking.slot] = true;
    }
    key = next;
    previous = &key;
  }
}

uint32_t CpuMeter::takeSlot() {
  // Round robin: a slot just freed is the last to be taken again, so a
  // switch charged while its cgroup was being untracked cannot land in the
  // next sandbox's count.
  for (uint32_t i = 0; i < kMaxTracked; ++i) {
    uint32_t slot = (nextSlot_ + i) % kMaxTracked;
    if (!slotTaken_[slot]) {
      slotTaken_[slot] = true;
      nextSlot_ = (slot + 1) % kMaxTracked;
      return slot;
    }
  }
  KJ_FAIL_REQUIRE("the CPU meter tracks as many cgroups as it can", kMaxTracked);
}

void CpuMeter::changedTracking() {
  uint32_t zero = 0;
  uint64_t epoch = 0;
  int fd = bpf_map__fd(skeleton_->maps.epoch);
  KJ_SYSCALL(bpf_map_lookup_elem(fd, &zero, &epoch));
  ++epoch;
  KJ_SYSCALL(bpf_map_update_elem(fd, &zero, &epoch, BPF_ANY));
}

void CpuMeter::track(uint64_t cgroupId) {
  // An adopted sandbox keeps its count and the time tracking began.
  int fd = bpf_map__fd(skeleton_->maps.tracked);
  Tracking tracking{};
  if (bpf_map_lookup_elem(fd, &cgroupId, &tracking) == 0) return;
  tracking.since = monotonicNs();
  tracking.slot = takeSlot();
  KJ_ON_SCOPE_FAILURE(slotTaken_[tracking.slot] = false);
  std::vector<uint64_t> zeros(static_cast<size_t>(cpus_), 0);
  KJ_SYSCALL(bpf_map_update_elem(bpf_map__fd(skeleton_->maps.slot_ns), &tracking.slot, zeros.data(),
                                 BPF_ANY),
             "tracking a cgroup's CPU time", cgroupId);
  KJ_SYSCALL(bpf_map_update_elem(fd, &cgroupId, &tracking, BPF_NOEXIST),
             "tracking a cgroup's CPU time", cgroupId);
  changedTracking();
}

void CpuMeter::untrack(uint64_t cgroupId) {
  int fd = bpf_map__fd(skeleton_->maps.tracked);
  Tracking tracking;
  if (bpf_map_lookup_elem(fd, &cgroupId, &tracking) != 0) return;
  if (bpf_map_delete_elem(fd, &cgroupId) != 0 && errno != ENOENT) {
    KJ_FAIL_SYSCALL("untracking a cgroup's CPU time", errno, cgroupId);
  }
  if (tracking.slot < kMaxTracked) slotTaken_[tracking.slot] = false;
  changedTracking();
}

uint64_t CpuMeter::read(uint64_t cgroupId, kj::StringPtr v2Path) const {
  // What departures charged first, then how far each task's clock has gone
  // since it last left a CPU: a departure in between is missed once (never
  // counted twice).
  Tracking tracking;
  if (bpf_map_lookup_elem(bpf_map__fd(skeleton_->maps.tracked), &cgroupId, &tracking) != 0) {
    KJ_FAIL_SYSCALL("reading a cgroup's CPU time", errno, cgroupId);
  }
  std::vector<uint64_t> perCpu(static_cast<size_t>(cpus_));
  KJ_SYSCALL(
      bpf_map_lookup_elem(bpf_map__fd(skeleton_->maps.slot_ns), &tracking.slot, perCpu.data()),
      "reading a cgroup's CPU time", cgroupId);
  uint64_t total = 0;
  for (uint64_t ns : perCpu) total += ns;

  std::ifstream threads(kj::str(v2Path, "/cgroup.threads").cStr());
  std::string tid;
  while (threads >> tid) {
    // Task storage is looked up by a pidfd of the task.
    int pidfd = int(syscall(SYS_pidfd_open, std::stoi(tid), PIDFD_THREAD));
    if (pidfd < 0) continue;  // gone meanwhile
    TaskMeter seen{};
    bool known =
        bpf_map_lookup_elem(bpf_map__fd(skeleton_->maps.task_meters), &pidfd, &seen) == 0 &&
        seen.slot != kNoSlot;
    close(pidfd);
    int64_t runtime = taskRuntimeNs(tid);
    if (runtime < 0) continue;
    if (known) {
      if (uint64_t(runtime) > seen.runtime) total += uint64_t(runtime) - seen.runtime;
    } else if (taskStartNs(tid) > tracking.since + kTickSlackNs) {
      total += uint64_t(runtime);  // born under tracking, not yet off a CPU
    }
  }
  return total;
}

bool CpuMeter::tracks(uint64_t cgroupId) const {
  Tracking tracking;
  return bpf_map_lookup_elem(bpf_map__fd(skeleton_->maps.tracked), &cgroupId, &tracking) == 0;
}

void CpuMeter::retainOnly(kj::ArrayPtr<const uint64_t> keep) {
  int fd = bpf_map__fd(skeleton_->maps.tracked);
  std::vector<uint64_t> stale;
  uint64_t key, next;
  uint64_t* previous = nullptr;
  while (bpf_map_get_next_key(fd, previous, &next) == 0) {
    bool kept = false;
    for (uint64_t id : keep) kept = kept || id == next;
    if (!kept) stale.push_back(next);
    key = next;
    previous = &key;
  }
  for (uint64_t id : stale) untrack(id);
}

void ensureBpffs() {
  struct statfs fs;
  if (statfs("/sys/fs/bpf", &fs) == 0 && fs.f_type == BPF_FS_MAGIC) return;
  if (mkdir("/sys/fs/bpf", 0700) != 0 && errno != EEXIST)
    KJ_FAIL_SYSCALL("mkdir /sys/fs/bpf", errno);
  KJ_SYSCALL(mount("bpf", "/sys/fs/bpf", "bpf", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0700"),
             "mounting bpffs on /sys/fs/bpf");
}

uint64_t cgroupIdOf(kj::StringPtr v2Directory) {
  struct stat st;
  KJ_SYSCALL(stat(v2Directory.cStr(), &st), v2Directory);
  return uint64_t(st.st_ino);
}

}  // namespace nodeagent::ebpf
