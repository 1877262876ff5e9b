// CPU accounting: charges every stretch of on-CPU time to the (v2) cgroup of
// the task that ran it, for the cgroups the agent tracks.
//
// sched_switch fires on the CPU that switches. Each CPU remembers when its
// current stretch began and whose it is; the stretch is charged when it ends.
// A task running alone is not switched out for as long as it runs, so the
// agent adds each CPU's open stretch (`running`) when it reads.
#include "vmlinux.h"

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

struct stretch {
  __u64 started_ns;  // bpf_ktime_get_ns() (CLOCK_MONOTONIC); 0: nothing known yet
  __u64 cgroup_id;   // v2 cgroup of the task running since then (for reads in flight)
};

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct stretch);
} running SEC(".maps");

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
  struct stretch *current = bpf_map_lookup_elem(&running, &zero);
  if (!current) return 0;
  __u64 now = bpf_ktime_get_ns();
  // Charged to the cgroup the task is in now, as the kernel's own accounting
  // does: a task moved into a sandbox's cgroup while running counts there.
  if (current->started_ns != 0 && BPF_CORE_READ(prev, pid) != 0) {
    __u64 leaving = cgroup_id_of(prev);
    __u64 *total = bpf_map_lookup_elem(&cpu_ns, &leaving);
    if (total) *total += now - current->started_ns;
  }
  current->started_ns = now;
  // The idle task (pid 0) belongs to no sandbox.
  current->cgroup_id = BPF_CORE_READ(next, pid) == 0 ? 0 : cgroup_id_of(next);
  return 0;
}
