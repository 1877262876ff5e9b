// Cost of the eBPF CPU meter on context switches: two processes ping-pong a
// byte over pipes (two switches per round trip), with the sched_switch
// program attached and tracking their cgroup, and without it, interleaved in
// the same run, in alternating order. Two figures: the paired loss of the
// round-trip rate (noisy on a VM: a few percent run to run), and the share
// of the "with" runs' CPU time spent inside the program itself, from the
// kernel's BPF run-time statistics (steady; it is the cost the program adds,
// since the ping-pong is CPU-bound on one CPU). Prints one JSON object.
//
//   build/bin/bench-sched-switch [--rounds N] [--trials T]
#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <bpf/bpf.h>
#include <kj/debug.h>

#include "ebpf/cpu_meter.h"

namespace {

using Clock = std::chrono::steady_clock;

// Round trips per second between this process and a child, both in `cgroup`
// and pinned to one CPU (so every hop is a context switch, not a cross-CPU
// wakeup).
double pingPongRate(int rounds, const std::string& cgroup) {
  int there[2], back[2];
  KJ_SYSCALL(pipe(there));
  KJ_SYSCALL(pipe(back));
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(0, &one);
  pid_t child = fork();
  if (child == 0) {
    close(there[1]);  // or its reads never see EOF
    close(back[0]);
    sched_setaffinity(0, sizeof(one), &one);
    char c;
    while (read(there[0], &c, 1) == 1) {
      if (write(back[1], &c, 1) != 1) break;
    }
    _exit(0);
  }
  close(there[0]);
  close(back[1]);
  for (pid_t p : {getpid(), child}) {
    int fd = open((cgroup + "/cgroup.procs").c_str(), O_WRONLY);
    std::string s = std::to_string(p);
    KJ_ASSERT(fd >= 0 && write(fd, s.data(), s.size()) == ssize_t(s.size()));
    close(fd);
  }
  cpu_set_t all;
  sched_getaffinity(0, sizeof(all), &all);
  sched_setaffinity(0, sizeof(one), &one);
  char c = 'x';
  auto start = Clock::now();
  for (int i = 0; i < rounds; ++i) {
    KJ_ASSERT(write(there[1], &c, 1) == 1);
    KJ_ASSERT(read(back[0], &c, 1) == 1);
  }
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  close(there[1]);
  waitpid(child, nullptr, 0);
  close(back[0]);
  sched_setaffinity(0, sizeof(all), &all);
  return rounds / seconds;
}

std::string cgroup2Root() {
  struct stat st;
  if (stat("/sys/fs/cgroup/unified/cgroup.procs", &st) == 0) return "/sys/fs/cgroup/unified";
  return "/sys/fs/cgroup";
}

// run_time_ns and run_cnt of the loaded program called `name` (the kernel
// keeps them while kernel.bpf_stats_enabled is 1); zeros if none.
std::pair<uint64_t, uint64_t> programStats(const char* name) {
  uint32_t id = 0;
  while (bpf_prog_get_next_id(id, &id) == 0) {
    int fd = bpf_prog_get_fd_by_id(id);
    if (fd < 0) continue;
    bpf_prog_info info{};
    uint32_t length = sizeof(info);
    bool found = bpf_obj_get_info_by_fd(fd, &info, &length) == 0 && strcmp(info.name, name) == 0;
    close(fd);
    if (found) return {info.run_time_ns, info.run_cnt};
  }
  return {0, 0};
}

void setBpfStats(bool on) {
  int fd = open("/proc/sys/kernel/bpf_stats_enabled", O_WRONLY);
  if (fd < 0) return;
  KJ_ASSERT(write(fd, on ? "1" : "0", 1) == 1);
  close(fd);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 200000, trials = 7;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--rounds" && i + 1 < argc) rounds = atoi(argv[++i]);
    if (a == "--trials" && i + 1 < argc) trials = atoi(argv[++i]);
  }
  if (geteuid() != 0) {
    fprintf(stderr, "bench-sched-switch needs root\n");
    return 1;
  }
  std::string home = cgroup2Root();
  std::string cgroup = home + "/nodeagent-bench-sched-" + std::to_string(getpid());
  KJ_SYSCALL(mkdir(cgroup.c_str(), 0755));
  kj::String pins = kj::str("/sys/fs/bpf/nodeagent-bench-sched-", getpid());
  std::vector<double> without, with, pairedLoss, programShare, nsPerRun;
  for (int t = 0; t < trials; ++t) {
    auto measureWith = [&]() {
      auto meter = nodeagent::ebpf::CpuMeter::start(pins);
      meter->track(nodeagent::ebpf::cgroupIdOf(cgroup));
      // The rate is measured with the kernel's BPF statistics off: they add
      // two clock reads to every run of the program, which is not the
      // meter's cost. Its own share is measured on a separate, shorter run.
      double rate = pingPongRate(rounds, cgroup);
      setBpfStats(true);
      auto before = programStats("on_sched_switch");
      auto start = Clock::now();
      pingPongRate(rounds / 4, cgroup);
      double elapsedNs = std::chrono::duration<double, std::nano>(Clock::now() - start).count();
      auto after = programStats("on_sched_switch");
      setBpfStats(false);
      double runNs = double(after.first - before.first);
      double runs = double(after.second - before.second);
      programShare.push_back(runNs / elapsedNs);
      if (runs > 0) nsPerRun.push_back(runNs / runs);
      meter = nullptr;
      nodeagent::ebpf::CpuMeter::removePinned(pins);
      return rate;
    };
    double off, on;
    if (t % 2 == 0) {  // alternate the order: neither side always runs warm
      off = pingPongRate(rounds, cgroup);
      on = measureWith();
    } else {
      on = measureWith();
      off = pingPongRate(rounds, cgroup);
    }
    without.push_back(off);
    with.push_back(on);
    pairedLoss.push_back((off - on) / off);
    // Back home, so the cgroup can go.
    int fd = open((home + "/cgroup.procs").c_str(), O_WRONLY);
    std::string self = std::to_string(getpid());
    if (fd >= 0) {
      KJ_ASSERT(write(fd, self.data(), self.size()) == ssize_t(self.size()));
      close(fd);
    }
  }
  rmdir(cgroup.c_str());
  double a = median(without), b = median(with);
  std::vector<double> sortedLoss = pairedLoss;
  std::sort(sortedLoss.begin(), sortedLoss.end());
  printf(
      "{\n  \"benchmark\": \"sched_switch_meter_overhead\",\n  \"rounds\": %d,\n"
      "  \"trials\": %d,\n  \"round_trips_per_s_without\": %.0f,\n"
      "  \"round_trips_per_s_with_meter\": %.0f,\n  \"switch_rate_loss_fraction\": %.4f,\n"
      "  \"paired_loss_median\": %.4f,\n  \"paired_loss_min_max\": [%.4f, %.4f],\n"
      "  \"program_share_of_cpu\": %.4f,\n  \"program_ns_per_switch\": %.1f,\n"
      "  \"goal_loss_max\": 0.02\n}\n",
      rounds, trials, a, b, (a - b) / a, median(pairedLoss), sortedLoss.front(), sortedLoss.back(),
      median(programShare), nsPerRun.empty() ? 0.0 : median(nsPerRun));
  return 0;
}
