// CPU accounting: charges on-CPU time to the (v2) cgroup of the task that
// ran it, for the cgroups the agent tracks.
//
// sched_switch fires on the CPU that switches, just after the scheduler
// brought the leaving task's clock (se.sum_exec_runtime) up to date. Each
// time a task of a tracked cgroup leaves a CPU, the time its clock advanced
// since it last left one is charged to its cgroup. Nothing pairs an arrival
// with a departure, so a switch the program does not see loses nothing, and
// the scheduler's own clock leaves out time stolen by the hypervisor or spent
// in interrupts. A task born after its cgroup was tracked is charged its
// whole clock the first time it leaves; an older one only from then on.
//
// A task that runs alone is not switched out for as long as it runs, so the
// agent adds, when it reads, how far each task's clock has gone since it was
// last seen leaving (from /proc, see cpu_meter.cc). Nothing is done for the
// task coming in. A switch costs one task-storage lookup: each task remembers
// whether its cgroup is tracked, and where its time goes, until it moves or
// the agent changes the tracked set.
#include "vmlinux.h"

#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

// Handover between agents: each loaded copy of this program has a generation
// of its own, and only the one `active` names charges anything. A new agent
// attaches its copy, makes it active (one map write: no switch is charged
// twice), then detaches the old one.
const volatile __u64 generation = 0;

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, __u64);
} active SEC(".maps");

#define MAX_TRACKED 16384
#define NO_SLOT 0xffffffffu

// A tracked cgroup: when the agent began tracking it (bpf_ktime_get_ns
// clock) and the slot of `slot_ns` its time goes to.
struct tracking {
  __u64 since;
  __u32 slot;
  __u32 unused;
};

// cgroup id -> its tracking. Only ids the agent inserted are charged: the map
// holds sandboxes, not every cgroup on the host.
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, MAX_TRACKED);
  __type(key, __u64);
  __type(value, struct tracking);
} tracked SEC(".maps");

// slot -> on-CPU nanoseconds, per CPU.
struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, MAX_TRACKED);
  __type(key, __u32);
  __type(value, __u64);
} slot_ns SEC(".maps");

// Bumped by the agent whenever `tracked` changes: what a task remembers of
// its cgroup's tracking holds only while the epoch it was learnt in lasts.
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, __u64);
} epoch SEC(".maps");

// What a task remembers, on the task itself (task storage, freed with it):
// the cgroup it last left a CPU in and, as of `epoch`, that cgroup's slot
// (NO_SLOT: not tracked); and, while it is charged, what its clock read when
// it last left a CPU. So a switch costs one task-storage lookup, not a
// lookup of the cgroup in `tracked`.
struct task_meter {
  __u64 runtime;
  __u64 cgroup;
  __u64 epoch;
  __u32 slot;
  __u32 unused;
};

struct {
  __uint(type, BPF_MAP_TYPE_TASK_STORAGE);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, int);
  __type(value, struct task_meter);
} task_meters SEC(".maps");

// The slow path: the task is new to the program, moved to another cgroup or
// the tracked set changed since it last left a CPU. Looks its cgroup up,
// charges what is due and remembers the answer.
static __always_inline int resolve(struct task_struct *task, struct task_meter *meter,
                                   __u64 cgroup, __u64 runtime, __u64 current_epoch) {
  if (!meter) {
    meter = bpf_task_storage_get(&task_meters, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (!meter) return 0;
    meter->slot = NO_SLOT;
  }
  __u32 slot = NO_SLOT;
  struct tracking *tracking = bpf_map_lookup_elem(&tracked, &cgroup);
  if (tracking) {
    slot = tracking->slot;
    __u64 *total = bpf_map_lookup_elem(&slot_ns, &slot);
    if (!total) {
      slot = NO_SLOT;
    } else if (meter->slot != NO_SLOT) {
      // Charged before: its clock since it last left a CPU, to the cgroup it
      // is in now (as the kernel's own accounting does).
      if (runtime >= meter->runtime) *total += runtime - meter->runtime;
    } else if (task->start_time >= tracking->since) {
      // Born under tracking: all of its clock is this cgroup's. Older:
      // counted from now on (its clock so far belongs to wherever it ran).
      *total += runtime;
    }
    meter->runtime = runtime;
  }
  meter->slot = slot;
  meter->cgroup = cgroup;
  meter->epoch = current_epoch;
  return 0;
}

SEC("raw_tp/sched_switch")
int on_sched_switch(void *ctx) {
  __u32 zero = 0;
  __u64 *active_generation = bpf_map_lookup_elem(&active, &zero);
  if (!active_generation || *active_generation != generation) return 0;
  __u64 *current_epoch = bpf_map_lookup_elem(&epoch, &zero);
  if (!current_epoch) return 0;
  // The task leaving is still `current` here: its fields, down to its v2
  // cgroup's id (what bpf_get_current_cgroup_id() returns), are read
  // directly through BTF pointers, cheaper per switch than helper calls.
  struct task_struct *task = bpf_get_current_task_btf();
  if (task->pid == 0) return 0;  // the idle task
  __u64 cgroup = task->cgroups->dfl_cgrp->kn->id;
  __u64 runtime = task->se.sum_exec_runtime;
  struct task_meter *meter = bpf_task_storage_get(&task_meters, task, 0, 0);
  if (!meter || meter->cgroup != cgroup || meter->epoch != *current_epoch)
    return resolve(task, meter, cgroup, runtime, *current_epoch);
  if (meter->slot == NO_SLOT) return 0;
  __u32 slot = meter->slot;
  __u64 *total = bpf_map_lookup_elem(&slot_ns, &slot);
  if (!total) return 0;
  if (runtime >= meter->runtime) *total += runtime - meter->runtime;
  meter->runtime = runtime;
  return 0;
}
