#include "ebpf/cpu_meter.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <linux/magic.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#include <kj/debug.h>

#include <vector>

#include "ebpf/cpu_accounting.skel.h"

namespace nodeagent::ebpf {
namespace {

// The program's per-CPU record of the stretch running now.
struct Stretch {
  uint64_t startedNs;
  uint64_t cgroupId;
  uint64_t pid;
};

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
  kj::String runningPin = kj::str(pinDir, "/cpu_running");
  kj::String totalsPin = kj::str(pinDir, "/cpu_ns");
  kj::String activePin = kj::str(pinDir, "/cpu_active");
  bpf_map__set_pin_path(skeleton->maps.running, runningPin.cStr());
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
  if (bpf_link* old = bpf_link__open(linkPin.cStr())) {
    bpf_link__unpin(old);
    bpf_link__destroy(old);
  }
  rc = bpf_link__pin(skeleton->links.on_sched_switch, linkPin.cStr());
  if (rc != 0) KJ_FAIL_SYSCALL("pinning the CPU accounting link", -rc, linkPin);
  return meter;
}

void CpuMeter::removePinned(kj::StringPtr pinDir) {
  for (const char* name :
       {"cpu_link", "cpu_running", "cpu_ns", "cpu_active", "cpu_last_seen", "cpu_tracked_since"}) {
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

uint64_t CpuMeter::read(uint64_t cgroupId) const {
  // Closed stretches first, then the open ones: a stretch closing in between
  // is missed once rather than counted twice.
  std::vector<uint64_t> perCpu(static_cast<size_t>(cpus_));
  int fd = bpf_map__fd(skeleton_->maps.cpu_ns);
  if (bpf_map_lookup_elem(fd, &cgroupId, perCpu.data()) != 0) {
    KJ_FAIL_SYSCALL("reading a cgroup's CPU time", errno, cgroupId);
  }
  uint64_t total = 0;
  for (uint64_t ns : perCpu) total += ns;

  std::vector<Stretch> open(static_cast<size_t>(cpus_));
  uint32_t zero = 0;
  if (bpf_map_lookup_elem(bpf_map__fd(skeleton_->maps.running), &zero, open.data()) != 0) {
    KJ_FAIL_SYSCALL("reading the running stretches", errno);
  }
  uint64_t now = monotonicNs();
  for (const Stretch& s : open) {
    if (s.cgroupId == cgroupId && s.startedNs != 0 && now > s.startedNs) {
      total += now - s.startedNs;
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
