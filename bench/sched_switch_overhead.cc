// Cost of the eBPF CPU meter on context switches: this process and a child
// ping-pong a byte over pipes on one CPU (two switches per round trip), in
// one cgroup the meter tracks. Short windows without any program, with a
// no-op program on the same hook (the kernel's price for running any
// program on every switch: the floor), and with the meter, interleaved in a
// rotating order. Reports the paired loss of the round-trip rate for each,
// as median, mean and its standard error. Prints one JSON object.
//
//   build/bin/bench-sched-switch [--rounds N] [--trials T]
#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <kj/debug.h>

#include "ebpf/cpu_accounting.skel.h"
#include "ebpf/cpu_meter.h"
#include "ebpf/sched_switch_floor.skel.h"

namespace {

using Clock = std::chrono::steady_clock;

// A child that echoes each byte back over a pipe pair; the benchmark and the
// child sit in one cgroup and on one CPU, so every hop is a context switch,
// not a cross-CPU wakeup. It lives through all the windows of a run, so the
// windows with and without the program differ in nothing else.
class PingPong {
 public:
  explicit PingPong(const std::string& cgroup) {
    int there[2], back[2];
    KJ_SYSCALL(pipe(there));
    KJ_SYSCALL(pipe(back));
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(0, &one);
    child_ = fork();
    if (child_ == 0) {
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
    to_ = there[1];
    from_ = back[0];
    for (pid_t p : {getpid(), child_}) {
      int fd = open((cgroup + "/cgroup.procs").c_str(), O_WRONLY);
      std::string s = std::to_string(p);
      KJ_ASSERT(fd >= 0 && write(fd, s.data(), s.size()) == ssize_t(s.size()));
      close(fd);
    }
    sched_getaffinity(0, sizeof(all_), &all_);
    sched_setaffinity(0, sizeof(one), &one);
  }
  ~PingPong() {
    close(to_);
    waitpid(child_, nullptr, 0);
    close(from_);
    sched_setaffinity(0, sizeof(all_), &all_);
  }

  // Round trips per second over `rounds` round trips.
  double rate(int rounds) {
    char c = 'x';
    auto start = Clock::now();
    for (int i = 0; i < rounds; ++i) {
      KJ_ASSERT(write(to_, &c, 1) == 1);
      KJ_ASSERT(read(from_, &c, 1) == 1);
    }
    return rounds / std::chrono::duration<double>(Clock::now() - start).count();
  }

 private:
  pid_t child_;
  int to_, from_;
  cpu_set_t all_;
};

std::string cgroup2Root() {
  struct stat st;
  if (stat("/sys/fs/cgroup/unified/cgroup.procs", &st) == 0) return "/sys/fs/cgroup/unified";
  return "/sys/fs/cgroup";
}

struct Summary {
  double median, mean, standardError, min, max;
};

Summary summarize(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  double mean = 0;
  for (double x : v) mean += x;
  mean /= double(v.size());
  double variance = 0;
  for (double x : v) variance += (x - mean) * (x - mean);
  double n = double(v.size());
  return {v[v.size() / 2], mean, n > 1 ? std::sqrt(variance / (n - 1) / n) : 0, v.front(),
          v.back()};
}

void printLoss(const char* name, const Summary& s, bool last = false) {
  printf(
      "  \"%s\": {\"median\": %.4f, \"mean\": %.4f, \"standard_error\": %.4f, "
      "\"min\": %.4f, \"max\": %.4f}%s\n",
      name, s.median, s.mean, s.standardError, s.min, s.max, last ? "" : ",");
}

// Moves this process to `cgroup` (a v2 directory).
void joinCgroup(const std::string& cgroup) {
  int fd = open((cgroup + "/cgroup.procs").c_str(), O_WRONLY);
  std::string self = std::to_string(getpid());
  KJ_ASSERT(fd >= 0 && write(fd, self.data(), self.size()) == ssize_t(self.size()), cgroup);
  close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 5000, trials = 200;
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

  // The agent's program, loaded as CpuMeter loads it and tracking the
  // ping-pong's cgroup, and the no-op peer on the same hook. Only their
  // attachment to sched_switch comes and goes between windows (a program
  // load per window would take longer than a window).
  cpu_accounting* meter = cpu_accounting::open();
  KJ_ASSERT(meter != nullptr);
  meter->rodata->generation = 1;
  KJ_ASSERT(cpu_accounting::load(meter) == 0, "loading the CPU accounting program");
  sched_switch_floor* floor = sched_switch_floor::open_and_load();
  KJ_ASSERT(floor != nullptr, "loading the no-op program");
  // Tracked as CpuMeter::track() tracks it: in slot 0, since boot.
  uint32_t zero = 0;
  uint64_t generation = 1, cgroupId = nodeagent::ebpf::cgroupIdOf(cgroup);
  struct {
    uint64_t since;
    uint32_t slot, unused;
  } tracking{0, zero, 0};
  std::vector<uint64_t> perCpu(size_t(libbpf_num_possible_cpus()), 0);
  KJ_SYSCALL(bpf_map_update_elem(bpf_map__fd(meter->maps.active), &zero, &generation, 0));
  KJ_SYSCALL(bpf_map_update_elem(bpf_map__fd(meter->maps.slot_ns), &zero, perCpu.data(), 0));
  KJ_SYSCALL(bpf_map_update_elem(bpf_map__fd(meter->maps.tracked), &cgroupId, &tracking, 0));

  // Rates (round trips/s) without any program, with the no-op, with the meter.
  enum { kNone, kFloor, kMeter, kConditions };
  std::vector<double> rates[kConditions];
  std::vector<double> meterLoss, floorLoss, meterOverFloor;
  {
    PingPong pingPong(cgroup);
    auto measure = [&](int condition) {
      bpf_link* link = nullptr;
      if (condition == kFloor) link = bpf_program__attach(floor->progs.on_sched_switch_floor);
      if (condition == kMeter) link = bpf_program__attach(meter->progs.on_sched_switch);
      KJ_ASSERT(condition == kNone || link != nullptr, "attaching to sched_switch");
      double rate = pingPong.rate(rounds);
      if (link != nullptr) bpf_link__destroy(link);
      return rate;
    };
    measure(kNone);  // warm-up
    // Short windows of the three, in a rotating order: slow drift of the
    // host (other guests, frequency) falls on all of them alike.
    for (int t = 0; t < trials; ++t) {
      double rate[kConditions];
      for (int i = 0; i < kConditions; ++i) {
        int condition = (t + i) % kConditions;
        rate[condition] = measure(condition);
      }
      for (int c = 0; c < kConditions; ++c) rates[c].push_back(rate[c]);
      meterLoss.push_back((rate[kNone] - rate[kMeter]) / rate[kNone]);
      floorLoss.push_back((rate[kNone] - rate[kFloor]) / rate[kNone]);
      meterOverFloor.push_back((rate[kFloor] - rate[kMeter]) / rate[kNone]);
    }
  }
  joinCgroup(home);  // so the cgroup can go
  rmdir(cgroup.c_str());
  // The meter did charge the ping-pong: the figure is the cost of metering.
  KJ_SYSCALL(bpf_map_lookup_elem(bpf_map__fd(meter->maps.slot_ns), &zero, perCpu.data()));
  uint64_t chargedNs = 0;
  for (uint64_t ns : perCpu) chargedNs += ns;
  KJ_ASSERT(chargedNs > 0, "the meter charged nothing");
  cpu_accounting::destroy(meter);
  sched_switch_floor::destroy(floor);

  printf(
      "{\n  \"benchmark\": \"sched_switch_meter_overhead\",\n"
      "  \"rounds_per_window\": %d,\n  \"window_triples\": %d,\n"
      "  \"round_trips_per_s\": {\"none\": %.0f, \"noop_program\": %.0f, \"meter\": %.0f},\n"
      "  \"meter_charged_ns\": %llu,\n",
      rounds, trials, summarize(rates[kNone]).median, summarize(rates[kFloor]).median,
      summarize(rates[kMeter]).median, (unsigned long long)chargedNs);
  printLoss("meter_loss", summarize(meterLoss));
  printLoss("noop_program_loss", summarize(floorLoss));
  printLoss("meter_loss_beyond_noop", summarize(meterOverFloor));
  printf("  \"goal_loss_max\": 0.02\n}\n");
  return 0;
}
