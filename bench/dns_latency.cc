// DNS answer latency through the agent: a sandbox with `--network restricted
// --allow bench.test` asks the agent's resolver (the gateway named by its
// /etc/resolv.conf) one UDP query at a time, and the time from send to answer
// is taken inside the sandbox. Two paths:
//   allowed: bench.test A -> judged, forwarded to the upstream, the answer's
//            address admitted to the sandbox's eBPF allow map, then answered;
//   refused: other.test A -> REFUSED by the agent without forwarding.
// The upstream is a dnsmasq this benchmark runs on 127.0.0.77:53 (a local
// answer for bench.test, REFUSED for anything else: it has no upstream). The
// peer, in the same run and interleaved round by round, is the same query
// script on the host asking that dnsmasq directly: the floor the agent adds
// its hop to (the agent's path also crosses the sandbox's veth and bridge
// twice). Many short rounds, because on a small VM where the scheduler puts
// client and server (same CPU or not) shifts a whole run's latencies by tens
// of microseconds. The python versions of host and sandbox may differ.
// Prints one JSON object.
//
//   build/bin/bench-dns-latency [--queries 4000] [--rounds 20] [--agent-bin DIR]
//
// Needs root and python3 on the host. The agent gets its own bridge
// (nabench0, 10.253.0.0/24, fd6e:6253::/64), cgroup root, uid range and state
// dir under /tmp; all of it (and dnsmasq) is removed at the end, also on
// failure, SIGINT and SIGTERM; a run killed outright is cleaned up by the
// next (/run/nodeagent-bench-dns.state). The agent's host sysctls (IP
// forwarding) stay.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench_support.h"

namespace {

using nodeagent::bench::json;
using nodeagent::bench::spawnAndWait;
using nodeagent::bench::Stats;
using nodeagent::bench::summarize;

constexpr char kBridge[] = "nabench0";
constexpr char kPool4[] = "10.253.0.0/24";
constexpr char kPool6[] = "fd6e:6253::/64";
constexpr char kUpstream[] = "127.0.0.77";
constexpr char kAllowedName[] = "bench.test";
constexpr char kAllowedAnswer[] = "198.51.100.77";  // documentation range; never contacted
constexpr char kRefusedName[] = "other.test";
// What a run set up (dnsmasq and agent pids, state dir, cgroup root), so the
// next run can remove what one killed outright (SIGKILL) left behind.
constexpr char kStateFile[] = "/run/nodeagent-bench-dns.state";

// Sends N queries for NAME (type A) to SERVER:53 one after another over one
// connected UDP socket (as glibc's stub does) and prints one line: the
// microseconds of each answered query, then "rcode=<n>" of the last answer
// and "lost=<n>" (no answer within 2 s). SERVER "resolv" = the first
// nameserver of /etc/resolv.conf. "udp-connect ADDR": "ok" if a UDP
// connect() to ADDR:80 is allowed, else "err <errno>".
constexpr char kQueryScript[] = R"PY(import os, socket, struct, sys, time
if sys.argv[1] == "udp-connect":  # may this sandbox reach ADDR? (sends nothing)
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).connect((sys.argv[2], 80))
        print("ok")
    except OSError as e:
        print("err", e.errno)
    sys.exit(0)
server, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
if server == "resolv":
    for line in open("/etc/resolv.conf"):
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            server = parts[1]
            break
qname = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
family = socket.AF_INET6 if ":" in server else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((server, 53))
out, rcode, lost = [], -1, 0
for i in range(count):
    qid = (os.getpid() + i) & 0xFFFF
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 1, 1)
    start = time.perf_counter_ns()
    s.send(query)
    try:
        while True:
            answer = s.recv(4096)
            if len(answer) >= 4 and struct.unpack(">H", answer[:2])[0] == qid:
                break
    except socket.timeout:
        lost += 1
        continue
    out.append("%.1f" % ((time.perf_counter_ns() - start) / 1000.0))
    rcode = answer[3] & 0x0F
print(" ".join(out), "rcode=%d" % rcode, "lost=%d" % lost)
)PY";

volatile sig_atomic_t gStop = 0;
void onSignal(int) {
  gStop = 1;
}

struct Result {
  int exitCode = -1;
  std::string out, err;
};

// Runs argv (PATH search) to its end, collecting stdout; stderr goes to `errFile`.
Result capture(const std::vector<std::string>& argv, const std::string& errFile = "/dev/null") {
  int out[2];
  Result r;
  if (pipe2(out, O_CLOEXEC) != 0) return r;
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  posix_spawn_file_actions_addopen(&actions, 2, errFile.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0600);
  pid_t pid;
  int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(out[1]);
  if (rc != 0) {
    close(out[0]);
    return r;
  }
  char buf[65536];
  for (;;) {
    ssize_t n = read(out[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    r.out.append(buf, size_t(n));
  }
  close(out[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.exitCode = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  std::ifstream in(errFile);
  std::stringstream text;
  text << in.rdbuf();
  r.err = text.str();
  return r;
}

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// One run of the query script: latencies appended to `us`; false (with a
// message) unless every answer came back with `wantRcode`.
bool collect(const Result& r, int wantRcode, std::vector<double>& us, const char* what) {
  std::istringstream in(r.out);
  std::string word;
  int rcode = -1, lost = -1;
  std::vector<double> got;
  while (in >> word) {
    if (word.rfind("rcode=", 0) == 0) {
      rcode = atoi(word.c_str() + 6);
    } else if (word.rfind("lost=", 0) == 0) {
      lost = atoi(word.c_str() + 5);
    } else {
      got.push_back(atof(word.c_str()));
    }
  }
  if (r.exitCode != 0 || rcode != wantRcode || lost != 0 || got.empty()) {
    fprintf(stderr, "bench-dns-latency: %s: exit %d, rcode %d (want %d), lost %d: %s%s\n", what,
            r.exitCode, rcode, wantRcode, lost, trimmed(r.out).substr(0, 200).c_str(),
            trimmed(r.err).c_str());
    return false;
  }
  us.insert(us.end(), got.begin(), got.end());
  return true;
}

void writeFile(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

// The agent's process (not necessarily our child) is gone within `ms`.
bool waitExit(pid_t pid, int ms) {
  for (int waited = 0; waited < ms; waited += 10) {
    waitpid(pid, nullptr, WNOHANG);  // reaps it if it is our child
    if (kill(pid, 0) != 0) return true;
    usleep(10000);
  }
  return false;
}

// Whether `pid` is still the process a run started: its command line holds `mark`.
bool still(pid_t pid, const std::string& mark) {
  if (pid <= 0) return false;
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
  std::string args((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return args.find(mark) != std::string::npos;
}

// What one run sets up on the host, and how it all goes away again.
struct Run {
  pid_t dnsmasq = -1, agent = -1;
  std::string dir, cgroupRoot;
  std::string sbx;  // the CLI that talks to the agent

  void cleanUp() {
    // Every sandbox of the agent, then the agent (SIGTERM leaves sandboxes
    // running on purpose).
    if (still(agent, dir + "/config.json")) {
      std::vector<std::string> connect = {sbx, "--connect", "unix:" + dir + "/agent.sock"};
      auto with = [&](std::vector<std::string> args) {
        std::vector<std::string> argv = connect;
        argv.insert(argv.end(), args.begin(), args.end());
        return argv;
      };
      std::istringstream list(capture(with({"ls"})).out);
      std::string word;
      while (list >> word) {
        if (word.rfind("sbx-", 0) == 0) capture(with({"kill", word}));
      }
      kill(agent, SIGTERM);
      if (!waitExit(agent, 10000)) {
        kill(agent, SIGKILL);
        waitExit(agent, 2000);
      }
    }
    agent = -1;
    if (still(dnsmasq, std::string("--listen-address=") + kUpstream)) {
      kill(dnsmasq, SIGTERM);
      waitExit(dnsmasq, 2000);
    }
    dnsmasq = -1;
    // What the agent leaves on purpose (so that policy and routes outlive it).
    spawnAndWait({"ip", "link", "del", kBridge});
    spawnAndWait({"nft", "delete", "table", "inet", std::string("nodeagent_") + kBridge});
    if (cgroupRoot.rfind("nodeagent-bench-dns-", 0) == 0) {
      spawnAndWait({"rm", "-rf", "/sys/fs/bpf/nodeagent/" + cgroupRoot,
                    "/sys/fs/bpf/nodeagent/" + cgroupRoot + "-egress"});
      for (const char* h : {"unified", "memory", "pids", "cpu", "cpuacct", "freezer", "cpuset",
                            "blkio", "devices", "systemd", ""}) {
        std::string base = std::string("/sys/fs/cgroup/") + h + (h[0] ? "/" : "") + cgroupRoot;
        spawnAndWait({"sh", "-c",
                      "[ -d '" + base + "' ] && find '" + base +
                          "' -depth -type d -exec rmdir {} + ; true"});
      }
    }
    if (dir.rfind("/tmp/nodeagent-bench-dns-", 0) == 0) spawnAndWait({"rm", "-rf", dir});
  }
};

}  // namespace

int main(int argc, char** argv) {
  int queries = 4000, rounds = 20;
  std::string binDir = nodeagent::bench::ownBinDir();
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--queries" && i + 1 < argc) queries = atoi(argv[++i]);
    if (a == "--rounds" && i + 1 < argc) rounds = atoi(argv[++i]);
    if (a == "--agent-bin" && i + 1 < argc) binDir = argv[++i];
  }
  if (geteuid() != 0) {
    fprintf(stderr, "bench-dns-latency needs root\n");
    return 1;
  }
  rounds = std::max(rounds, 1);
  int perRound = std::max(queries / rounds, 20);
  int warmup = std::max(perRound / 20, 5);  // per round, not counted
  signal(SIGINT, onSignal);
  signal(SIGTERM, onSignal);
  signal(SIGPIPE, SIG_IGN);

  char tmpl[] = "/tmp/nodeagent-bench-dns-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  chmod(dir.c_str(), 0711);  // sandboxes mount their root below it under their own uid
  std::string sock = dir + "/agent.sock";
  std::string cgroupRoot = "nodeagent-bench-dns-" + std::to_string(getpid());
  std::string sbx = binDir + "/sbx";
  auto sbxArgs = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = {sbx, "--connect", "unix:" + sock};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  };

  Run previous;
  previous.sbx = sbx;
  {
    std::ifstream in(kStateFile);
    if (in >> previous.dnsmasq >> previous.agent >> previous.dir >> previous.cgroupRoot) {
      fprintf(stderr, "bench-dns-latency: removing what an interrupted run left (%s)\n",
              previous.dir.c_str());
      previous.cleanUp();
    }
    unlink(kStateFile);
  }
  // A crashed run's bridge and NAT table (its state file lost or never written).
  spawnAndWait({"ip", "link", "del", kBridge});
  spawnAndWait({"nft", "delete", "table", "inet", std::string("nodeagent_") + kBridge});

  Run run;
  run.sbx = sbx;
  run.dir = dir;
  run.cgroupRoot = cgroupRoot;
  auto saveState = [&]() {
    writeFile(kStateFile, std::to_string(run.dnsmasq) + " " + std::to_string(run.agent) + " " +
                              run.dir + " " + run.cgroupRoot + "\n");
  };
  saveState();
  pid_t& dnsmasq = run.dnsmasq;
  pid_t& agent = run.agent;
  std::string sandbox;
  int exitCode = 1;
  std::vector<double> agentAllowed, agentRefused, directAllowed, directRefused;
  do {
    // The upstream: answers bench.test itself; REFUSED otherwise (no servers).
    dnsmasq = nodeagent::bench::spawnCommand(
        {"/usr/sbin/dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
         "--no-hosts", std::string("--listen-address=") + kUpstream, "--bind-interfaces",
         "--port=53", std::string("--address=/") + kAllowedName + "/" + kAllowedAnswer,
         "--pid-file=", "--user=root", "--log-facility=" + dir + "/dnsmasq.log"});
    saveState();
    usleep(300000);
    if (dnsmasq < 0 || waitpid(dnsmasq, nullptr, WNOHANG) != 0) {
      // Exits at once when it cannot bind (another server on the port).
      dnsmasq = -1;
      fprintf(stderr, "bench-dns-latency: dnsmasq did not start (is %s:53 taken?)\n", kUpstream);
      break;
    }

    writeFile(dir + "/config.json",
              "{\"cgroupRoot\": \"" + cgroupRoot +
                  "\", \"uidBase\": 500000000, \"maxSandboxes\": 10, \"network\": {\"bridge\": \"" +
                  kBridge + "\", \"ipv4Pool\": \"" + kPool4 + "\", \"ipv6Pool\": \"" + kPool6 +
                  "\", \"dnsUpstreams\": [\"" + kUpstream + "\"]}}");
    pid_t self = getpid();
    agent = fork();
    if (agent == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the benchmark
      if (getppid() != self) _exit(1);
      int log = open((dir + "/agent.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      dup2(log, 1);
      dup2(log, 2);
      execl((binDir + "/nodeagent").c_str(), "nodeagent", "--config",
            (dir + "/config.json").c_str(), "--state-dir", (dir + "/state").c_str(), "--listen",
            ("unix:" + sock).c_str(), "--log-level", "warn", nullptr);
      _exit(127);
    }
    saveState();
    bool ready = false;
    for (int i = 0; i < 400 && !ready && !gStop; ++i) {
      ready = capture(sbxArgs({"ls"})).exitCode == 0;
      if (!ready) usleep(25000);
    }
    if (!ready) {
      fprintf(stderr, "bench-dns-latency: the agent did not start (log: %s/agent.log)\n",
              dir.c_str());
      break;
    }

    auto created = capture(sbxArgs({"create", "--template", "python", "--tenant", "bench",
                                    "--network", "restricted", "--allow", kAllowedName}),
                           dir + "/sbx.err");
    sandbox = trimmed(created.out);
    if (created.exitCode != 0 || sandbox.empty()) {
      fprintf(stderr, "bench-dns-latency: create failed: %s\n", created.err.c_str());
      break;
    }
    writeFile(dir + "/dnsq.py", kQueryScript);
    auto cp =
        capture(sbxArgs({"cp", dir + "/dnsq.py", sandbox + ":/tmp/dnsq.py"}), dir + "/sbx.err");
    if (cp.exitCode != 0) {
      fprintf(stderr, "bench-dns-latency: cp failed: %s\n", cp.err.c_str());
      break;
    }

    // A UDP connect() to the answer's address (sends nothing): refused until
    // the agent admits it with an answer.
    auto reachable = [&]() {
      auto r = capture(sbxArgs({"exec", sandbox, "--", "python3", "/tmp/dnsq.py", "udp-connect",
                                kAllowedAnswer}),
                       dir + "/sbx.err");
      return trimmed(r.out) == "ok";
    };
    bool reachableBefore = reachable();

    auto inSandbox = [&](const char* name, int n) {
      return capture(sbxArgs({"exec", sandbox, "--", "python3", "/tmp/dnsq.py", "resolv", name,
                              std::to_string(n)}),
                     dir + "/sbx.err");
    };
    auto onHost = [&](const char* name, int n) {
      return capture({"python3", dir + "/dnsq.py", kUpstream, name, std::to_string(n)},
                     dir + "/host.err");
    };
    // Warm both paths (the agent's first forward, python's imports).
    std::vector<double> ignored;
    bool ok = collect(inSandbox(kAllowedName, warmup), 0, ignored, "agent warm-up") &&
              collect(onHost(kAllowedName, warmup), 0, ignored, "direct warm-up");
    // Round by round, the four interleaved, so drift hits them alike. Each
    // run's first queries are dropped (python warming up, the socket's route).
    auto drop = [&](std::vector<double>& into, size_t before) {
      into.erase(into.begin() + long(before), into.begin() + long(before) + warmup);
    };
    for (int r = 0; r < rounds && ok && !gStop; ++r) {
      struct Step {
        std::vector<double>* into;
        bool agent;
        const char* name;
        int rcode;
        const char* what;
      } steps[] = {
          {&agentAllowed, true, kAllowedName, 0, "agent allowed"},
          {&directAllowed, false, kAllowedName, 0, "direct allowed"},
          {&agentRefused, true, kRefusedName, 5, "agent refused"},
          {&directRefused, false, kRefusedName, 5, "direct refused"},
      };
      for (auto& s : steps) {
        size_t before = s.into->size();
        auto result =
            s.agent ? inSandbox(s.name, perRound + warmup) : onHost(s.name, perRound + warmup);
        ok = ok && collect(result, s.rcode, *s.into, s.what);
        if (ok) drop(*s.into, before);
      }
    }
    if (!ok || gStop) {
      if (gStop) fprintf(stderr, "bench-dns-latency: interrupted\n");
      break;
    }

    // The agent admitted the answer: the sandbox may now reach the address.
    bool admitted = !reachableBefore && reachable();

    Stats aa = summarize(agentAllowed), da = summarize(directAllowed);
    Stats ar = summarize(agentRefused), dr = summarize(directRefused);
    printf("{\n  \"benchmark\": \"dns_answer_latency\",\n  \"queries_per_path\": %zu,\n", aa.n);
    printf("  \"rounds\": %d,\n  \"upstream\": \"dnsmasq %s:53, local answer\",\n", rounds,
           kUpstream);
    printf("  %s,\n", json("agent_allowed", aa).c_str());
    printf("  %s,\n", json("direct_upstream_allowed", da).c_str());
    printf("  %s,\n", json("agent_refused", ar).c_str());
    printf("  %s,\n", json("direct_upstream_refused", dr).c_str());
    printf("  \"agent_added_p50_us\": %.1f,\n  \"agent_added_p99_us\": %.1f,\n",
           aa.p50Us - da.p50Us, aa.p99Us - da.p99Us);
    printf("  \"ratio_agent_allowed_p50_vs_direct\": %.2f,\n", aa.p50Us / da.p50Us);
    printf("  \"ratio_agent_allowed_p99_vs_direct\": %.2f,\n", aa.p99Us / da.p99Us);
    printf("  \"ratio_agent_refused_p50_vs_direct_refused\": %.2f,\n", ar.p50Us / dr.p50Us);
    printf("  \"ratio_agent_refused_p50_vs_agent_allowed\": %.2f,\n", ar.p50Us / aa.p50Us);
    auto over = [](const std::vector<double>& us, double limit) {
      return size_t(std::count_if(us.begin(), us.end(), [&](double v) { return v > limit; }));
    };
    printf(
        "  \"over_1ms\": {\"agent_allowed\": %zu, \"direct_upstream_allowed\": %zu, "
        "\"agent_refused\": %zu, \"direct_upstream_refused\": %zu},\n",
        over(agentAllowed, 1000), over(directAllowed, 1000), over(agentRefused, 1000),
        over(directRefused, 1000));
    printf("  \"answer_admitted_to_policy\": %s\n}\n", admitted ? "true" : "false");
    exitCode = 0;
  } while (false);

  if (exitCode != 0 && agent > 0) {
    fprintf(stderr, "bench-dns-latency: the agent's log, its end:\n");
    spawnAndWait({"tail", "-n", "20", dir + "/agent.log"}, /*quiet=*/false);
  }
  run.cleanUp();
  unlink(kStateFile);
  return exitCode;
}
