// The placement phase of the simulator: every node runs a Placer and an
// Admission; reservations travel as simulated messages (network delay each
// way); every node places specs of random sizes concurrently until the
// fleet reaches a target utilization of its binding resource. An auditor
// that sees every grant independently of the ledgers counts nodes whose
// admitted total ever exceeded their capacity.
#pragma once

#include <stdint.h>

#include "cluster/placement.h"
#include "cluster/sim/simulator.h"

namespace nodeagent::cluster::sim {

struct PlacementOptions {
  Resources capacity{32'000, uint64_t(128) << 30, 64};  // per node
  double targetUtilization = 0.90;
  // Between one placement's answer and a node's next placement.
  int64_t thinkMinNs = 0;
  int64_t thinkMaxNs = 100'000'000;
  int64_t limitNs = 300'000'000'000;  // simulated time cap
  uint32_t templates = 8;             // each node is warm for one of these
  Placer::Options placer;
};

struct PlacementResult {
  uint64_t placements = 0;  // place() calls started below the target
  uint64_t placed = 0;      // of those, how many got a reservation
  uint64_t reservationsAsked = 0;
  uint64_t refusals = 0;
  uint64_t warmHits = 0;            // placed on a node warm for the template
  uint64_t overcommittedNodes = 0;  // per the auditor
  uint64_t ledgerViolations = 0;    // an Admission's used > capacity
  uint64_t commitsLost = 0;         // commit after the lease lapsed
  double success = 0;               // placed / placements
  double utilization = 0;           // of the binding resource, at the end
  double latencyP50Ms = -1, latencyP99Ms = -1;
  double attemptsMean = 0;
  uint32_t attemptsMax = 0;
  double simulatedS = 0;
};

// Runs on the simulator's current fleet (all nodes up, free capacity
// equal to `capacity`).
PlacementResult runPlacement(Simulator& sim, const PlacementOptions& options);

}  // namespace nodeagent::cluster::sim
