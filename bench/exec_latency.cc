// Exec round trip in a live sandbox: exec `true` -> its exit status, through
// the real agent's RPC, sequentially. Measured three ways in one run:
//   - idle: the node runs nothing else;
//   - neighbour: another tenant's sandbox burns its whole CPU allowance
//     (two busy loops) meanwhile; the goal is within 2x of idle;
//   - churn: another tenant creates and kills sandboxes back to back;
// and beside the peers, interleaved in rotating order: `runc exec true` into
// a running runc container, and a plain posix_spawn of /bin/true on the host
// (the floor).
// Prints one JSON object.
//
//   build/bin/bench-exec [--iterations N]
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <kj/debug.h>

#include "bench/bench_support.h"
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

double since(Clock::time_point t) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t).count();
}

}  // namespace

int main(int argc, char** argv) {
  int iterations = 200;
  std::string binDir = nodeagent::bench::ownBinDir();
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--iterations" && i + 1 < argc) iterations = atoi(argv[++i]);
  }
  if (geteuid() != 0) {
    fprintf(stderr, "bench-exec needs root\n");
    return 1;
  }
  char tmpl[] = "/tmp/nodeagent-bench-exec-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  chmod(dir.c_str(), 0711);
  std::string sock = dir + "/agent.sock";
  {
    FILE* f = fopen((dir + "/config.json").c_str(), "w");
    fputs("{\"cgroupRoot\": \"nodeagent-bench-exec\", \"uidBase\": 400000000}", f);
    fclose(f);
  }
  pid_t agent = nodeagent::bench::spawnCommand(
      {binDir + "/nodeagent", "--config", dir + "/config.json", "--state-dir", dir + "/state",
       "--listen", "unix:" + sock, "--log-level", "warn"},
      false);
  for (int i = 0; i < 400 && access(sock.c_str(), F_OK) != 0; ++i) usleep(10000);

  // runc peer: a running busybox container to `runc exec` into.
  std::string bundle = dir + "/bundle";
  std::string container = "bench-exec-" + std::to_string(getpid());
  std::string setup = "set -e; mkdir -p " + bundle + "/rootfs/bin && cp /bin/busybox " + bundle +
                      "/rootfs/bin/busybox && for c in true sleep; do ln -s busybox " + bundle +
                      "/rootfs/bin/$c; done && cd " + bundle +
                      " && runc spec && sed -i 's/\"terminal\": true/\"terminal\": false/; "
                      "s/\"sh\"/\"\\/bin\\/sleep\", \"1000\"/' config.json";
  bool haveRunc = spawnAndWait({"/bin/sh", "-c", setup}) == 0 &&
                  spawnAndWait({"runc", "run", "--detach", "--bundle", bundle, container}) == 0;

  std::vector<double> idleUs, neighbourUs, churnUs, runcUs, hostUs;
  double churnSeconds = 0;
  int churnCreates = 0;
  {
    nodeagent::loop::IoContext io;
    auto conn = nodeagent::connectToNode(io.port, nodeagent::parseListenAddress("unix:" + sock),
                                         nullptr, 8 << 20)
                    .wait(io.waitScope);
    auto node = conn->bootstrap().castAs<nodeagent::api::Node>();
    auto create = [&](const char* tenant) {
      auto request = node.createRequest();
      request.initSpec().setTemplate("python");
      request.getSpec().setTenant(tenant);
      return request.send().wait(io.waitScope).getSandbox();
    };
    auto sandbox = create("bench");
    auto execTrue = [&]() {
      auto t = Clock::now();
      auto exec = sandbox.execRequest();
      exec.initRequest().initArgv(1).set(0, "true");
      auto status = exec.send().getProcess().waitRequest().send().wait(io.waitScope);
      KJ_ASSERT(status.getStatus().getCode() == 0);
      return since(t);
    };
    auto hostSpawn = [&]() {
      auto t = Clock::now();
      spawnAndWait({"/bin/true"});
      hostUs.push_back(since(t));
    };
    auto runcExec = [&]() {
      if (!haveRunc) return;
      auto t = Clock::now();
      spawnAndWait({"runc", "exec", container, "/bin/true"});
      runcUs.push_back(since(t));
    };
    for (int i = 0; i < 10; ++i) execTrue();  // warm-up
    // One of each per round, the order rotating: whatever follows runc (a Go
    // binary that evicts much of the caches) pays for it, so no subject may
    // always be the one.
    for (int i = 0; i < iterations; ++i) {
      for (int k = 0; k < 3; ++k) {
        switch ((i + k) % 3) {
          case 0:
            idleUs.push_back(execTrue());
            break;
          case 1:
            hostSpawn();
            break;
          case 2:
            runcExec();
            break;
        }
      }
    }

    // A neighbour of another tenant burns its CPU allowance (1 vCPU burst).
    auto hog = create("neighbour");
    for (int i = 0; i < 2; ++i) {
      auto exec = hog.execRequest();
      auto args = exec.initRequest().initArgv(3);
      args.set(0, "sh");
      args.set(1, "-c");
      args.set(2, "while :; do :; done");
      exec.send().wait(io.waitScope);
    }
    usleep(200000);
    for (int i = 0; i < iterations; ++i) neighbourUs.push_back(execTrue());
    hog.killRequest().send().wait(io.waitScope);

    // A neighbour of another tenant creates and kills sandboxes back to back
    // (through the CLI, in a process of its own) meanwhile.
    std::string stop = dir + "/churn.stop", counter = dir + "/churn.count";
    std::string sbx = binDir + "/sbx --connect unix:" + sock;
    pid_t churn = nodeagent::bench::spawnCommand(
        {"/bin/sh", "-c",
         "n=0; while [ ! -e " + stop + " ]; do id=$(" + sbx +
             " create --template python --tenant churn) && " + sbx +
             " kill $id >/dev/null; n=$((n+1)); done; echo $n > " + counter});
    usleep(300000);
    auto churnStart = Clock::now();
    for (int i = 0; i < iterations; ++i) churnUs.push_back(execTrue());
    churnSeconds = since(churnStart) / 1e6;
    FILE* f = fopen(stop.c_str(), "w");
    if (f != nullptr) fclose(f);
    waitpid(churn, nullptr, 0);
    if (FILE* c = fopen(counter.c_str(), "r")) {
      if (fscanf(c, "%d", &churnCreates) != 1) churnCreates = 0;
      fclose(c);
    }
    sandbox.killRequest().send().wait(io.waitScope);
  }
  if (haveRunc) spawnAndWait({"runc", "delete", "--force", container});
  kill(agent, SIGTERM);
  waitpid(agent, nullptr, 0);
  nodeagent::bench::removeAgentPins("nodeagent-bench-exec");
  spawnAndWait({"rm", "-rf", dir});

  Stats idle = summarize(idleUs), neighbour = summarize(neighbourUs), host = summarize(hostUs);
  Stats churn = summarize(churnUs);
  Stats runc = haveRunc ? summarize(runcUs) : Stats{};
  printf("{\n  \"benchmark\": \"exec_true_round_trip\",\n  \"iterations\": %d,\n", iterations);
  printf("  %s,\n", json("nodeagent_idle", idle).c_str());
  printf("  %s,\n", json("nodeagent_with_cpu_hog_neighbour", neighbour).c_str());
  printf("  %s,\n", json("nodeagent_with_create_churn_neighbour", churn).c_str());
  printf("  \"neighbour_creates_per_s\": %.1f,\n",
         churnSeconds > 0 ? churnCreates / churnSeconds : 0);
  printf("  %s,\n", json("host_posix_spawn_true", host).c_str());
  if (haveRunc) printf("  %s,\n", json("runc_exec", runc).c_str());
  printf("  \"ratio_neighbour_vs_idle_p50\": %.2f,\n", neighbour.p50Us / idle.p50Us);
  printf("  \"ratio_churn_neighbour_vs_idle_p50\": %.2f,\n", churn.p50Us / idle.p50Us);
  printf("  \"ratio_churn_neighbour_vs_idle_p99\": %.2f,\n", churn.p99Us / idle.p99Us);
  printf("  \"ratio_idle_p50_vs_host_spawn\": %.2f,\n", idle.p50Us / host.p50Us);
  printf("  \"ratio_idle_p50_vs_runc_exec\": %.2f\n}\n", haveRunc ? idle.p50Us / runc.p50Us : 0.0);
  return 0;
}
