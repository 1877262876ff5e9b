// On-CPU time per sandbox, measured in the kernel: a sched_switch program
// (cpu_accounting.bpf.c) charges every stretch a task ran to the task's v2
// cgroup, for the cgroups tracked here. Independent of the cgroup's own
// counters, which it is checked against.
#pragma once

#include <kj/memory.h>
#include <kj/string.h>

#include <cstdint>

struct cpu_accounting;

namespace nodeagent::ebpf {

class CpuMeter {
 public:
  // Loads and attaches the program. Throws (with libbpf's reason) without the
  // privileges or BTF it needs.
  static kj::Own<CpuMeter> start();
  explicit CpuMeter(cpu_accounting* skeleton);
  ~CpuMeter();
  KJ_DISALLOW_COPY(CpuMeter);

  // Starts charging `cgroupId` (from zero); idempotent.
  void track(uint64_t cgroupId);
  // Stops charging it and forgets its total.
  void untrack(uint64_t cgroupId);
  // Nanoseconds its tasks have been on a CPU since track(), including the
  // stretches running right now. Not strictly monotonic: a stretch that ends
  // while this reads may be missed once (never counted twice); keep the
  // largest value seen. Throws if it is not tracked.
  uint64_t read(uint64_t cgroupId) const;

 private:
  cpu_accounting* skeleton_;
  int cpus_;
};

// The id the kernel gives a v2 cgroup (what bpf_get_current_cgroup_id() and
// the program report): the inode number of its directory.
uint64_t cgroupIdOf(kj::StringPtr v2Directory);

}  // namespace nodeagent::ebpf
