#include "cluster/placement.h"

#include <gtest/gtest.h>
#include <kj/debug.h>

#include <algorithm>
#include <memory>

#include <vector>

#include "cluster/sim/placement_sim.h"
#include "fleet.h"

namespace nodeagent::cluster {
namespace {

using testing::kMs;
using testing::kSec;

constexpr uint64_t kGiB = uint64_t(1) << 30;

TEST(Admission, NeverOvercommitsUnderInterleavedReserves) {
  Admission a(Resources{4000, 8 * kGiB, 8}, NodeState());
  sim::Prng rng(7);
  std::vector<ReservationId> held;
  for (int step = 0; step < 5000; ++step) {
    int64_t now = step * kMs;
    uint64_t op = rng.below(4);
    if (op < 2) {
      Resources r{uint32_t(250 * (1 + rng.below(8))), (1 + rng.below(4)) * kGiB / 2, 1};
      bool fits = r.fitsIn(a.free());
      KJ_IF_MAYBE (id, a.reserve(r, int64_t(rng.below(50)) * kMs, now)) {
        held.push_back(*id);
      } else {
        // Refused only when it did not fit (an expiry may have freed room).
        EXPECT_FALSE(fits && r.fitsIn(a.free()));
      }
    } else if (op == 2 && !held.empty()) {
      a.commit(held[rng.below(held.size())], now);
    } else if (!held.empty()) {
      size_t k = rng.below(held.size());
      a.release(held[k], now);
      held.erase(held.begin() + ptrdiff_t(k));
    }
    ASSERT_TRUE(a.used().fitsIn(a.capacity())) << step;
  }
}

TEST(Admission, LeaseExpiryGivesCapacityBack) {
  std::vector<uint32_t> published;
  Admission a(Resources{1000, 4 * kGiB, 4}, NodeState(),
              Admission::Publish([&](NodeState s) { published.push_back(s.freeCpuMillis); }));
  auto r1 = a.reserve(Resources{1000, kGiB, 1}, 100 * kMs, 0);
  ASSERT_TRUE(r1 != nullptr);
  EXPECT_EQ(published.back(), 0u);
  // Full until the lease lapses...
  EXPECT_TRUE(a.reserve(Resources{500, kGiB, 1}, 100 * kMs, 50 * kMs) == nullptr);
  // ...then the capacity is back and a commit of the lapsed one fails.
  auto r2 = a.reserve(Resources{500, kGiB, 1}, 100 * kMs, 100 * kMs);
  ASSERT_TRUE(r2 != nullptr);
  EXPECT_EQ(a.used().cpuMillis, 500u);
  EXPECT_FALSE(a.commit(KJ_ASSERT_NONNULL(r1), 100 * kMs));
  // A committed reservation never lapses; release gives it back.
  EXPECT_TRUE(a.commit(KJ_ASSERT_NONNULL(r2), 150 * kMs));
  EXPECT_EQ(a.expire(1000 * kSec), 0u);
  EXPECT_EQ(a.free().cpuMillis, 500u);
  EXPECT_TRUE(a.release(KJ_ASSERT_NONNULL(r2), 1000 * kSec));
  EXPECT_EQ(a.free().cpuMillis, 1000u);
  EXPECT_EQ(published.back(), 1000u);
}

// A channel that answers at once from a table of ledgers, recording asks.
struct TableChannel final : public ReservationChannel {
  std::vector<std::pair<NodeId, Admission*>> ledgers;
  std::vector<NodeId> asked;
  int64_t now = 0;
  void reserve(NodeId target, const Resources& request, int64_t leaseNs,
               kj::Function<void(Reply)> done) override {
    asked.push_back(target);
    for (auto& [id, a] : ledgers) {
      if (id != target) continue;
      Reply r;
      KJ_IF_MAYBE (rid, a->reserve(request, leaseNs, now)) {
        r.granted = true;
        r.id = *rid;
      }
      r.free = a->free();
      done(r);
      return;
    }
    done(Reply());
  }
  void commit(NodeId, ReservationId) override {}
};

TEST(Placer, RetriesAfterRefusalWithALargerSample) {
  // Node 0 places; every other node's gossiped state claims room, but only
  // the last one really has it (the others' ledgers are full).
  testing::Fleet fleet(8);
  fleet.run(2 * kSec);
  TableChannel channel;
  std::vector<std::unique_ptr<Admission>> ledgers;
  for (size_t i = 0; i < fleet.sim.size(); ++i) {
    Resources cap{4000, 8 * kGiB, 8};
    ledgers.push_back(std::make_unique<Admission>(cap, NodeState()));
    if (i + 1 < fleet.sim.size()) {
      auto full = ledgers.back()->reserve(cap, INT64_MAX, 0);
      ASSERT_TRUE(full != nullptr);
    }
    channel.ledgers.push_back({fleet.sim.id(i), ledgers.back().get()});
  }
  Placer::Options o;
  o.firstSample = 1;
  o.maxAttempts = 10;
  std::vector<uint32_t> samples;
  Placer placer(
      fleet.sim.node(0), channel, [&]() { return fleet.sim.random().next(); },
      [&]() { return fleet.sim.now(); }, o);
  PlacementSpec spec{Resources{1000, kGiB, 1}, "", ""};
  EXPECT_EQ(placer.candidates(spec).size(), fleet.sim.size());
  Placer::Result result;
  bool called = false;
  placer.place(spec, [&](Placer::Result r) {
    result = r;
    called = true;
  });
  ASSERT_TRUE(called);
  EXPECT_TRUE(result.placed);
  EXPECT_EQ(result.node, fleet.sim.id(fleet.sim.size() - 1));
  EXPECT_GE(result.attempts, 1u);
  EXPECT_EQ(result.attempts, channel.asked.size());
  // The sample doubled on every refusal.
  EXPECT_EQ(result.sample, 1u << (result.attempts - 1));
  // Each node is asked once: refusals are folded into the view.
  std::vector<NodeId> asked = channel.asked;
  std::sort(asked.begin(), asked.end());
  EXPECT_EQ(std::unique(asked.begin(), asked.end()), asked.end());
  // The refusers now look full to this placer.
  EXPECT_EQ(placer.candidates(spec).size(), fleet.sim.size() - (result.attempts - 1));
}

TEST(Placer, SampleGrowsOnEachRefusal) {
  // With everything but one node full, a first sample of 1 that misses is
  // followed by 2, 4, ...; a refuser is never asked again, so four attempts
  // always find the one node with room in a 4-node fleet.
  testing::Fleet fleet(4);
  fleet.run(kSec);
  TableChannel channel;
  std::vector<std::unique_ptr<Admission>> ledgers;
  for (size_t i = 0; i < 4; ++i) {
    Resources cap{4000, 8 * kGiB, 8};
    ledgers.push_back(std::make_unique<Admission>(cap, NodeState()));
    if (i != 2) {
      ASSERT_TRUE(ledgers.back()->reserve(cap, INT64_MAX, 0) != nullptr);
    }
    channel.ledgers.push_back({fleet.sim.id(i), ledgers.back().get()});
  }
  Placer::Options o;
  o.firstSample = 1;
  o.maxAttempts = 4;
  uint32_t maxAttempts = 0;
  for (int round = 0; round < 40; ++round) {
    Placer placer(
        fleet.sim.node(0), channel, [&]() { return fleet.sim.random().next(); },
        [&]() { return fleet.sim.now(); }, o);
    Placer::Result result;
    placer.place(PlacementSpec{Resources{100, kGiB / 8, 1}, "", ""},
                 [&](Placer::Result r) { result = r; });
    ASSERT_TRUE(result.placed) << round;
    EXPECT_EQ(result.node, fleet.sim.id(2));
    EXPECT_EQ(result.sample, 1u << (result.attempts - 1));
    maxAttempts = std::max(maxAttempts, result.attempts);
    ASSERT_TRUE(ledgers[2]->release(result.id, 0));
  }
  EXPECT_GT(maxAttempts, 1u);  // some rounds did retry
}

TEST(Placer, AffinityPrefersAWarmNode) {
  testing::Fleet fleet(10);
  // Node 3 is warm for the template; everyone has about the same room.
  for (size_t i = 0; i < 10; ++i) {
    NodeState s = testing::testState();
    s.freeCpuMillis = 4000 - uint32_t(i == 3 ? 100 : 0);
    if (i == 3) s.warmTemplates.add(kj::str("python-3.12"));
    fleet.sim.node(i).setLocalState(kj::mv(s));
  }
  fleet.run(3 * kSec);
  TableChannel channel;
  std::vector<std::unique_ptr<Admission>> ledgers;
  for (size_t i = 0; i < 10; ++i) {
    ledgers.push_back(std::make_unique<Admission>(Resources{4000, 8 * kGiB, 8}, NodeState()));
    channel.ledgers.push_back({fleet.sim.id(i), ledgers.back().get()});
  }
  auto releaseAll = [&](Placer::Result r) {
    ASSERT_TRUE(r.placed);
    for (size_t i = 0; i < 10; ++i) {
      if (fleet.sim.id(i) == r.node) {
        ASSERT_TRUE(ledgers[i]->release(r.id, 0));
      }
    }
  };
  Placer::Options o;
  o.firstSample = 10;  // sees everyone: the best score must win
  Placer placer(
      fleet.sim.node(0), channel, [&]() { return fleet.sim.random().next(); },
      [&]() { return fleet.sim.now(); }, o);
  PlacementSpec spec{Resources{500, kGiB, 1}, "python-3.12", ""};
  auto cands = placer.candidates(spec);
  ASSERT_EQ(cands.size(), 10u);
  for (int k = 0; k < 10; ++k) {
    channel.asked.clear();
    Placer fresh(  // no folded replies from the previous round
        fleet.sim.node(0), channel, [&]() { return fleet.sim.random().next(); },
        [&]() { return fleet.sim.now(); }, o);
    fresh.place(spec, releaseAll);
    ASSERT_FALSE(channel.asked.empty());
    EXPECT_EQ(channel.asked[0], fleet.sim.id(3));
  }
  // Over small samples the warm node is still picked well above 1/10.
  o.firstSample = 2;
  o.maxAttempts = 1;
  channel.asked.clear();
  for (int k = 0; k < 500; ++k) {
    Placer small(
        fleet.sim.node(0), channel, [&]() { return fleet.sim.random().next(); },
        [&]() { return fleet.sim.now(); }, o);
    small.place(spec, releaseAll);
  }
  size_t warm = size_t(std::count(channel.asked.begin(), channel.asked.end(), fleet.sim.id(3)));
  EXPECT_GT(warm, 500u / 10 * 2);
}

TEST(PlacementSim, FleetFilledToNinetyPercentConcurrently) {
  for (uint64_t seed : {1, 2}) {
    sim::Simulator simulator(seed, Config::fastLan());
    NodeState s;
    s.freeCpuMillis = 32'000;
    s.freeMemoryBytes = 128 * kGiB;
    s.freeDiskBytes = uint64_t(1) << 40;
    s.freeSlots = 64;
    simulator.addConvergedFleet(80, s);
    simulator.runUntil(5 * kSec);
    sim::PlacementOptions o;
    auto r = sim::runPlacement(simulator, o);
    SCOPED_TRACE(kj::str("seed ", seed, " placements ", r.placements, " placed ", r.placed,
                         " refusals ", r.refusals, " utilization ", r.utilization)
                     .cStr());
    EXPECT_GE(r.success, 0.99);
    EXPECT_EQ(r.overcommittedNodes, 0u);
    EXPECT_EQ(r.ledgerViolations, 0u);
    EXPECT_EQ(r.commitsLost, 0u);
    EXPECT_GE(r.utilization, 0.90);
    EXPECT_GT(r.placements, 80u * 20);
    EXPECT_GT(r.latencyP50Ms, 0);
  }
}

TEST(PlacementSim, NoOvercommitWhenFillingToTheBrim) {
  // No pause between placements and a 99.5% target: views are stale all the
  // time and refusals are common, yet no node is ever overcommitted.
  sim::Simulator simulator(3, Config::fastLan());
  NodeState s;
  s.freeCpuMillis = 8'000;
  s.freeMemoryBytes = 16 * kGiB;
  s.freeDiskBytes = uint64_t(1) << 40;
  s.freeSlots = 16;
  simulator.addConvergedFleet(30, s);
  simulator.runUntil(5 * kSec);
  sim::PlacementOptions o;
  o.capacity = Resources{8'000, 16 * kGiB, 16};
  o.targetUtilization = 0.995;
  o.thinkMaxNs = 0;
  o.limitNs = 20 * kSec;
  auto r = sim::runPlacement(simulator, o);
  SCOPED_TRACE(kj::str("placements ", r.placements, " placed ", r.placed, " refusals ", r.refusals,
                       " utilization ", r.utilization)
                   .cStr());
  EXPECT_GT(r.refusals, 0u);
  EXPECT_EQ(r.overcommittedNodes, 0u);
  EXPECT_EQ(r.ledgerViolations, 0u);
  EXPECT_GT(r.utilization, 0.95);
}

}  // namespace
}  // namespace nodeagent::cluster
