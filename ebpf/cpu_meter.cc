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

// The program's record of a task's clock when it last left a CPU.
struct Seen {
  uint64_t runtime;
};

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
  kj::String totalsPin = kj::str(pinDir, "/cpu_ns");
  kj::String activePin = kj::str(pinDir, "/cpu_active");
  bpf_map__set_pin_path(skeleton->maps.cpu_ns, totalsPin.cStr());
  bpf_map__set_pin_path(skeleton->maps.active, activePin.cStr());
  kj::String lastSeenPin = kj::str(pinDir, "/cpu_last_seen");
  bpf_map__set_pin_path(skeleton->maps.last_seen, lastSeenPin.cStr());
  kj::String sincePin = kj::str(pinDir, "/cpu_tracked_since");
  bpf_map__set_pin_path(skeleton->maps.tracked_since, sincePin.cStr());
  int rc = cpu_accounting::load(skeleton);
  if (rc != 0) KJ_FAIL_SYSCALL("loading the CPU accounting BPF program", -rc, pinDir);

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
  return meter;
}

void CpuMeter::removePinned(kj::StringPtr pinDir) {
  for (const char* name :
       {"cpu_link", "cpu_ns", "cpu_active", "cpu_last_seen", "cpu_tracked_since"}) {
    kj::String path = kj::str(pinDir, "/", name);
    if (unlink(path.cStr()) != 0 && errno != ENOENT) KJ_FAIL_SYSCALL("unlink", errno, path);
  }
  if (rmdir(pinDir.cStr()) != 0 && errno != ENOENT) KJ_FAIL_SYSCALL("rmdir", errno, pinDir);
}

CpuMeter::CpuMeter(cpu_accounting* skeleton)
    : skeleton_(skeleton), cpus_(libbpf_num_possible_cpus()) {
  KJ_REQUIRE(cpus_ > 0, "cannot count the possible CPUs", cpus_);
}

CpuMeter::~CpuMeter() {
  cpu_accounting::destroy(skeleton_);
}

void CpuMeter::track(uint64_t cgroupId) {
  // An adopted sandbox keeps its count and the time tracking began.
  uint64_t now = monotonicNs();
  if (bpf_map_update_elem(bpf_map__fd(skeleton_->maps.tracked_since), &cgroupId, &now,
                          BPF_NOEXIST) != 0 &&
      errno != EEXIST) {
    KJ_FAIL_SYSCALL("tracking a cgroup's CPU time", errno, cgroupId);
  }
  std::vector<uint64_t> zeros(static_cast<size_t>(cpus_), 0);
  int fd = bpf_map__fd(skeleton_->maps.cpu_ns);
  if (bpf_map_update_elem(fd, &cgroupId, zeros.data(), BPF_NOEXIST) != 0 && errno != EEXIST) {
    KJ_FAIL_SYSCALL("tracking a cgroup's CPU time", errno, cgroupId);
  }
}

void CpuMeter::untrack(uint64_t cgroupId) {
  int fd = bpf_map__fd(skeleton_->maps.cpu_ns);
  if (bpf_map_delete_elem(fd, &cgroupId) != 0 && errno != ENOENT) {
    KJ_FAIL_SYSCALL("untracking a cgroup's CPU time", errno, cgroupId);
  }
  bpf_map_delete_elem(bpf_map__fd(skeleton_->maps.tracked_since), &cgroupId);
}

uint64_t CpuMeter::read(uint64_t cgroupId, kj::StringPtr v2Path) const {
  // What departures charged first, then how far each task's clock has gone
  // since it last left a CPU: a departure in between is missed once (never
  // counted twice).
  std::vector<uint64_t> perCpu(static_cast<size_t>(cpus_));
  int fd = bpf_map__fd(skeleton_->maps.cpu_ns);
  if (bpf_map_lookup_elem(fd, &cgroupId, perCpu.data()) != 0) {
    KJ_FAIL_SYSCALL("reading a cgroup's CPU time", errno, cgroupId);
  }
  uint64_t total = 0;
  for (uint64_t ns : perCpu) total += ns;

  uint64_t since = 0;
  bpf_map_lookup_elem(bpf_map__fd(skeleton_->maps.tracked_since), &cgroupId, &since);
  std::ifstream threads(kj::str(v2Path, "/cgroup.threads").cStr());
  std::string tid;
  while (threads >> tid) {
    // Task storage is looked up by a pidfd of the task.
    int pidfd = int(syscall(SYS_pidfd_open, std::stoi(tid), PIDFD_THREAD));
    if (pidfd < 0) continue;  // gone meanwhile
    Seen seen{};
    bool known = bpf_map_lookup_elem(bpf_map__fd(skeleton_->maps.last_seen), &pidfd, &seen) == 0;
    close(pidfd);
    int64_t runtime = taskRuntimeNs(tid);
    if (runtime < 0) continue;
    if (known) {
      if (uint64_t(runtime) > seen.runtime) total += uint64_t(runtime) - seen.runtime;
    } else if (since != 0 && taskStartNs(tid) > since + kTickSlackNs) {
      total += uint64_t(runtime);  // born under tracking, not yet off a CPU
    }
  }
  return total;
}

bool CpuMeter::tracks(uint64_t cgroupId) const {
  std::vector<uint64_t> perCpu(static_cast<size_t>(cpus_));
  return bpf_map_lookup_elem(bpf_map__fd(skeleton_->maps.cpu_ns), &cgroupId, perCpu.data()) == 0;
}

void CpuMeter::retainOnly(kj::ArrayPtr<const uint64_t> keep) {
  int fd = bpf_map__fd(skeleton_->maps.cpu_ns);
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
