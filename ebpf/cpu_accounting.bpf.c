// CPU accounting: charges every stretch of on-CPU time to the (v2) cgroup of
// the task that ran it, for the cgroups the agent tracks.
//
// sched_switch fires on the CPU that switches. A task of a tracked cgroup
// coming onto a CPU has its scheduler clock (se.sum_exec_runtime) noted; when
// it leaves, the difference (brought up to date just before this tracepoint)
// is charged to its cgroup. That is the scheduler's own measure, so time
// stolen by the hypervisor or spent in interrupts is not billed to the
// tenant. Each CPU also notes when its current stretch began and whose it is.
// A task running alone is not switched out for as long as it runs, so the
// agent adds each CPU's open stretch (`running`) when it reads.
#include "vmlinux.h"

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

// Handover between agents: each loaded copy of this program has a generation
// of its own, and only the one `active` names charges anything. A new agent
// attaches its copy, makes it active (one map write: no switch is missed or
// counted twice), then detaches the old one.
const volatile __u64 generation = 0;

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, __u64);
} active SEC(".maps");

struct stretch {
  __u64 started_ns;  // bpf_ktime_get_ns() (CLOCK_MONOTONIC); 0: nothing known yet
  __u64 cgroup_id;   // v2 cgroup of the task running since then (0: none tracked)
  __u64 pid;         // that task
};

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct stretch);
} running SEC(".maps");

// pid -> its se.sum_exec_runtime when it last came onto a CPU, for tasks of
// tracked cgroups. Per task rather than per CPU, so a switch the program did
// not see on one CPU cannot pair one task's start with another's end.
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 65536);
  __type(key, __u32);
  __type(value, __u64);
} came_in_at SEC(".maps");

// cgroup id -> on-CPU nanoseconds, per CPU. Only ids the agent inserted are
// charged: the map holds sandboxes, not every cgroup on the host.
struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
  __uint(max_entries, 16384);
  __type(key, __u64);
  __type(value, __u64);
} cpu_ns SEC(".maps");

static __always_inline __u64 cgroup_id_of(struct task_struct *task) {
  return BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
}

SEC("raw_tp/sched_switch")
int BPF_PROG(on_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next) {
  __u32 zero = 0;
  __u64 *active_generation = bpf_map_lookup_elem(&active, &zero);
  if (!active_generation || *active_generation != generation) return 0;
  struct stretch *current = bpf_map_lookup_elem(&running, &zero);
  if (!current) return 0;
  __u64 now = bpf_ktime_get_ns();
  // Charged to the cgroup the task is in now, as the kernel's own accounting
  // does: a task moved into a sandbox's cgroup while running counts there.
  __u32 prev_pid = BPF_CORE_READ(prev, pid);
  if (prev_pid != 0) {
    __u64 leaving = cgroup_id_of(prev);
    __u64 *total = bpf_map_lookup_elem(&cpu_ns, &leaving);
    __u64 *start = bpf_map_lookup_elem(&came_in_at, &prev_pid);
    if (total && start) {
      __u64 runtime = BPF_CORE_READ(prev, se.sum_exec_runtime);
      if (runtime >= *start) *total += runtime - *start;
    } else if (total && current->pid == prev_pid && current->started_ns != 0) {
      // Joined a tracked cgroup while on the CPU: no clock noted at the start,
      // so this one stretch is measured by the wall clock.
      *total += now - current->started_ns;
    }
    if (start) bpf_map_delete_elem(&came_in_at, &prev_pid);
  }
  __u32 next_pid = BPF_CORE_READ(next, pid);
  __u64 coming = next_pid == 0 ? 0 : cgroup_id_of(next);  // the idle task is no sandbox's
  if (coming != 0 && !bpf_map_lookup_elem(&cpu_ns, &coming)) coming = 0;
  if (coming != 0) {
    __u64 runtime = BPF_CORE_READ(next, se.sum_exec_runtime);
    bpf_map_update_elem(&came_in_at, &next_pid, &runtime, BPF_ANY);
  }
  current->started_ns = now;
  current->cgroup_id = coming;
  current->pid = next_pid;
  return 0;
}
