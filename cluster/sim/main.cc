// cluster-sim: runs the standard fleet scenario in the deterministic
// simulator and prints one JSON object (wall time goes to stderr).
//
//   cluster-sim --nodes N --seed S [--profile fastLan|memberlist]
//               [--fp-nodes N] [--fp-seconds S] [--changes K]
//               [--placement-nodes N]

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <chrono>

#include "cluster/sim/scenario.h"

namespace {

[[noreturn]] void usage() {
  fprintf(stderr,
          "usage: cluster-sim --nodes N --seed S [--profile fastLan|memberlist]\n"
          "                   [--fp-nodes N] [--fp-seconds S] [--changes K]\n"
          "                   [--placement-nodes N]\n");
  exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace nodeagent::cluster;
  sim::ScenarioOptions o;
  for (int i = 1; i < argc; ++i) {
    auto arg = [&]() -> const char* {
      if (i + 1 >= argc) usage();
      return argv[++i];
    };
    if (strcmp(argv[i], "--nodes") == 0) {
      o.nodes = strtoull(arg(), nullptr, 10);
    } else if (strcmp(argv[i], "--seed") == 0) {
      o.seed = strtoull(arg(), nullptr, 10);
    } else if (strcmp(argv[i], "--fp-nodes") == 0) {
      o.fpNodes = strtoull(arg(), nullptr, 10);
    } else if (strcmp(argv[i], "--fp-seconds") == 0) {
      o.fpDurationNs = int64_t(strtoull(arg(), nullptr, 10)) * 1'000'000'000;
    } else if (strcmp(argv[i], "--placement-nodes") == 0) {
      o.placementNodes = strtoull(arg(), nullptr, 10);
    } else if (strcmp(argv[i], "--changes") == 0) {
      o.capacityChanges = uint32_t(strtoul(arg(), nullptr, 10));
    } else if (strcmp(argv[i], "--profile") == 0) {
      const char* p = arg();
      if (strcmp(p, "memberlist") == 0) {
        o.config = Config::memberlist();
        o.profile = "memberlist";
      } else if (strcmp(p, "fastLan") == 0) {
        o.config = Config::fastLan();
        o.profile = "fastLan";
      } else {
        usage();
      }
    } else {
      usage();
    }
  }
  if (o.nodes < 2 || o.capacityChanges == 0) usage();
  auto start = std::chrono::steady_clock::now();
  auto result = sim::runScenario(o);
  double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  printf("%s\n", result.json.cStr());
  fprintf(stderr, "wall_s %.1f\n", wall);
  return 0;
}
