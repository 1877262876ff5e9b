// The benchmark's peer for the CPU meter (bench/sched_switch_overhead.cc): a
// program on the same hook that does nothing. What it costs is the kernel's
// price for running any BPF program on every context switch, which no meter
// can go below.
#include "vmlinux.h"

#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

SEC("raw_tp/sched_switch")
int on_sched_switch_floor(void *ctx) {
  return 0;
}
