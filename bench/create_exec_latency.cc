// End-to-end latency harness: create a sandbox -> run `echo hi` -> its first
// output arrives -> kill (answered), through the real agent, side by side with
// bubblewrap and runc running the same command to its exit, in the same run. A second agent with a
// warm pool ("nodeagent_warm") serves every create from its pool: before each
// of its iterations the harness waits, untimed, until the pool is full again.
// A fifth subject is the floor under them all: the host's posix_spawn of
// /bin/echo to its first output, with no sandbox and no RPC.
// Prints one JSON object.
//
//   build/bin/bench-create-exec [--iterations N] [--agent-bin DIR] [--idle-ms N]
//                           [--keep-cgroup-options] [--init-exec]
//
// --idle-ms: the machine idles this long before each timed run (of every
// subject), as a node does between creates that are not back to back. Some
// costs only show then: an idle CPU's wake-up, and the RCU grace period a
// cgroup migration waits for unless the cgroup2 mount has favordynmods.
// --keep-cgroup-options: the agents leave the cgroup2 mount's options alone
// ("cgroupFavorDynmods": false), to measure a host without favordynmods (clear
// it first: the option outlives the agent that set it).
// --init-exec: the agents exec each init instead of forking it from their
// zygote ("initZygote": false), to measure what the zygote saves.
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <kj/debug.h>

#include "bench/bench_support.h"
#include "isolator/cgroup.h"
#include "isolator/cgroup_dynmods.h"
#include "loop/io_context.h"
#include "nodeagent/config.h"
#include "nodeagent/rpc_endpoint.h"
#include "schema/gateway.capnp.h"

namespace {

using nodeagent::bench::json;
using nodeagent::bench::spawnAndWait;
using nodeagent::bench::Stats;
using nodeagent::bench::summarize;

using Clock = std::chrono::steady_clock;

// Fulfils `first` when the first stdout bytes arrive.
class FirstOutput final : public nodeagent::api::OutputSink::Server {
 public:
  explicit FirstOutput(kj::Own<kj::PromiseFulfiller<void>> first) : first_(kj::mv(first)) {}
  kj::Promise<void> stdout(StdoutContext) override {
    if (first_->isWaiting()) first_->fulfill();
    return kj::READY_NOW;
  }
  kj::Promise<void> stderr(StderrContext) override { return kj::READY_NOW; }
  kj::Promise<void> done(DoneContext) override { return kj::READY_NOW; }

 private:
  kj::Own<kj::PromiseFulfiller<void>> first_;
};

}  // namespace

int main(int argc, char** argv) {
  int iterations = 100;
  int idleMs = 0;
  bool keepCgroupOptions = false;
  bool initExec = false;
  std::string binDir = nodeagent::bench::ownBinDir();
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--iterations" && i + 1 < argc) iterations = atoi(argv[++i]);
    if (a == "--agent-bin" && i + 1 < argc) binDir = argv[++i];
    if (a == "--idle-ms" && i + 1 < argc) idleMs = atoi(argv[++i]);
    if (a == "--keep-cgroup-options") keepCgroupOptions = true;
    if (a == "--init-exec") initExec = true;
  }
  if (geteuid() != 0) {
    fprintf(stderr, "bench-create-exec needs root\n");
    return 1;
  }

  char tmpl[] = "/tmp/nodeagent-bench-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  chmod(dir.c_str(), 0711);
  std::string sock = dir + "/agent.sock";

  // The peers and the agents run interleaved, one iteration of each per
  // round, so drift in the machine's speed hits all of them alike.
  std::vector<std::string> bwrap = {"bwrap",
                                    "--ro-bind",
                                    "/usr",
                                    "/usr",
                                    "--symlink",
                                    "usr/lib",
                                    "/lib",
                                    "--symlink",
                                    "usr/lib64",
                                    "/lib64",
                                    "--symlink",
                                    "usr/bin",
                                    "/bin",
                                    "--proc",
                                    "/proc",
                                    "--dev",
                                    "/dev",
                                    "--unshare-all",
                                    "--die-with-parent",
                                    "/bin/echo",
                                    "hi"};
  bool haveBwrap = spawnAndWait(bwrap) == 0;

  // runc: a busybox rootfs, process /bin/true.
  std::string bundle = dir + "/bundle";
  std::string setup = "set -e; mkdir -p " + bundle + "/rootfs/bin && cp /bin/busybox " + bundle +
                      "/rootfs/bin/busybox && ln -s busybox " + bundle + "/rootfs/bin/echo && cd " +
                      bundle +
                      " && runc spec && sed -i 's/\"terminal\": true/\"terminal\": false/; "
                      "s/\"sh\"/\"\\/bin\\/echo\", \"hi\"/' config.json";
  bool haveRunc = spawnAndWait({"/bin/sh", "-c", setup}) == 0 &&
                  spawnAndWait({"runc", "run", "--bundle", bundle, "bench-warm"}) == 0;
  int counter = 0;

  auto startAgent = [](std::vector<std::string> argv) {
    return nodeagent::bench::spawnCommand(argv, /*quiet=*/false);
  };
  auto writeConfig = [&](const std::string& path, const std::string& json) {
    FILE* f = fopen(path.c_str(), "w");
    fputs(json.c_str(), f);
    fclose(f);
  };
  // Each agent has its own cgroup root, uid range and network (bridge, pools,
  // DNS address), as separate hosts would (and neither disturbs an agent
  // already running on this one). With one network the second agent to start
  // could not bind its DNS server and ran without networking.
  auto network = [](const char* bridge, int subnet) {
    return ", \"network\": {\"bridge\": \"" + std::string(bridge) + "\", \"ipv4Pool\": \"10." +
           std::to_string(subnet) + ".0.0/16\", \"ipv6Pool\": \"fd6e:" + std::to_string(subnet) +
           "::/64\"}";
  };
  // Written only when asked for, so that an older agent (--agent-bin) takes the config.
  std::string common = std::string("\"maxSandboxes\": 100, \"cgroupFavorDynmods\": ") +
                       (keepCgroupOptions ? "false" : "true") +
                       (initExec ? ", \"initZygote\": false" : "");
  writeConfig(dir + "/cold.json",
              "{\"cgroupRoot\": \"nodeagent-bench-cold\", \"uidBase\": 200000000, " + common +
                  network("nabbc0", 248) + "}");
  pid_t agent = startAgent({binDir + "/nodeagent", "--config", dir + "/cold.json", "--state-dir",
                            dir + "/state", "--listen", "unix:" + sock, "--log-level", "warn"});
  constexpr uint32_t kWarmPool = 4;
  std::string warmSock = dir + "/warm.sock";
  writeConfig(dir + "/warm.json",
              "{\"cgroupRoot\": \"nodeagent-bench-warm\", \"uidBase\": 300000000, " + common +
                  network("nabbw0", 249) +
                  ", \"templates\": [{\"name\": \"python\", \"warmPool\": " +
                  std::to_string(kWarmPool) + "}]}");
  pid_t warmAgent =
      startAgent({binDir + "/nodeagent", "--config", dir + "/warm.json", "--state-dir",
                  dir + "/state-warm", "--listen", "unix:" + warmSock, "--log-level", "warn"});
  for (int i = 0; i < 400 && access(sock.c_str(), F_OK) != 0; ++i) usleep(10000);
  for (int i = 0; i < 400 && access(warmSock.c_str(), F_OK) != 0; ++i) usleep(10000);

  std::vector<double> oursUs, createUs, execUs, killUs, bwrapUs, runcUs, hostUs;
  std::vector<double> warmUs, warmCreateUs, warmExecUs, warmKillUs;
  uint64_t warmClaims = 0;
  {
    nodeagent::loop::IoContext io;
    auto conn = nodeagent::connectToNode(io.port, nodeagent::parseListenAddress("unix:" + sock),
                                         nullptr, 8 << 20)
                    .wait(io.waitScope);
    auto coldNode = conn->bootstrap().castAs<nodeagent::api::Node>();
    auto warmConn =
        nodeagent::connectToNode(io.port, nodeagent::parseListenAddress("unix:" + warmSock),
                                 nullptr, 8 << 20)
            .wait(io.waitScope);
    auto warmNode = warmConn->bootstrap().castAs<nodeagent::api::Node>();
    auto since = [](Clock::time_point t) {
      return std::chrono::duration<double, std::micro>(Clock::now() - t).count();
    };
    // The warm agent's pool: (idle, claims so far).
    auto warmPool = [&]() {
      auto info = warmNode.infoRequest().send().wait(io.waitScope).getInfo();
      for (auto p : info.getWarmPools()) return std::make_pair(p.getIdle(), p.getClaims());
      return std::make_pair(0u, uint64_t(0));
    };
    auto waitWarmPoolFull = [&]() {
      for (int i = 0; i < 2000 && warmPool().first < kWarmPool; ++i) usleep(1000);
    };
    auto idle = [&]() {
      if (idleMs > 0) usleep(useconds_t(idleMs) * 1000);
    };
    // create -> exec `echo hi` (pipelined) -> first output -> kill, each phase timed.
    auto run = [&](nodeagent::api::Node::Client& node, std::vector<double>* total,
                   std::vector<double>* createOut, std::vector<double>* execOut,
                   std::vector<double>* killOut) {
      idle();
      auto t0 = Clock::now();
      auto create = node.createRequest();
      create.initSpec().setTemplate("python");
      create.getSpec().setTenant("bench");
      auto created = create.send();
      auto sandbox = created.getSandbox();
      auto exec = sandbox.execRequest();
      auto args = exec.initRequest().initArgv(2);
      args.set(0, "echo");
      args.set(1, "hi");
      auto first = kj::newPromiseAndFulfiller<void>();
      exec.setOutput(kj::heap<FirstOutput>(kj::mv(first.fulfiller)));
      auto started = exec.send();
      created.wait(io.waitScope);
      double createTime = since(t0);
      auto t1 = Clock::now();
      first.promise.wait(io.waitScope);
      double execTime = since(t1);
      auto t2 = Clock::now();
      sandbox.killRequest().send().wait(io.waitScope);
      if (total != nullptr) {
        killOut->push_back(since(t2));
        createOut->push_back(createTime);
        execOut->push_back(execTime);
        total->push_back(since(t0));
      }
    };
    auto ours = [&](bool record) {
      run(coldNode, record ? &oursUs : nullptr, &createUs, &execUs, &killUs);
    };
    auto warm = [&](bool record) {
      waitWarmPoolFull();  // untimed: each create is a claim
      run(warmNode, record ? &warmUs : nullptr, &warmCreateUs, &warmExecUs, &warmKillUs);
    };
    ours(false);  // warm-up
    warm(false);
    uint64_t claimsBefore = warmPool().second;
    auto bwrapRun = [&]() {
      if (!haveBwrap) return;
      idle();
      auto t = Clock::now();
      spawnAndWait(bwrap);
      bwrapUs.push_back(since(t));
    };
    auto hostRun = [&]() {
      idle();
      double us = nodeagent::bench::spawnToFirstOutputUs<Clock>({"/bin/echo", "hi"});
      if (us >= 0) hostUs.push_back(us);
    };
    auto runcRun = [&]() {
      if (!haveRunc) return;
      idle();
      auto t = Clock::now();
      spawnAndWait({"runc", "run", "--bundle", bundle, "bench-" + std::to_string(counter++)});
      runcUs.push_back(since(t));
    };
    // One of each per round, the order rotating, so that no subject always
    // runs right after the same one (runc evicts much of the caches; a cold
    // create leaves its teardown running for a millisecond or two). Every
    // subject starts once the warm agent has refilled its pool: a refill is a
    // whole launch in the background, which would otherwise land on whichever
    // subject runs next.
    for (int i = 0; i < iterations; ++i) {
      for (int k = 0; k < 5; ++k) {
        waitWarmPoolFull();
        switch ((i + k) % 5) {
          case 0:
            ours(true);
            break;
          case 1:
            warm(true);
            break;
          case 2:
            bwrapRun();
            break;
          case 3:
            runcRun();
            break;
          case 4:
            hostRun();
            break;
        }
      }
    }
    warmClaims = warmPool().second - claimsBefore;
  }
  kill(agent, SIGTERM);
  kill(warmAgent, SIGTERM);
  waitpid(agent, nullptr, 0);
  waitpid(warmAgent, nullptr, 0);
  nodeagent::bench::removeAgentPins("nodeagent-bench-cold");
  nodeagent::bench::removeAgentPins("nodeagent-bench-warm");
  // The agents leave their bridges and NAT tables for the next run; this run's are its own.
  for (const char* bridge : {"nabbc0", "nabbw0"}) {
    spawnAndWait({"ip", "link", "del", bridge});
    spawnAndWait({"nft", "delete", "table", "inet", std::string("nodeagent_") + bridge});
  }
  spawnAndWait({"rm", "-rf", dir});
  std::string cgroupOptions =
      nodeagent::isolator::cgroup2SuperOptions(nodeagent::isolator::detectCgroupLayout().v2);
  Stats oursStats = summarize(oursUs), createStats = summarize(createUs),
        execStats = summarize(execUs), killStats = summarize(killUs);
  Stats warmStats = summarize(warmUs), warmCreateStats = summarize(warmCreateUs),
        warmExecStats = summarize(warmExecUs), warmKillStats = summarize(warmKillUs);
  Stats bwrapStats = haveBwrap ? summarize(bwrapUs) : Stats{};
  Stats runcStats = haveRunc ? summarize(runcUs) : Stats{};
  Stats hostStats = summarize(hostUs);

  printf("{\n  \"benchmark\": \"create_first_output_kill\",\n  \"iterations\": %d,\n", iterations);
  printf("  \"init_started_by\": \"%s\",\n", initExec ? "exec" : "zygote");
  printf("  \"idle_ms_before_each_run\": %d,\n  \"cgroup2_options\": \"%s\",\n", idleMs,
         cgroupOptions.c_str());
  printf("  %s,\n", json("nodeagent", oursStats).c_str());
  printf("  %s,\n", json("nodeagent_create_phase", createStats).c_str());
  printf("  %s,\n", json("nodeagent_exec_phase", execStats).c_str());
  printf("  %s,\n", json("nodeagent_kill_phase", killStats).c_str());
  printf("  %s,\n", json("nodeagent_warm", warmStats).c_str());
  printf("  %s,\n", json("nodeagent_warm_create_phase", warmCreateStats).c_str());
  printf("  %s,\n", json("nodeagent_warm_exec_phase", warmExecStats).c_str());
  printf("  %s,\n", json("nodeagent_warm_kill_phase", warmKillStats).c_str());
  printf("  \"warm_pool_size\": %u,\n  \"warm_claims\": %llu,\n", kWarmPool,
         static_cast<unsigned long long>(warmClaims));
  if (haveBwrap) printf("  %s,\n", json("bwrap", bwrapStats).c_str());
  if (haveRunc) printf("  %s,\n", json("runc", runcStats).c_str());
  printf("  %s,\n", json("host_posix_spawn_echo_first_output", hostStats).c_str());
  printf("  \"ratio_p50_vs_bwrap\": %.2f,\n", haveBwrap ? oursStats.p50Us / bwrapStats.p50Us : 0.0);
  // A sandbox ready for work (no command run yet) against bwrap's whole run
  // of `echo` (which includes that command's exec): flattering to us.
  printf("  \"ratio_create_phase_p50_vs_bwrap\": %.2f,\n",
         haveBwrap ? createStats.p50Us / bwrapStats.p50Us : 0.0);
  printf("  \"ratio_warm_p50_vs_bwrap\": %.2f,\n",
         haveBwrap ? warmStats.p50Us / bwrapStats.p50Us : 0.0);
  // How far a run through the agent is above the bare program.
  printf("  \"ratio_warm_p50_vs_host_spawn\": %.2f,\n", warmStats.p50Us / hostStats.p50Us);
  printf("  \"ratio_warm_exec_phase_p50_vs_host_spawn\": %.2f,\n",
         warmExecStats.p50Us / hostStats.p50Us);
  printf("  \"ratio_p50_vs_runc\": %.2f\n}\n", haveRunc ? oursStats.p50Us / runcStats.p50Us : 0.0);
  return 0;
}
