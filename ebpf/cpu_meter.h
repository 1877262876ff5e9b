// On-CPU time per sandbox, measured in the kernel: a sched_switch program
// (cpu_accounting.bpf.c) charges every stretch a task ran to the task's v2
// cgroup, for the cgroups tracked here. Independent of the cgroup's own
// counters, which it is checked against.
#pragma once

#include <kj/array.h>
#include <kj/memory.h>
#include <kj/string.h>

#include <cstdint>

struct cpu_accounting;

namespace nodeagent::ebpf {

class CpuMeter {
 public:
  // Loads the program and attaches it to sched_switch, with its maps and its
  // link pinned in `pinDir` (on bpffs, mounted at /sys/fs/bpf if it is not):
  // the program keeps counting while no agent runs, and the next start()
  // takes over the same counters (replacing the program, so an upgrade takes
  // effect). Throws (with libbpf's reason) without the privileges or BTF it
  // needs.
  static kj::Own<CpuMeter> start(kj::StringPtr pinDir);
  // Detaches the program and deletes its pinned maps (uninstall, tests).
  static void removePinned(kj::StringPtr pinDir);
  explicit CpuMeter(cpu_accounting* skeleton);
  ~CpuMeter();
  KJ_DISALLOW_COPY(CpuMeter);

  // Starts charging `cgroupId` (from zero); idempotent. Throws when 16384
  // cgroups are tracked already.
  void track(uint64_t cgroupId);
  // Stops charging it and forgets its total.
  void untrack(uint64_t cgroupId);
  // Nanoseconds its tasks have been on a CPU since track(), including how far
  // the clocks of its tasks (the threads in `v2Path`, its directory) have gone
  // since they last left a CPU. Not strictly monotonic: a task leaving a CPU
  // while this reads may be missed once (never counted twice); keep the
  // largest value seen. Throws if it is not tracked.
  uint64_t read(uint64_t cgroupId, kj::StringPtr v2Path) const;
  bool tracks(uint64_t cgroupId) const;
  // Untracks every cgroup not in `keep` (ended while no agent ran).
  void retainOnly(kj::ArrayPtr<const uint64_t> keep);

 private:
  cpu_accounting* skeleton_;
  int cpus_;
  // Which slots of the program's per-CPU counters tracked cgroups hold
  // (rebuilt from the pinned map at start), and where the search for a free
  // one starts.
  kj::Array<bool> slotTaken_;
  uint32_t nextSlot_ = 0;

  void loadSlots();
  uint32_t takeSlot();
  // Tells the program that the tracked set changed (what tasks remember of
  // it is stale).
  void changedTracking();
};

// Mounts bpffs on /sys/fs/bpf unless it is there already.
void ensureBpffs();

// The id the kernel gives a v2 cgroup (what bpf_get_current_cgroup_id() and
// the program report): the inode number of its directory.
uint64_t cgroupIdOf(kj::StringPtr v2Directory);

}  // namespace nodeagent::ebpf
