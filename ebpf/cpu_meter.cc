#include "ebpf/cpu_meter.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <kj/debug.h>

#include <vector>

#include "ebpf/cpu_accounting.skel.h"

namespace nodeagent::ebpf {
namespace {

// The program's per-CPU record of the stretch running now.
struct Stretch {
  uint64_t startedNs;
  uint64_t cgroupId;
};

uint64_t monotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);  // the clock bpf_ktime_get_ns() reads
  return uint64_t(ts.tv_sec) * 1000000000 + uint64_t(ts.tv_nsec);
}

}  // namespace

kj::Own<CpuMeter> CpuMeter::start() {
  cpu_accounting* skeleton = cpu_accounting::open_and_load();
  if (skeleton == nullptr) {
    KJ_FAIL_SYSCALL("loading the CPU accounting BPF program", errno);
  }
  auto meter = kj::heap<CpuMeter>(skeleton);
  int rc = cpu_accounting::attach(skeleton);
  if (rc != 0) KJ_FAIL_SYSCALL("attaching the CPU accounting program to sched_switch", -rc);
  return meter;
}

CpuMeter::CpuMeter(cpu_accounting* skeleton)
    : skeleton_(skeleton), cpus_(libbpf_num_possible_cpus()) {
  KJ_REQUIRE(cpus_ > 0, "cannot count the possible CPUs", cpus_);
}

CpuMeter::~CpuMeter() {
  cpu_accounting::destroy(skeleton_);
}

void CpuMeter::track(uint64_t cgroupId) {
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

uint64_t cgroupIdOf(kj::StringPtr v2Directory) {
  struct stat st;
  KJ_SYSCALL(stat(v2Directory.cStr(), &st), v2Directory);
  return uint64_t(st.st_ino);
}

}  // namespace nodeagent::ebpf
