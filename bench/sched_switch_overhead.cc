// Cost of the eBPF CPU meter on context switches: two processes ping-pong a
// byte over pipes (two switches per round trip), with the sched_switch
// program attached and tracking their cgroup, and without it, interleaved in
// the same run. Prints one JSON object.
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
#include <string>
#include <vector>

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
  std::vector<double> without, with;
  for (int t = 0; t < trials; ++t) {
    without.push_back(pingPongRate(rounds, cgroup));
    {
      auto meter = nodeagent::ebpf::CpuMeter::start(pins);
      meter->track(nodeagent::ebpf::cgroupIdOf(cgroup));
      with.push_back(pingPongRate(rounds, cgroup));
      meter = nullptr;
      nodeagent::ebpf::CpuMeter::removePinned(pins);
    }
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
  printf(
      "{\n  \"benchmark\": \"sched_switch_meter_overhead\",\n  \"rounds\": %d,\n"
      "  \"trials\": %d,\n  \"round_trips_per_s_without\": %.0f,\n"
      "  \"round_trips_per_s_with_meter\": %.0f,\n  \"switch_rate_loss_fraction\": %.4f\n}\n",
      rounds, trials, a, b, (a - b) / a);
  return 0;
}
