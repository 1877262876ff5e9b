// The standard fleet scenario of issue 5, and its measurements:
//  1. capacity changes on a calm network: time until 99.99% of nodes know;
//  2. a crash: when the first and (p99 of) all nodes declare it dead, then
//     its restart: when all know the new life;
//  3. a long run at packet loss with a fraction of nodes stalling, counting
//     healthy nodes declared dead, the gossip bytes per node, and the
//     convergence of capacity changes made during it;
//  4. placement: every node places concurrently until the fleet is 90%
//     utilized; the success rate, overcommitted nodes and latency.
#pragma once

#include <stdint.h>

#include <kj/string.h>

#include "cluster/config.h"

namespace nodeagent::cluster::sim {

struct ScenarioOptions {
  size_t nodes = 1000;
  uint64_t seed = 1;
  Config config = Config::fastLan();
  kj::StringPtr profile = "fastLan";
  uint32_t capacityChanges = 3;
  // Phase 3 runs on its own fleet of at most this many nodes (an hour of
  // 10,000 nodes is too slow to run by default).
  size_t fpNodes = 1000;
  int64_t fpDurationNs = 3600'000'000'000;
  double fpLoss = 0.05;
  double stallFraction = 0.10;
  int64_t stallNs = 1'000'000'000;
  // Each staller stalls, runs for a uniform gap in [min, max], stalls again.
  int64_t stallGapMinNs = 4'000'000'000;
  int64_t stallGapMaxNs = 16'000'000'000;
  int64_t lossyChangeEveryNs = 60'000'000'000;
  // Phase 4 (placement) runs on a fresh calm fleet of at most this many.
  size_t placementNodes = 1000;
};

struct ScenarioResult {
  kj::String json;  // one line; a pure function of the options
  // For assertions.
  double convergenceP99Ms = -1;
  double convergenceAllMs = -1;
  double detectFirstMs = -1;
  double detectAllP99Ms = -1;
  double rejoinAllMs = -1;
  uint64_t falsePositives = 0;
  double bytesPerNodePerS = 0;
  double lossyConvergenceP99Ms = -1;
  double placementSuccess = 0;
  uint64_t overcommit = 0;
};

ScenarioResult runScenario(const ScenarioOptions& options);

}  // namespace nodeagent::cluster::sim
