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
// task coming in: a switch costs one cgroup lookup unless a tracked task leaves.
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

// What a task's clock read when it last left a CPU, for tasks of tracked
// cgroups: kept on the task itself (task storage, freed with the task).
struct seen {
  __u64 runtime;
};

struct {
  __uint(type, BPF_MAP_TYPE_TASK_STORAGE);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, int);
  __type(value, struct seen);
} last_seen SEC(".maps");

// cgroup id -> on-CPU nanoseconds, per CPU. Only ids the agent inserted are
// charged: the map holds sandboxes, not every cgroup on the host.
struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
  __uint(max_entries, 16384);
  __type(key, __u64);
  __type(value, __u64);
} cpu_ns SEC(".maps");

// cgroup id -> when the agent began tracking it (bpf_ktime_get_ns clock).
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 16384);
  __type(key, __u64);
  __type(value, __u64);
} tracked_since SEC(".maps");

// Charges the leaving task of a tracked cgroup the part of its clock not
// charged yet, and remembers where its clock stands.
static __always_inline void charge(struct task_struct *task, __u64 cgroup, __u64 *total) {
  __u64 runtime = task->se.sum_exec_runtime;
  struct seen *last = bpf_task_storage_get(&last_seen, task, 0, 0);
  if (last) {
    if (runtime >= last->runtime) *total += runtime - last->runtime;
    last->runtime = runtime;
    return;
  }
  // Its first departure since tracking began. Born under tracking: all of
  // its clock is this cgroup's. Older: counted from now on (its clock so far
  // belongs to wherever it ran before).
  __u64 *since = bpf_map_lookup_elem(&tracked_since, &cgroup);
  if (since && task->start_time >= *since) *total += runtime;
  last = bpf_task_storage_get(&last_seen, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
  if (last) last->runtime = runtime;
}

SEC("raw_tp/sched_switch")
int on_sched_switch(void *ctx) {
  __u32 zero = 0;
  __u64 *active_generation = bpf_map_lookup_elem(&active, &zero);
  if (!active_generation || *active_generation != generation) return 0;
  // The task leaving is still `current` here: its fields are read directly
  // (a BTF pointer), which costs far less per switch than probe reads.
  __u32 pid = (__u32)bpf_get_current_pid_tgid();
  if (pid == 0) return 0;  // the idle task
  // Charged to the cgroup the task is in now, as the kernel's own accounting does.
  __u64 leaving = bpf_get_current_cgroup_id();
  __u64 *total = bpf_map_lookup_elem(&cpu_ns, &leaving);
  if (total) charge(bpf_get_current_task_btf(), leaving, total);
  return 0;
}
