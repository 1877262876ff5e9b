// Cost of the egress policy programs (ebpf/egress_policy.bpf.c) on a
// sandbox's TCP: bulk throughput and connect latency from a process in a
// "sandbox" cgroup below the cgroup the programs are attached to, the sandbox
// holding an `open` policy over the agent's always-denied set (built-in
// prefixes, pools, host addresses; alwaysDeniedRules()). The peer, measured
// back to back with it in the same run, is a process in a cgroup of the same
// shape beside it: no program in its effective set, so the kernel runs
// nothing for its sockets. No agent runs; EgressFilter is used directly.
// Prints one JSON object.
//
// Three destinations, each measured both ways:
//   loopback        127.0.0.1: both hooks take their loopback fast path (a
//                   sandbox talking to itself).
//   policy_path     198.18.250.2, the far end of a veth pair in a network
//                   namespace this benchmark creates: connect4 runs the whole
//                   decision (policy lookup, self and resolver checks, the
//                   always-denied LPM trie, where an operator allow rule for
//                   198.18.250.0/30 beats the built-in 198.18.0.0/15) and the
//                   packet program judges and counts every segment, as on a
//                   sandbox's veth. This is the figure the goals are about.
//   policy_path_lo  198.18.251.1/32, added to the host's lo for the run:
//                   connect4 judges it in full, but the packets leave through
//                   lo (ifindex 1), so the packet program stops at its first
//                   test. Isolates the connect-time decision.
//
// Throughput: a sender in the cgroup streams 128 KiB writes for --seconds;
// the receiver (outside the cgroup, same CPU, so the stream is CPU-bound
// rather than wakeup-bound) counts the bytes from accept to EOF. --pairs
// pairs of streams, with and without, back to back in alternating order; the
// loss is the median of the per-pair losses. On a small VM one stream varies
// by 10-20% from the next, far more than the programs cost, so the run also
// reads the kernel's own account of time spent inside the programs (BPF
// run-time statistics, on for the run) and reports it as a share of the
// streams' CPU time (sender + receiver; the receive path runs as softirq
// work in the sender's calls): the throughput a CPU-bound stream loses.
//
// Connect: socket + blocking connect() + close() (SO_LINGER 0: a RST, so no
// TIME_WAIT piles up), so every egress segment of a connection is included;
// blocks of 250 alternating between the two cgroups; p50/p99 over all, and
// the programs' own nanoseconds per connect.
//
//   build/bin/bench-egress-overhead [--seconds 1] [--pairs 10] [--connects 10000]
//
// Needs root. Cleans up (pins, cgroups, namespace, lo address) on exit,
// SIGINT and SIGTERM; leftovers of a crashed run are removed at start.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <bpf/bpf.h>
#include <kj/debug.h>

#include "bench/bench_support.h"
#include "ebpf/cpu_meter.h"
#include "ebpf/egress_filter.h"
#include "nodeagent/egress_rules.h"
#include "util/ip_prefix.h"

namespace {

using nodeagent::bench::spawnAndWait;
using nodeagent::bench::Stats;
using nodeagent::bench::summarize;
using nodeagent::ebpf::EgressFilter;

constexpr char kNetns[] = "nabench-egress";
constexpr char kVethHost[] = "nabegh";
constexpr char kVethInner[] = "nabegi";
constexpr char kVethHostAddr[] = "198.18.250.1";
constexpr char kVethInnerAddr[] = "198.18.250.2";
constexpr char kLoAddr[] = "198.18.251.1";

volatile sig_atomic_t gStop = 0;
void onSignal(int) {
  gStop = 1;
}

uint64_t cpuNs(clockid_t clock) {
  timespec ts;
  clock_gettime(clock, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

uint64_t nowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

std::string cgroup2Root() {
  struct stat st;
  if (stat("/sys/fs/cgroup/unified/cgroup.procs", &st) == 0) return "/sys/fs/cgroup/unified";
  return "/sys/fs/cgroup";
}

void pinToCpu(int cpu) {
  if (sysconf(_SC_NPROCESSORS_ONLN) < 2) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof(set), &set);
}

bool writeAll(int fd, const void* data, size_t size) {
  auto* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= size_t(n);
  }
  return true;
}

bool readAll(int fd, void* data, size_t size) {
  auto* p = static_cast<char*>(data);
  while (size > 0) {
    ssize_t n = read(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= size_t(n);
  }
  return true;
}

sockaddr_in socketAddress(const char* address, uint16_t port) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  KJ_ASSERT(inet_pton(AF_INET, address, &sa.sin_addr) == 1, address);
  return sa;
}

int listenOn(const char* address) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  KJ_ASSERT(fd >= 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in sa = socketAddress(address, 0);
  KJ_SYSCALL(bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), address);
  KJ_SYSCALL(listen(fd, 1024));
  return fd;
}

uint16_t portOf(int fd) {
  sockaddr_in sa{};
  socklen_t len = sizeof(sa);
  KJ_SYSCALL(getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len));
  return ntohs(sa.sin_port);
}

// The far end of a destination: a process (in `netns` if not empty) with a
// sink listener (reads each connection to EOF, reports bytes and nanoseconds
// from accept to EOF on a pipe) and an accept-and-close listener.
struct Server {
  pid_t pid = -1;
  int results = -1;  // read end: {bytes, ns} per sink connection
  uint16_t sinkPort = 0, acceptPort = 0;

  void start(const std::string& netns, const char* address) {
    int ready[2], report[2];
    KJ_SYSCALL(pipe2(ready, O_CLOEXEC));
    KJ_SYSCALL(pipe2(report, O_CLOEXEC));
    pid_t parent = getpid();
    pid = fork();
    KJ_ASSERT(pid >= 0);
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);
      signal(SIGINT, SIG_IGN);  // the benchmark stops its servers itself
      signal(SIGTERM, SIG_DFL);
      close(ready[0]);
      close(report[0]);
      if (!netns.empty()) {
        int fd = open(("/run/netns/" + netns).c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) _exit(2);
        close(fd);
      }
      pinToCpu(0);
      int sink = -1, acceptor = -1;
      try {
        sink = listenOn(address);
        acceptor = listenOn(address);
      } catch (...) {
        _exit(5);  // never back into main's cleanup from a child
      }
      uint16_t ports[2] = {portOf(sink), portOf(acceptor)};
      if (!writeAll(ready[1], ports, sizeof(ports))) _exit(3);
      close(ready[1]);
      std::thread([acceptor] {
        for (;;) {
          int c = accept4(acceptor, nullptr, nullptr, SOCK_CLOEXEC);
          if (c >= 0) close(c);
        }
      }).detach();
      std::vector<char> buf(256 * 1024);
      for (;;) {
        int c = accept4(sink, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) continue;
        uint64_t start = nowNs(), cpuStart = cpuNs(CLOCK_THREAD_CPUTIME_ID), bytes = 0;
        for (;;) {
          ssize_t n = read(c, buf.data(), buf.size());
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0) break;
          bytes += uint64_t(n);
        }
        uint64_t result[3] = {bytes, nowNs() - start, cpuNs(CLOCK_THREAD_CPUTIME_ID) - cpuStart};
        close(c);
        if (!writeAll(report[1], result, sizeof(result))) _exit(4);
      }
    }
    close(ready[1]);
    close(report[1]);
    results = report[0];
    uint16_t ports[2];
    KJ_ASSERT(readAll(ready[0], ports, sizeof(ports)), "server did not start", netns, address);
    close(ready[0]);
    sinkPort = ports[0];
    acceptPort = ports[1];
  }

  void stop() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      pid = -1;
    }
    if (results >= 0) close(results);
    results = -1;
  }
};

// Runs `body` in a child process placed in `cgroupDir` (before it makes any
// socket, so its sockets belong to the sandbox), on CPU 0; returns what the
// child wrote to its pipe.
template <typename Body>
std::vector<char> inSandbox(const std::string& cgroupDir, Body body) {
  int out[2];
  KJ_SYSCALL(pipe2(out, O_CLOEXEC));
  pid_t parent = getpid();
  pid_t pid = fork();
  KJ_ASSERT(pid >= 0);
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    signal(SIGINT, SIG_IGN);
    close(out[0]);
    int fd = open((cgroupDir + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, "0", 1) != 1) _exit(2);
    close(fd);
    pinToCpu(0);
    try {
      std::vector<char> result = body();
      _exit(writeAll(out[1], result.data(), result.size()) ? 0 : 3);
    } catch (...) {
      _exit(4);  // never back into main's cleanup from a child
    }
  }
  close(out[1]);
  std::vector<char> data;
  char buf[65536];
  for (;;) {
    ssize_t n = read(out[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    data.insert(data.end(), buf, buf + n);
  }
  close(out[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  KJ_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "sandbox process failed", status);
  return data;
}

struct Stream {
  double bps;      // received bits per second
  uint64_t cpuNs;  // sender's and receiver's CPU time
  double bytes;
};

// One stream from the sandbox to `server`. On loopback and veth the receive
// path runs as softirq work inside the sender's system calls, so the two
// processes' CPU time covers nearly all the work a byte costs.
Stream stream(const std::string& cgroupDir, const char* address, Server& server, double seconds) {
  uint16_t port = server.sinkPort;
  std::vector<char> raw = inSandbox(cgroupDir, [&]() {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa = socketAddress(address, port);
    if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) _exit(10);
    std::vector<char> buf(128 * 1024, 'x');
    uint64_t cpuStart = cpuNs(CLOCK_PROCESS_CPUTIME_ID);
    uint64_t end = nowNs() + uint64_t(seconds * 1e9);
    while (nowNs() < end) {
      if (!writeAll(fd, buf.data(), buf.size())) _exit(11);
    }
    close(fd);
    uint64_t cpu = cpuNs(CLOCK_PROCESS_CPUTIME_ID) - cpuStart;
    const char* p = reinterpret_cast<const char*>(&cpu);
    return std::vector<char>(p, p + sizeof(cpu));
  });
  uint64_t result[3], senderCpu = 0;
  KJ_ASSERT(readAll(server.results, result, sizeof(result)), "sink did not report");
  KJ_ASSERT(raw.size() == sizeof(senderCpu));
  memcpy(&senderCpu, raw.data(), sizeof(senderCpu));
  return Stream{double(result[0]) * 8.0 / (double(result[1]) / 1e9), senderCpu + result[2],
                double(result[0])};
}

// Microseconds of socket + connect + close, `count` times, from the sandbox.
std::vector<double> connectTimes(const std::string& cgroupDir, const char* address, Server& server,
                                 int count) {
  uint16_t port = server.acceptPort;
  std::vector<char> raw = inSandbox(cgroupDir, [&]() {
    sockaddr_in sa = socketAddress(address, port);
    linger rst{1, 0};
    std::vector<double> us;
    for (int i = 0; i < count + count / 10; ++i) {  // the first tenth warms up
      uint64_t start = nowNs();
      int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) _exit(10);
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &rst, sizeof(rst));
      if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) _exit(11);
      close(fd);
      if (i >= count / 10) us.push_back(double(nowNs() - start) / 1000.0);
    }
    const char* p = reinterpret_cast<const char*>(us.data());
    return std::vector<char>(p, p + us.size() * sizeof(double));
  });
  KJ_ASSERT(raw.size() == size_t(count) * sizeof(double), raw.size());
  std::vector<double> us(static_cast<size_t>(count));
  memcpy(us.data(), raw.data(), raw.size());
  return us;
}

// errno of a UDP connect() from the sandbox (sends nothing either way).
int udpConnectErrno(const std::string& cgroupDir, const char* address) {
  std::vector<char> raw = inSandbox(cgroupDir, [&]() {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa = socketAddress(address, 80);
    int err = connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0 ? 0 : errno;
    const char* p = reinterpret_cast<const char*>(&err);
    return std::vector<char>(p, p + sizeof(err));
  });
  int err = -1;
  if (raw.size() == sizeof(err)) memcpy(&err, raw.data(), sizeof(err));
  return err;
}

// Time the kernel spent in the filter's connect4 and packet programs (while
// BPF run-time statistics are on), read through the links it pinned.
struct ProgramTime {
  uint64_t ns = 0, runs = 0;
};

ProgramTime programTime(const std::string& pins) {
  ProgramTime total;
  for (const char* name : {"connect4", "egress_packet"}) {
    int link = bpf_obj_get((pins + "/link_" + name).c_str());
    KJ_ASSERT(link >= 0, "no pinned link", name);
    bpf_link_info linkInfo{};
    uint32_t len = sizeof(linkInfo);
    int rc = bpf_obj_get_info_by_fd(link, &linkInfo, &len);
    close(link);
    KJ_ASSERT(rc == 0, "link info", name);
    int prog = bpf_prog_get_fd_by_id(linkInfo.prog_id);
    KJ_ASSERT(prog >= 0, "no program", name);
    bpf_prog_info info{};
    len = sizeof(info);
    rc = bpf_obj_get_info_by_fd(prog, &info, &len);
    close(prog);
    KJ_ASSERT(rc == 0, "program info", name);
    total.ns += info.run_time_ns;
    total.runs += info.run_cnt;
  }
  return total;
}

nodeagent::IpPrefix prefix(const char* text) {
  KJ_IF_MAYBE (p, nodeagent::IpPrefix::parse(text)) {
    return *p;
  }
  KJ_FAIL_ASSERT("bad prefix", text);
}

nodeagent::ebpf::Address16 address16(const char* text) {
  KJ_IF_MAYBE (a, nodeagent::IpAddress::parse(text)) {
    return a->bytes();
  }
  KJ_FAIL_ASSERT("bad address", text);
}

void removeHostState(bool quiet) {
  spawnAndWait({"ip", "netns", "del", kNetns}, quiet);
  spawnAndWait({"ip", "link", "del", kVethHost}, quiet);
  spawnAndWait({"ip", "addr", "del", std::string(kLoAddr) + "/32", "dev", "lo"}, quiet);
}

bool run(std::vector<std::string> argv) {
  int rc = spawnAndWait(argv, /*quiet=*/false);
  if (rc != 0) {
    std::string line;
    for (auto& a : argv) line += a + " ";
    fprintf(stderr, "bench-egress-overhead: failed (%d): %s\n", rc, line.c_str());
  }
  return rc == 0;
}

// Coefficient of variation, in percent.
double cvPct(const std::vector<double>& v) {
  double mean = 0, sq = 0;
  for (double x : v) mean += x / double(v.size());
  for (double x : v) sq += (x - mean) * (x - mean) / double(v.size());
  return std::sqrt(sq) / mean * 100.0;
}

struct Destination {
  Destination(const char* name, const char* address, const char* note, Server* server)
      : name(name), address(address), note(note), server(server) {}
  const char* name;
  const char* address;
  const char* note;
  Server* server;
  std::vector<double> bpsWithout, bpsWith, connectWithout, connectWith;
  // Inside the programs, during the streams and the connects with them.
  ProgramTime streamPrograms, connectPrograms;
  uint64_t streamCpuNs = 0, connectsRun = 0;
  std::vector<double> bytesWith;
};

double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(q * double(v.size() - 1) + 0.5))];
}

std::string report(const Destination& d) {
  // Loss per pair of streams taken back to back, so drift cancels.
  std::vector<double> lossPct;
  for (size_t i = 0; i < d.bpsWith.size(); ++i) {
    lossPct.push_back((1.0 - d.bpsWith[i] / d.bpsWithout[i]) * 100.0);
  }
  Stats cw = summarize(d.connectWithout), cf = summarize(d.connectWith);
  double bytesWith = 0;
  for (size_t i = 0; i < d.bpsWith.size(); ++i) bytesWith += d.bytesWith[i];
  char buf[3072];
  snprintf(buf, sizeof(buf),
           "  \"%s\": {\n    \"destination\": \"%s\",\n    \"what_runs\": \"%s\",\n"
           "    \"throughput_bps_without\": %.0f,\n    \"throughput_bps_with\": %.0f,\n"
           "    \"throughput_loss_pct\": %.2f,\n"
           "    \"throughput_loss_pct_p25_p75\": [%.2f, %.2f],\n"
           "    \"throughput_cv_pct_without\": %.1f,\n"
           "    \"connect_p50_us_without\": %.1f,\n    \"connect_p50_us_with\": %.1f,\n"
           "    \"connect_added_p50_us\": %.1f,\n"
           "    \"connect_p99_us_without\": %.1f,\n    \"connect_p99_us_with\": %.1f,\n"
           "    \"connect_added_p99_us\": %.1f,\n"
           "    \"connect_mean_us_without\": %.1f,\n    \"connect_mean_us_with\": %.1f,\n"
           "    \"stream_pairs\": %zu,\n    \"connects_per_state\": %zu,\n"
           "    \"programs_share_of_stream_cpu_pct\": %.3f,\n"
           "    \"program_runs_per_stream_mib\": %.2f,\n"
           "    \"programs_ns_per_connect\": %.0f,\n"
           "    \"program_runs_per_connect\": %.2f\n  }",
           d.name, d.address, d.note, quantile(d.bpsWithout, 0.5), quantile(d.bpsWith, 0.5),
           quantile(lossPct, 0.5), quantile(lossPct, 0.25), quantile(lossPct, 0.75),
           cvPct(d.bpsWithout), cw.p50Us, cf.p50Us, cf.p50Us - cw.p50Us, cw.p99Us, cf.p99Us,
           cf.p99Us - cw.p99Us, cw.meanUs, cf.meanUs, lossPct.size(), cw.n,
           double(d.streamPrograms.ns) / double(d.streamCpuNs) * 100.0,
           double(d.streamPrograms.runs) / (bytesWith / 1048576.0),
           double(d.connectPrograms.ns) / double(d.connectsRun),
           double(d.connectPrograms.runs) / double(d.connectsRun));
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 1;
  int pairs = 10, connects = 10000;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--seconds" && i + 1 < argc) seconds = atof(argv[++i]);
    if (a == "--pairs" && i + 1 < argc) pairs = atoi(argv[++i]);
    if (a == "--connects" && i + 1 < argc) connects = atoi(argv[++i]);
  }
  if (geteuid() != 0) {
    fprintf(stderr, "bench-egress-overhead needs root\n");
    return 1;
  }
  pairs = std::max(pairs, 1);
  constexpr int kConnectBlock = 250;
  int blocks = std::max(connects / kConnectBlock, 2);
  signal(SIGINT, onSignal);
  signal(SIGTERM, onSignal);
  signal(SIGPIPE, SIG_IGN);

  // The programs go on `parent`; the peer is the same shape beside it, so
  // its cgroup has no program in its effective set and the kernel runs
  // nothing for its sockets.
  std::string home = cgroup2Root();
  std::string parent = home + "/nodeagent-bench-egress-" + std::to_string(getpid());
  std::string sandbox = parent + "/sandbox";
  std::string peerParent = parent + "-peer";
  std::string peer = peerParent + "/sandbox";
  std::string pins = "/sys/fs/bpf/nodeagent-bench-egress-" + std::to_string(getpid());
  Server local, remote;
  kj::Own<EgressFilter> filter;
  int exitCode = 0, statsFd = -1;

  // The host's addresses before this run adds its own: denied, as the agent does.
  nodeagent::AlwaysDeniedInputs inputs;
  inputs.pools = {prefix("10.250.0.0/16"), prefix("fd6e:6100::/64")};
  inputs.hostAddresses = nodeagent::hostAddresses();
  inputs.operatorAllowed = {prefix("198.18.250.0/30"), prefix("198.18.251.1/32")};
  auto rules = nodeagent::alwaysDeniedRules(inputs);

  removeHostState(/*quiet=*/true);  // a crashed run's
  try {
    for (auto& dir : {parent, sandbox, peerParent, peer}) {
      KJ_SYSCALL(mkdir(dir.c_str(), 0755), dir);
    }
    uint64_t cgroupId = nodeagent::ebpf::cgroupIdOf(sandbox.c_str());
    std::string ns = kNetns;
    KJ_ASSERT(
        run({"ip", "netns", "add", ns}) &&
            run({"ip", "link", "add", kVethHost, "type", "veth", "peer", "name", kVethInner,
                 "netns", ns}) &&
            run({"ip", "addr", "add", std::string(kVethHostAddr) + "/30", "dev", kVethHost}) &&
            run({"ip", "link", "set", kVethHost, "up"}) &&
            run({"ip", "-n", ns, "addr", "add", std::string(kVethInnerAddr) + "/30", "dev",
                 kVethInner}) &&
            run({"ip", "-n", ns, "link", "set", kVethInner, "up"}) &&
            run({"ip", "-n", ns, "link", "set", "lo", "up"}) &&
            run({"ip", "addr", "add", std::string(kLoAddr) + "/32", "dev", "lo"}),
        "cannot set up the benchmark's network");
    local.start("", "0.0.0.0");
    remote.start(ns, kVethInnerAddr);

    // Run-time statistics of every BPF program while this fd is open: a
    // clock read before and after each run, in the "with" figures only.
    statsFd = bpf_enable_stats(BPF_STATS_RUN_TIME);
    KJ_ASSERT(statsFd >= 0, "cannot enable BPF run-time statistics", errno);
    filter = EgressFilter::start(pins.c_str(), parent.c_str());
    filter->setAlwaysRules(rules);
    na_policy policy{};
    policy.mode = NA_NET_OPEN;
    memcpy(policy.self4, address16("10.250.0.2").data(), 16);
    memcpy(policy.resolver4, address16("10.250.0.1").data(), 16);
    memcpy(policy.resolver6, address16("fd6e:6100::1").data(), 16);
    policy.resolver_port = htons(53);
    filter->setPolicy(cgroupId, policy);

    // The programs judge the sandbox and only it: the metadata address is
    // refused there (a UDP connect: nothing is sent either way).
    int withErr = udpConnectErrno(sandbox, "169.254.169.254");
    int peerErr = udpConnectErrno(peer, "169.254.169.254");
    KJ_ASSERT(withErr == EPERM && peerErr == 0, "the filter does not act as expected", withErr,
              peerErr);

    std::vector<Destination> destinations = {
        {"loopback", "127.0.0.1", "connect4 and packet program: loopback fast path", &local},
        {"policy_path", kVethInnerAddr,
         "connect4: full decision; packet program: full decision and counters (veth)", &remote},
        {"policy_path_lo", kLoAddr,
         "connect4: full decision; packet program: lo fast path (address on lo)", &local},
    };
    for (auto& d : destinations) {
      // Back to back, the order alternating, so drift hits both alike.
      for (int i = 0; i < pairs && !gStop; ++i) {
        for (int step = 0; step < 2; ++step) {
          bool with = (i + step) % 2 == 1;
          ProgramTime before = programTime(pins);
          Stream s = stream(with ? sandbox : peer, d.address, *d.server, seconds);
          if (with) {
            ProgramTime after = programTime(pins);
            d.streamPrograms.ns += after.ns - before.ns;
            d.streamPrograms.runs += after.runs - before.runs;
            d.streamCpuNs += s.cpuNs;
          }
          (with ? d.bpsWith : d.bpsWithout).push_back(s.bps);
          if (with) d.bytesWith.push_back(s.bytes);
        }
      }
      for (int b = 0; b < blocks && !gStop; ++b) {
        for (int step = 0; step < 2; ++step) {
          bool with = (b + step) % 2 == 1;
          ProgramTime before = programTime(pins);
          auto times = connectTimes(with ? sandbox : peer, d.address, *d.server, kConnectBlock);
          if (with) {
            ProgramTime after = programTime(pins);
            d.connectPrograms.ns += after.ns - before.ns;
            d.connectPrograms.runs += after.runs - before.runs;
            d.connectsRun += kConnectBlock + kConnectBlock / 10;  // with the warm-up
          }
          auto& into = with ? d.connectWith : d.connectWithout;
          into.insert(into.end(), times.begin(), times.end());
        }
      }
    }
    KJ_ASSERT(!gStop, "interrupted");
    na_counters counted = filter->counters(cgroupId);

    printf(
        "{\n  \"benchmark\": \"egress_overhead\",\n  \"seconds_per_stream\": %.2f,\n"
        "  \"throughput_unit\": \"bits/s\",\n",
        seconds);
    for (auto& d : destinations) printf("%s,\n", report(d).c_str());
    printf("  \"always_rules\": %zu,\n  \"packets_judged_and_counted\": %llu,\n", rules.size(),
           (unsigned long long)counted.allowed_packets);
    // The goals, judged on the policy path both ways.
    const Destination& policyPath = destinations[1];
    std::vector<double> lossPct;
    for (size_t i = 0; i < policyPath.bpsWith.size(); ++i) {
      lossPct.push_back((1.0 - policyPath.bpsWith[i] / policyPath.bpsWithout[i]) * 100.0);
    }
    bool measuredOk =
        quantile(lossPct, 0.5) < 3.0 &&
        summarize(policyPath.connectWith).p50Us - summarize(policyPath.connectWithout).p50Us < 10.0;
    bool programTimeOk =
        double(policyPath.streamPrograms.ns) / double(policyPath.streamCpuNs) * 100.0 < 3.0 &&
        double(policyPath.connectPrograms.ns) / double(policyPath.connectsRun) < 10000.0;
    printf(
        "  \"goals\": {\"throughput_loss_pct_max\": 3, \"connect_added_us_max\": 10, "
        "\"policy_path_met_as_measured\": %s, \"policy_path_met_by_program_time\": %s}\n}\n",
        measuredOk ? "true" : "false", programTimeOk ? "true" : "false");
  } catch (kj::Exception& e) {
    fprintf(stderr, "bench-egress-overhead: %s\n", kj::str(e).cStr());
    exitCode = 1;
  }

  local.stop();
  remote.stop();
  if (statsFd >= 0) close(statsFd);
  try {
    filter = nullptr;
    EgressFilter::removePinned(pins.c_str());
  } catch (kj::Exception& e) {
    fprintf(stderr, "bench-egress-overhead: unpin: %s\n", kj::str(e).cStr());
    exitCode = 1;
  }
  for (auto& dir : {peer, peerParent, sandbox, parent}) rmdir(dir.c_str());
  removeHostState(/*quiet=*/true);
  return exitCode;
}
