// Placement latency in a real five-node fleet (issue 5): each agent in its
// own network namespace, gossiping over UDP and reserving over mutual-TLS
// RPC. Every iteration asks one node (round robin) to place a python
// sandbox, then kills it; the peer, measured in the same run and alternated
// with it, is a plain create on the same node (what a gateway pays without
// a fleet to choose from).
//
//   bench-fleet-place [--iterations N] [--nodes N]
//
// Prints one JSON object: place decision (sample + reservation round trip,
// as the agent reports it), place end to end (decision + create on the
// chosen node + reply through the placing node), local create, and ratios.
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench/bench_support.h"
#include "loop/io_context.h"
#include "nodeagent/config.h"
#include "nodeagent/rpc_endpoint.h"
#include "schema/gateway.capnp.h"
#include "support/fleet.h"

namespace {

double nowUs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return double(ts.tv_sec) * 1e6 + double(ts.tv_nsec) / 1e3;
}

}  // namespace

int main(int argc, char** argv) {
  int iterations = 100;
  int nodes = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--iterations") == 0) iterations = atoi(argv[i + 1]);
    if (strcmp(argv[i], "--nodes") == 0) nodes = atoi(argv[i + 1]);
  }
  if (geteuid() != 0) {
    fprintf(stderr, "bench-fleet-place: needs root (network namespaces, cgroups)\n");
    return 1;
  }
  using namespace nodeagent;
  testing::FleetOptions options;
  options.binDir = bench::ownBinDir();
  options.capacity.cpuMillis = 16000;
  options.capacity.memoryBytes = 32ull << 30;
  options.capacity.slots = 32;
  testing::Fleet fleet(nodes, options);

  loop::IoContext io;
  std::vector<kj::Own<RpcConnection>> connections;
  std::vector<api::Node::Client> clients;
  for (int i = 0; i < nodes; ++i) {
    connections.push_back(connectToNode(io.port,
                                        parseListenAddress(fleet.agent(i).target().c_str()),
                                        nullptr, 8 << 20)
                              .wait(io.waitScope));
    clients.push_back(connections.back()->bootstrap().castAs<api::Node>());
  }
  // Until every node sees every other alive with its capacity.
  bool converged = testing::Fleet::waitUntil(
      [&] {
        for (auto& c : clients) {
          auto members = c.membersRequest().send().wait(io.waitScope).getMembers();
          size_t alive = 0;
          for (auto m : members) alive += m.getState() == "alive";
          if (alive != size_t(nodes)) return false;
          if (c.capacityRequest().send().wait(io.waitScope).getNodes().size() != size_t(nodes)) {
            return false;
          }
        }
        return true;
      },
      30'000);
  if (!converged) {
    fprintf(stderr, "bench-fleet-place: the fleet did not converge\n");
    return 1;
  }

  auto pythonSpec = [](api::SandboxSpec::Builder spec) {
    spec.setTemplate("python");
    spec.setTenant("bench");
  };
  std::vector<double> decision, placeTotal, create;
  size_t remote = 0;
  auto placeOnce = [&](int from, bool record) {
    auto request = clients[size_t(from)].placeRequest();
    pythonSpec(request.initSpec());
    double start = nowUs();
    auto response = request.send().wait(io.waitScope);
    double end = nowUs();
    if (record) {
      placeTotal.push_back(end - start);
      decision.push_back(double(response.getPlacement().getDecisionNs()) / 1e3);
      remote += response.getPlacement().getAddress() != fleet.network().address(from) + ":7946";
    }
    response.getSandbox().killRequest().send().wait(io.waitScope);
  };
  auto createOnce = [&](int on, bool record) {
    auto request = clients[size_t(on)].createRequest();
    pythonSpec(request.initSpec());
    double start = nowUs();
    auto response = request.send().wait(io.waitScope);
    double end = nowUs();
    if (record) create.push_back(end - start);
    response.getSandbox().killRequest().send().wait(io.waitScope);
  };
  for (int i = 0; i < nodes; ++i) {  // warm-up: connections, caches
    placeOnce(i, false);
    createOnce(i, false);
  }
  for (int i = 0; i < iterations; ++i) {
    int node = i % nodes;
    // Alternate which goes first, so neither always runs on a cooler machine.
    if (i % 2 == 0) {
      placeOnce(node, true);
      createOnce(node, true);
    } else {
      createOnce(node, true);
      placeOnce(node, true);
    }
  }
  auto d = bench::summarize(decision);
  auto p = bench::summarize(placeTotal);
  auto c = bench::summarize(create);
  printf(
      "{\"bench\": \"fleet-place\", \"nodes\": %d, %s, %s, %s, "
      "\"remote_fraction\": %.2f, \"place_total_vs_create_p50\": %.2f, "
      "\"decision_share_of_place_p50\": %.3f}\n",
      nodes, bench::json("place_decision", d).c_str(), bench::json("place_total", p).c_str(),
      bench::json("create_local", c).c_str(), double(remote) / double(placeTotal.size()),
      p.p50Us / c.p50Us, d.p50Us / p.p50Us);
  return 0;
}
