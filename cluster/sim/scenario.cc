#include "cluster/sim/scenario.h"

#include <stdio.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <tuple>
#include <vector>

#include "cluster/sim/placement_sim.h"
#include "cluster/sim/simulator.h"

namespace nodeagent::cluster::sim {
namespace {

constexpr int64_t kSecond = 1'000'000'000;
constexpr int64_t kNever = INT64_MAX;

double ms(int64_t ns) {
  return ns == kNever ? -1 : double(ns) / 1e6;
}

double percentile(std::vector<int64_t> v, double p) {
  if (v.empty()) return -1;
  std::sort(v.begin(), v.end());
  size_t k = size_t(std::ceil(p * double(v.size())));
  return ms(v[std::min(v.size(), std::max<size_t>(k, 1)) - 1]);
}

NodeState fleetNode() {
  NodeState s;
  s.freeCpuMillis = 32'000;
  s.freeMemoryBytes = uint64_t(128) << 30;
  s.freeDiskBytes = uint64_t(1) << 40;
  s.freeSlots = 64;
  return s;
}

// Watches what every node learns and when.
class Metrics final : public Observer {
 public:
  void attach(Simulator& sim) { sim_ = &sim; }

  // A capacity change: per observer, when it first held (owner, gen) >= version.
  void watchCapacity(NodeId owner, uint64_t gen, uint64_t version) {
    capOwner_ = owner;
    capGen_ = gen;
    capVersion_ = version;
    capStart_ = sim_->now();
    capTimes_.assign(sim_->size(), kNever);
  }
  // Time until `fraction` of the nodes up now (other than the owner) knew.
  int64_t capacityTime(double fraction) const {
    std::vector<int64_t> t;
    for (size_t i = 0; i < sim_->size(); ++i)
      if (sim_->up(i) && sim_->id(i) != capOwner_) t.push_back(capTimes_[i]);
    return reached(t, fraction, capStart_);
  }

  // A crash: per observer, when it declared (node, gen) dead.
  void watchDeath(NodeId node, uint64_t gen) {
    deathNode_ = node;
    deathGen_ = gen;
    deathStart_ = sim_->now();
    deathTimes_.assign(sim_->size(), kNever);
  }
  std::vector<int64_t> deathDelays() const {
    std::vector<int64_t> t;
    for (size_t i = 0; i < sim_->size(); ++i) {
      if (!sim_->up(i) || sim_->id(i) == deathNode_) continue;
      t.push_back(deathTimes_[i] == kNever ? kNever : deathTimes_[i] - deathStart_);
    }
    return t;
  }

  // A restart: per observer, when it saw the new generation alive.
  void watchRejoin(NodeId node, uint64_t gen) {
    rejoinNode_ = node;
    rejoinGen_ = gen;
    rejoinStart_ = sim_->now();
    rejoinTimes_.assign(sim_->size(), kNever);
  }
  int64_t rejoinTime() const {
    std::vector<int64_t> t;
    for (size_t i = 0; i < sim_->size(); ++i)
      if (sim_->up(i) && sim_->id(i) != rejoinNode_) t.push_back(rejoinTimes_[i]);
    return reached(t, 1.0, rejoinStart_);
  }

  uint64_t falsePositives() const { return falsePositives_.size(); }
  uint64_t falseDeclarations() const { return falseDeclarations_; }

  void memberChanged(size_t observer, const Member& m, MemberState previous) override {
    (void)previous;
    static const char* trace = getenv("SIM_TRACE");
    if (trace != nullptr) {
      KJ_IF_MAYBE (i, sim_->indexOf(m.id)) {
        if (*i == size_t(atoi(trace))) {
          fprintf(stderr, "T t=%.3f obs=%zu state=%d inc=%u stalled=%d\n", sim_->now() / 1e9,
                  observer, int(m.state), m.incarnation, sim_->stalled(*i));
        }
      }
    }
    if (m.state == MemberState::kDead) {
      if (m.id == deathNode_ && m.generation == deathGen_ && deathTimes_[observer] == kNever) {
        deathTimes_[observer] = sim_->now();
      }
      KJ_IF_MAYBE (i, sim_->indexOf(m.id)) {
        // Declared dead while running in that very life: a false positive.
        if (sim_->up(*i) && sim_->node(*i).membership().generation() == m.generation) {
          falsePositives_.insert({m.id, m.generation, m.incarnation});
          if (getenv("SIM_DEBUG")) {
            auto& n = sim_->node(*i);
            fprintf(stderr,
                    "FP t=%.3f observer=%zu target=%zu inc=%u targetInc=%u stalled=%d health=%u\n",
                    sim_->now() / 1e9, observer, *i, m.incarnation, n.membership().incarnation(),
                    sim_->stalled(*i), n.membership().healthScore());
          }
          ++falseDeclarations_;
        }
      }
    } else if (m.state == MemberState::kAlive && m.id == rejoinNode_ &&
               m.generation == rejoinGen_ && rejoinTimes_[observer] == kNever) {
      rejoinTimes_[observer] = sim_->now();
    }
  }
  void capacityChanged(size_t observer, const CapacityRecord& r) override {
    if (r.owner == capOwner_ && observer < capTimes_.size() && capTimes_[observer] == kNever &&
        (r.generation > capGen_ || (r.generation == capGen_ && r.version >= capVersion_))) {
      capTimes_[observer] = sim_->now();
    }
  }

 private:
  static int64_t reached(std::vector<int64_t> t, double fraction, int64_t start) {
    if (t.empty()) return 0;
    std::sort(t.begin(), t.end());
    size_t need = size_t(std::ceil(fraction * double(t.size())));
    need = std::clamp<size_t>(need, 1, t.size());
    int64_t at = t[need - 1];
    return at == kNever ? kNever : at - start;
  }

  Simulator* sim_ = nullptr;
  NodeId capOwner_ = 0;
  uint64_t capGen_ = 0, capVersion_ = 0;
  int64_t capStart_ = 0;
  std::vector<int64_t> capTimes_;
  NodeId deathNode_ = 0;
  uint64_t deathGen_ = 0;
  int64_t deathStart_ = 0;
  std::vector<int64_t> deathTimes_;
  NodeId rejoinNode_ = 0;
  uint64_t rejoinGen_ = 0;
  int64_t rejoinStart_ = 0;
  std::vector<int64_t> rejoinTimes_;
  std::set<std::tuple<NodeId, uint64_t, uint32_t>> falsePositives_;
  uint64_t falseDeclarations_ = 0;
};

size_t randomUp(Simulator& sim, kj::Maybe<size_t> except = nullptr) {
  for (;;) {
    size_t i = sim.random().below(sim.size());
    if (!sim.up(i) || sim.stalled(i)) continue;
    KJ_IF_MAYBE (e, except) {
      if (*e == i) continue;
    }
    return i;
  }
}

// Changes a node's capacity and runs until 99.99% know (or `limit`).
int64_t capacityChange(Simulator& sim, Metrics& metrics, size_t owner, int64_t limitNs,
                       int64_t* allNs = nullptr) {
  NodeState s = fleetNode();
  s.freeCpuMillis = uint32_t(sim.random().below(32'000));
  s.freeSlots = uint32_t(sim.random().below(64));
  s.warmTemplates.add(kj::str("python-3.12"));
  Node& node = sim.node(owner);
  node.setLocalState(kj::mv(s));
  metrics.watchCapacity(node.id(), node.membership().generation(),
                        node.dissemination().localVersion());
  int64_t start = sim.now();
  for (int64_t t = start; t < start + limitNs; t += 50'000'000) {
    sim.runUntil(t + 50'000'000);
    if (metrics.capacityTime(1.0) != kNever) break;
  }
  if (allNs != nullptr) *allNs = metrics.capacityTime(1.0);
  return metrics.capacityTime(0.9999);
}

// A staller stalls, runs for a random gap, and stalls again until `end`.
void scheduleStall(Simulator& sim, size_t i, const ScenarioOptions& o, int64_t end, int64_t at) {
  sim.at(at, [&sim, i, &o, end]() {
    if (sim.now() >= end) return;
    if (sim.up(i)) sim.stall(i, o.stallNs);
    scheduleStall(sim, i, o, end,
                  sim.now() + o.stallNs + sim.random().between(o.stallGapMinNs, o.stallGapMaxNs));
  });
}

}  // namespace

ScenarioResult runScenario(const ScenarioOptions& o) {
  ScenarioResult r;
  Metrics metrics;
  kj::Own<Simulator> sim = kj::heap<Simulator>(o.seed, o.config, &metrics);
  metrics.attach(*sim);
  sim->addConvergedFleet(o.nodes, fleetNode());
  sim->runUntil(5 * kSecond);  // let the probe rounds settle

  // 1. Capacity changes on a calm LAN.
  std::vector<int64_t> conv, convAll;
  for (uint32_t c = 0; c < o.capacityChanges; ++c) {
    int64_t all = kNever;
    conv.push_back(capacityChange(*sim, metrics, randomUp(*sim), 10 * kSecond, &all));
    convAll.push_back(all);
    sim->runUntil(sim->now() + 2 * kSecond);
  }
  r.convergenceP99Ms = ms(*std::max_element(conv.begin(), conv.end()));
  r.convergenceAllMs = ms(*std::max_element(convAll.begin(), convAll.end()));

  // 2. A crash, then the node restarts in a new generation.
  size_t victim = randomUp(*sim);
  metrics.watchDeath(sim->id(victim), sim->node(victim).membership().generation());
  sim->crash(victim);
  int64_t crashAt = sim->now();
  for (int64_t t = crashAt; t < crashAt + 60 * kSecond; t += 100'000'000) {
    sim->runUntil(t + 100'000'000);
    auto d = metrics.deathDelays();
    if (std::none_of(d.begin(), d.end(), [](int64_t x) { return x == kNever; })) break;
  }
  auto delays = metrics.deathDelays();
  r.detectFirstMs = ms(*std::min_element(delays.begin(), delays.end()));
  r.detectAllP99Ms = percentile(delays, 0.99);
  double detectMaxMs = percentile(delays, 1.0);
  sim->runUntil(sim->now() + 2 * kSecond);
  size_t seeds[] = {randomUp(*sim, victim), randomUp(*sim, victim), randomUp(*sim, victim)};
  sim->restart(victim, seeds, fleetNode());
  metrics.watchRejoin(sim->id(victim), sim->node(victim).membership().generation());
  int64_t restartAt = sim->now();
  for (int64_t t = restartAt; t < restartAt + 30 * kSecond; t += 100'000'000) {
    sim->runUntil(t + 100'000'000);
    if (metrics.rejoinTime() != kNever) break;
  }
  r.rejoinAllMs = ms(metrics.rejoinTime());
  uint64_t calmFalsePositives = metrics.falsePositives();

  // 3. Loss and stalls for a long while.
  size_t fpNodes = std::min(o.nodes, o.fpNodes);
  if (fpNodes != o.nodes) {
    sim = nullptr;
    metrics = Metrics();
    sim = kj::heap<Simulator>(o.seed + 1, o.config, &metrics);
    metrics.attach(*sim);
    sim->addConvergedFleet(fpNodes, fleetNode());
    sim->runUntil(5 * kSecond);
  }
  sim->network().loss = o.fpLoss;
  int64_t phaseStart = sim->now();
  int64_t phaseEnd = phaseStart + o.fpDurationNs;
  uint64_t bytesBefore = sim->bytesSent();
  size_t stallers = size_t(std::llround(o.stallFraction * double(sim->size())));
  {
    std::vector<size_t> order(sim->size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    for (size_t i = 0; i < stallers; ++i) {
      std::swap(order[i], order[i + sim->random().below(order.size() - i)]);
    }
    for (size_t k = 0; k < stallers; ++k) {
      scheduleStall(*sim, order[k], o, phaseEnd,
                    phaseStart + sim->random().between(0, o.stallGapMaxNs));
    }
  }
  std::vector<int64_t> lossyConv;
  while (sim->now() + o.lossyChangeEveryNs <= phaseEnd) {
    sim->runUntil(sim->now() + o.lossyChangeEveryNs - 10 * kSecond);
    lossyConv.push_back(capacityChange(*sim, metrics, randomUp(*sim), 10 * kSecond));
    sim->runUntil(std::min(phaseEnd, sim->now()));
  }
  sim->runUntil(phaseEnd);
  double seconds = double(sim->now() - phaseStart) / 1e9;
  r.bytesPerNodePerS = double(sim->bytesSent() - bytesBefore) / double(sim->size()) / seconds;
  r.lossyConvergenceP99Ms = percentile(lossyConv, 0.99);
  r.falsePositives = calmFalsePositives + metrics.falsePositives();

  // 4. Placement from every node at once, on a fresh calm fleet.
  size_t placementNodes = std::min(o.nodes, o.placementNodes);
  sim = nullptr;
  sim = kj::heap<Simulator>(o.seed + 2, o.config);
  sim->addConvergedFleet(placementNodes, fleetNode());
  sim->runUntil(5 * kSecond);
  PlacementOptions po;
  auto p = runPlacement(*sim, po);
  r.placementSuccess = p.success;
  r.overcommit = p.overcommittedNodes + p.ledgerViolations;

  r.json = kj::str(
      "{\"nodes\":", o.nodes, ",\"seed\":", o.seed, ",\"profile\":\"", o.profile, "\"",
      ",\"convergence_p99_ms\":", r.convergenceP99Ms,
      ",\"convergence_all_ms\":", r.convergenceAllMs,
      ",\"convergence_changes\":", o.capacityChanges, ",\"detect_first_ms\":", r.detectFirstMs,
      ",\"detect_all_p99_ms\":", r.detectAllP99Ms, ",\"detect_all_max_ms\":", detectMaxMs,
      ",\"rejoin_all_ms\":", r.rejoinAllMs, ",\"false_positives\":", r.falsePositives,
      ",\"false_positive_declarations\":", metrics.falseDeclarations(),
      ",\"fp_phase_nodes\":", fpNodes, ",\"fp_phase_s\":", o.fpDurationNs / kSecond,
      ",\"fp_loss\":", o.fpLoss, ",\"fp_stallers\":", stallers,
      ",\"fp_stall_ms\":", o.stallNs / 1'000'000, ",\"fp_stall_gap_ms\":[",
      o.stallGapMinNs / 1'000'000, ",", o.stallGapMaxNs / 1'000'000, "]",
      ",\"bytes_per_node_per_s\":", r.bytesPerNodePerS,
      ",\"lossy_convergence_p99_ms\":", r.lossyConvergenceP99Ms,
      ",\"lossy_convergence_samples\":", lossyConv.size(), ",\"placement_nodes\":", placementNodes,
      ",\"placement_target\":", po.targetUtilization, ",\"placement_success\":", p.success,
      ",\"overcommit\":", r.overcommit, ",\"placements\":", p.placements,
      ",\"placements_placed\":", p.placed, ",\"placement_utilization\":", p.utilization,
      ",\"placement_reservations\":", p.reservationsAsked, ",\"placement_refusals\":", p.refusals,
      ",\"placement_attempts_mean\":", p.attemptsMean,
      ",\"placement_attempts_max\":", p.attemptsMax, ",\"placement_p50_ms\":", p.latencyP50Ms,
      ",\"placement_p99_ms\":", p.latencyP99Ms, ",\"placement_warm_hits\":", p.warmHits,
      ",\"placement_commits_lost\":", p.commitsLost, ",\"placement_sim_s\":", p.simulatedS, "}");
  return r;
}

}  // namespace nodeagent::cluster::sim
