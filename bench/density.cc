// Density: what N idle sandboxes cost on this host, side by side with N idle
// bubblewrap sandboxes (the kernel's own namespace cost plus a tiny process).
// Prints one JSON object.
//
//   build/bin/bench-density [--sandboxes 500] [--idle-seconds 10] [--init-exec]
//
// --init-exec: the agent execs each init instead of forking it from its zygote
// ("initZygote": false), to compare what an idle init costs either way.
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <kj/debug.h>

#include "bench/bench_support.h"
#include "loop/io_context.h"
#include "nodeagent/config.h"
#include "nodeagent/rpc_endpoint.h"
#include "schema/gateway.capnp.h"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kCgroupRoot = "nodeagent-bench-density";

// MemAvailable from /proc/meminfo, in bytes.
uint64_t memAvailable() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kb;
  std::string unit;
  while (in >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024;
  }
  return 0;
}

uint64_t processRss(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

// user+system CPU seconds of a process.
double processCpu(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t close = stat.rfind(')');
  std::vector<std::string> fields;
  size_t i = close + 2;
  while (i < stat.size()) {
    size_t sp = stat.find(' ', i);
    fields.push_back(stat.substr(i, sp - i));
    if (sp == std::string::npos) break;
    i = sp + 1;
  }
  // fields[0] is state (field 3); utime is field 14, stime 15.
  return (std::stod(fields[11]) + std::stod(fields[12])) / sysconf(_SC_CLK_TCK);
}

void settle() {
  sync();
  std::ofstream("/proc/sys/vm/drop_caches") << "1";
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
}

class NullOutput final : public nodeagent::api::OutputSink::Server {
  kj::Promise<void> stdout(StdoutContext) override { return kj::READY_NOW; }
  kj::Promise<void> stderr(StderrContext) override { return kj::READY_NOW; }
  kj::Promise<void> done(DoneContext) override { return kj::READY_NOW; }
};

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(p * (v.size() - 1) + 0.5))];
}

}  // namespace

int main(int argc, char** argv) {
  int count = 500;
  int idleSeconds = 10;
  bool initExec = false;
  std::string binDir = nodeagent::bench::ownBinDir();
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--sandboxes" && i + 1 < argc) count = atoi(argv[++i]);
    if (a == "--idle-seconds" && i + 1 < argc) idleSeconds = atoi(argv[++i]);
    if (a == "--init-exec") initExec = true;
  }
  if (geteuid() != 0) {
    fprintf(stderr, "bench-density needs root\n");
    return 1;
  }
  char tmpl[] = "/tmp/nodeagent-density-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  chmod(dir.c_str(), 0711);
  std::string sock = dir + "/agent.sock";

  // --- Peer: N idle bubblewrap sandboxes (all namespaces, a sleeping process).
  settle();
  uint64_t bwrapBefore = memAvailable();
  std::vector<pid_t> bwraps;
  for (int i = 0; i < count; ++i) {
    std::vector<std::string> a = {"bwrap",      "--ro-bind",     "/usr",
                                  "/usr",       "--symlink",     "usr/lib",
                                  "/lib",       "--symlink",     "usr/lib64",
                                  "/lib64",     "--symlink",     "usr/bin",
                                  "/bin",       "--proc",        "/proc",
                                  "--dev",      "/dev",          "--tmpfs",
                                  "/tmp",       "--unshare-all", "--die-with-parent",
                                  "/bin/sleep", "infinity"};
    std::vector<char*> args;
    for (auto& s : a) args.push_back(const_cast<char*>(s.c_str()));
    args.push_back(nullptr);
    pid_t pid;
    if (posix_spawnp(&pid, "bwrap", nullptr, nullptr, args.data(), environ) == 0)
      bwraps.push_back(pid);
  }
  std::this_thread::sleep_for(std::chrono::seconds(2));
  settle();
  uint64_t bwrapAfter = memAvailable();
  for (pid_t p : bwraps) kill(p, SIGKILL);
  for (pid_t p : bwraps) waitpid(p, nullptr, 0);
  double bwrapPerSandbox = (double(bwrapBefore) - double(bwrapAfter)) / double(bwraps.size());

  // --- nodeagent: N idle sandboxes.
  pid_t agent;
  {
    // A cgroup root and uid band of its own: never an installed agent's.
    std::string config = dir + "/density.json";
    FILE* f = fopen(config.c_str(), "w");
    KJ_ASSERT(f != nullptr, config);
    fprintf(f, "{\"cgroupRoot\": \"%s\", \"uidBase\": 500000000, \"maxSandboxes\": %d%s}",
            kCgroupRoot, count + 10, initExec ? ", \"initZygote\": false" : "");
    fclose(f);
    std::vector<std::string> a = {binDir + "/nodeagent", "--config",     config,
                                  "--state-dir",         dir + "/state", "--listen",
                                  "unix:" + sock,        "--log-level",  "warn"};
    std::vector<char*> args;
    for (auto& s : a) args.push_back(const_cast<char*>(s.c_str()));
    args.push_back(nullptr);
    posix_spawn(&agent, args[0], nullptr, nullptr, args.data(), environ);
  }
  for (int i = 0; i < 400 && access(sock.c_str(), F_OK) != 0; ++i) usleep(10000);

  nodeagent::loop::IoContext io;
  auto conn = nodeagent::connectToNode(io.port, nodeagent::parseListenAddress("unix:" + sock),
                                       nullptr, 64 << 20)
                  .wait(io.waitScope);
  auto node = conn->bootstrap().castAs<nodeagent::api::Node>();
  auto createOne = [&]() {
    auto req = node.createRequest();
    req.initSpec().setTemplate("python");
    req.getSpec().setTenant("density");
    req.getSpec().setTimeoutSeconds(3600);
    return req.send().wait(io.waitScope).getSandbox();
  };
  auto execTrue = [&](nodeagent::api::Sandbox::Client& s) {
    auto exec = s.execRequest();
    exec.initRequest().initArgv(1).set(0, "true");
    exec.setOutput(kj::heap<NullOutput>());
    exec.send().getProcess().waitRequest().send().wait(io.waitScope);
  };

  settle();
  uint64_t oursBefore = memAvailable();
  uint64_t agentRssBefore = processRss(agent);
  std::vector<nodeagent::api::Sandbox::Client> sandboxes;
  auto fillStart = Clock::now();
  for (int i = 0; i < count; ++i) sandboxes.push_back(createOne());
  double fillSeconds = std::chrono::duration<double>(Clock::now() - fillStart).count();
  settle();
  uint64_t oursAfter = memAvailable();
  uint64_t agentRssAfter = processRss(agent);
  double oursPerSandbox = (double(oursBefore) - double(oursAfter)) / count;

  // Agent CPU while every sandbox sits idle.
  double cpu0 = processCpu(agent);
  std::this_thread::sleep_for(std::chrono::seconds(idleSeconds));
  double agentIdleCpu = (processCpu(agent) - cpu0) / idleSeconds;

  // Create and exec latency with N live.
  std::vector<double> createUs, execUs;
  for (int i = 0; i < 30; ++i) {
    auto t0 = Clock::now();
    auto s = createOne();
    createUs.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    auto t1 = Clock::now();
    execTrue(s);
    execUs.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t1).count());
    s.killRequest().send().wait(io.waitScope);
  }
  std::vector<double> execLiveUs;
  for (int i = 0; i < 30; ++i) {
    auto t = Clock::now();
    execTrue(sandboxes[size_t(i) % sandboxes.size()]);
    execLiveUs.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t).count());
  }

  for (auto& s : sandboxes) s.killRequest().send().wait(io.waitScope);
  kill(agent, SIGTERM);
  waitpid(agent, nullptr, 0);
  nodeagent::bench::removeAgentPins(kCgroupRoot);
  std::string rm = "rm -rf '" + dir + "'";
  (void)!system(rm.c_str());

  printf("{\n  \"benchmark\": \"density\",\n  \"sandboxes\": %d,\n", count);
  printf("  \"init_started_by\": \"%s\",\n", initExec ? "exec" : "zygote");
  printf("  \"nodeagent_bytes_per_idle_sandbox\": %.0f,\n", oursPerSandbox);
  printf("  \"bwrap_bytes_per_idle_sandbox\": %.0f,\n", bwrapPerSandbox);
  printf("  \"ratio_vs_bwrap\": %.2f,\n", oursPerSandbox / bwrapPerSandbox);
  printf("  \"beyond_bwrap_bytes_per_sandbox\": %.0f,\n", oursPerSandbox - bwrapPerSandbox);
  printf("  \"agent_rss_bytes_per_sandbox\": %.0f,\n",
         double(int64_t(agentRssAfter) - int64_t(agentRssBefore)) / count);
  printf("  \"agent_idle_cpu_fraction_of_core\": %.4f,\n", agentIdleCpu);
  printf("  \"fill_seconds\": %.1f,\n", fillSeconds);
  printf("  \"create_with_n_live_p50_us\": %.0f,\n", percentile(createUs, 0.5));
  printf("  \"exec_true_new_sandbox_p50_us\": %.0f,\n", percentile(execUs, 0.5));
  printf("  \"exec_true_live_sandbox_p50_us\": %.0f,\n", percentile(execLiveUs, 0.5));
  printf("  \"exec_true_live_sandbox_p99_us\": %.0f\n}\n", percentile(execLiveUs, 0.99));
  return 0;
}
