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
// A task that runs alone is not switched out for as long as it runs, so each
// CPU also notes when its current stretch began and whose it is (`running`),
// and the agent adds those open stretches when it reads.
#include "vmlinux.h"

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

#define TASK_DEAD_STATE 0x80  // TASK_DEAD: this is the task's last switch

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

// What a task's clock read when it last left a CPU (tasks of tracked
// cgroups), with its start time to tell a reused pid apart.
struct seen {
  __u64 runtime;
  __u64 start_time;
};

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 65536);
  __type(key, __u32);
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

static __always_inline __u64 cgroup_id_of(struct task_struct *task) {
  return BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
}

// The part of the leaving task's clock not charged yet.
static __always_inline __u64 unbilled(struct task_struct *prev, __u32 pid, __u64 cgroup,
                                      struct stretch *current, __u64 now) {
  __u64 runtime = BPF_CORE_READ(prev, se.sum_exec_runtime);
  __u64 start_time = BPF_CORE_READ(prev, start_time);
  struct seen *last = bpf_map_lookup_elem(&last_seen, &pid);
  if (last && last->start_time == start_time && runtime >= last->runtime) {
    return runtime - last->runtime;
  }
  __u64 *since = bpf_map_lookup_elem(&tracked_since, &cgroup);
  if (since && start_time >= *since) return runtime;  // born under tracking
  // Older than the tracking: only the stretch ending now, if this CPU saw it begin.
  if (current->pid == pid && current->started_ns != 0 && now > current->started_ns) {
    return now - current->started_ns;
  }
  return 0;
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
  // does: a task moved into a sandbox's cgroup counts there from the move.
  __u32 prev_pid = BPF_CORE_READ(prev, pid);
  if (prev_pid != 0) {
    __u64 leaving = cgroup_id_of(prev);
    __u64 *total = bpf_map_lookup_elem(&cpu_ns, &leaving);
    if (total) {
      *total += unbilled(prev, prev_pid, leaving, current, now);
      if (BPF_CORE_READ(prev, __state) & TASK_DEAD_STATE) {
        bpf_map_delete_elem(&last_seen, &prev_pid);
      } else {
        struct seen seen = {
            .runtime = BPF_CORE_READ(prev, se.sum_exec_runtime),
            .start_time = BPF_CORE_READ(prev, start_time),
        };
        bpf_map_update_elem(&last_seen, &prev_pid, &seen, BPF_ANY);
      }
    }
  }

  __u32 next_pid = BPF_CORE_READ(next, pid);
  __u64 coming = next_pid == 0 ? 0 : cgroup_id_of(next);  // the idle task is no sandbox's
  if (coming != 0 && !bpf_map_lookup_elem(&cpu_ns, &coming)) coming = 0;
  current->started_ns = now;
  current->cgroup_id = coming;
  current->pid = next_pid;
  return 0;
}
