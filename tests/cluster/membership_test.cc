#include "cluster/membership.h"

#include <gtest/gtest.h>

#include "fleet.h"

namespace nodeagent::cluster {
namespace {

using testing::Fleet;
using testing::kMs;
using testing::kSec;

TEST(ClusterMembership, LocalHealthRisesWhenOurOwnPacketsVanishAndSlowsProbing) {
  Fleet f(10);
  f.run(2 * kSec);
  f.sim.setPartition(0, 1);  // node 0 hears nobody and nobody hears it
  uint64_t before0 = f.sim.node(0).membership().probesSent();
  uint64_t before1 = f.sim.node(1).membership().probesSent();
  f.run(10 * kSec);
  // No acks and no nacks from its helpers: node 0 blames itself.
  auto& isolated = f.sim.node(0).membership();
  EXPECT_EQ(isolated.healthScore(), Config::fastLan().awarenessMaxMultiplier - 1);
  uint64_t probes0 = isolated.probesSent() - before0;
  uint64_t probes1 = f.sim.node(1).membership().probesSent() - before1;
  EXPECT_GE(probes1, 18u);          // every 500 ms
  EXPECT_LE(probes0, probes1 / 3);  // scaled by (score + 1)
  // The others failed to reach node 0 too, but their helpers nacked: their
  // own health is fine.
  for (size_t i = 1; i < 10; ++i) EXPECT_EQ(f.sim.node(i).membership().healthScore(), 0u) << i;
}

TEST(ClusterMembership, NacksShowTheTargetIsDownNotUs) {
  Fleet f(12);
  f.run(2 * kSec);
  f.sim.crash(11);
  f.run(8 * kSec);
  EXPECT_EQ(f.seeing(11, MemberState::kDead), 11u);
  for (size_t i = 0; i < 11; ++i) EXPECT_EQ(f.sim.node(i).membership().healthScore(), 0u) << i;
}

TEST(ClusterMembership, SuspicionShrinksWithConfirmations) {
  // A crashed node is probed by many; each failed probe is an independent
  // confirmation, so death comes near the floor, not the ceiling.
  Fleet f(50);
  f.run(2 * kSec);
  auto [min, max] = f.sim.node(0).membership().suspicionBounds();
  f.sim.crash(7);
  int64_t crashed = f.sim.now();
  while (f.seeing(7, MemberState::kDead) < f.others(7) && f.sim.now() < crashed + 30 * kSec) {
    f.run(50 * kMs);
  }
  int64_t took = f.sim.now() - crashed;
  EXPECT_EQ(f.seeing(7, MemberState::kDead), f.others(7));
  EXPECT_LT(took, max);  // without confirmations nobody would have given up before max
  EXPECT_GT(took, min);
}

TEST(ClusterMembership, SuspectRefutesWithAHigherIncarnation) {
  Fleet f(6);
  f.run(1 * kSec);
  auto& m0 = f.sim.node(0).membership();
  Packet p;
  p.sender = f.sim.id(1);
  p.senderGeneration = f.sim.node(1).membership().generation();
  p.suspects.add(Suspect{f.sim.id(0), m0.generation(), 0, f.sim.id(1)});
  f.inject(0, kj::mv(p));
  EXPECT_EQ(m0.incarnation(), 1u);
  EXPECT_EQ(m0.healthScore(), 1u);  // having to refute counts against us
  f.run(1 * kSec);
  for (size_t i = 1; i < 6; ++i) {
    EXPECT_EQ(f.view(i, 0)->incarnation, 1u);
    EXPECT_EQ(f.view(i, 0)->state, MemberState::kAlive);
  }
  // A suspicion about an older incarnation changes nothing.
  Packet q;
  q.sender = f.sim.id(2);
  q.senderGeneration = f.sim.node(2).membership().generation();
  q.suspects.add(Suspect{f.sim.id(0), m0.generation(), 0, f.sim.id(2)});
  f.inject(0, kj::mv(q));
  EXPECT_EQ(m0.incarnation(), 1u);
}

TEST(ClusterMembership, BuddyRefutationWithinAProbePeriodAfterAStall) {
  Fleet f(20);
  f.run(2 * kSec);
  f.sim.stall(5, 1500 * kMs);  // long enough to be suspected
  f.run(1400 * kMs);
  EXPECT_GT(f.seeing(5, MemberState::kSuspect), 0u);
  EXPECT_EQ(f.sim.node(5).membership().incarnation(), 0u);
  // Back at 1.5 s: the suspicion waiting in its inbox (sent straight to it,
  // and on pings) makes it refute at once.
  f.run(100 * kMs + Config::fastLan().probeIntervalNs);
  EXPECT_GE(f.sim.node(5).membership().incarnation(), 1u);
  f.run(2 * kSec);
  EXPECT_EQ(f.seeing(5, MemberState::kAlive), 19u);
  EXPECT_EQ(f.seeing(5, MemberState::kDead), 0u);
}

TEST(ClusterMembership, RestartedNodeNewGenerationWinsAndOldStateNever) {
  Fleet f(10);
  f.run(2 * kSec);
  uint64_t oldGen = f.sim.node(3).membership().generation();
  f.sim.crash(3);
  f.run(10 * kSec);
  ASSERT_EQ(f.seeing(3, MemberState::kDead), 9u);
  size_t seeds[] = {0, 1};
  auto fresh = testing::testState(1);
  f.sim.restart(3, seeds, fresh);
  uint64_t newGen = f.sim.node(3).membership().generation();
  ASSERT_GT(newGen, oldGen);
  f.run(2 * kSec);
  EXPECT_EQ(f.seeing(3, MemberState::kAlive), 9u);
  for (size_t i = 0; i < 10; ++i) {
    if (i == 3) continue;
    EXPECT_EQ(f.view(i, 3)->generation, newGen);
    KJ_IF_MAYBE (r, f.sim.node(i).dissemination().find(f.sim.id(3))) {
      EXPECT_EQ(r->generation, newGen);
      EXPECT_EQ(r->freeSlots, 1u);
    } else {
      ADD_FAILURE() << "no capacity for the restarted node at " << i;
    }
  }
  // Gossip from the old life, however high its incarnation, loses.
  Packet p;
  p.sender = f.sim.id(1);
  p.senderGeneration = f.sim.node(1).membership().generation();
  p.alives.add(Alive{f.sim.id(3), oldGen, 1000, kj::str()});
  p.deads.add(Dead{f.sim.id(3), oldGen, 1000, f.sim.id(1)});
  p.deltas.add(Delta{f.sim.id(3), oldGen, 1000, testing::testState(99)});
  f.inject(0, kj::mv(p));
  EXPECT_EQ(f.view(0, 3)->generation, newGen);
  EXPECT_EQ(f.view(0, 3)->state, MemberState::kAlive);
  KJ_IF_MAYBE (r, f.sim.node(0).dissemination().find(f.sim.id(3))) {
    EXPECT_EQ(r->freeSlots, 1u);
  }
  // And a packet from the old life itself is dropped.
  Packet stale;
  stale.sender = f.sim.id(3);
  stale.senderGeneration = oldGen;
  stale.suspects.add(Suspect{f.sim.id(1), f.sim.node(1).membership().generation(), 0, f.sim.id(3)});
  f.inject(0, kj::mv(stale));
  EXPECT_EQ(f.view(0, 1)->state, MemberState::kAlive);
}

TEST(ClusterMembership, GracefulLeaveIsNotADeath) {
  Fleet f(10);
  f.run(2 * kSec);
  f.sim.node(4).leave();
  f.run(1 * kSec);
  f.sim.crash(4);  // the process exits after announcing
  f.run(10 * kSec);
  EXPECT_EQ(f.seeing(4, MemberState::kLeft), 9u);
  EXPECT_EQ(f.seeing(4, MemberState::kDead), 0u);
}

TEST(ClusterMembership, ReapsDeadMembersAfterAWhile) {
  Config c = Config::fastLan();
  c.reapNs = 5 * kSec;
  Fleet f(8, c);
  f.run(2 * kSec);
  NodeId gone = f.sim.id(2);
  f.sim.crash(2);
  f.run(6 * kSec);
  EXPECT_EQ(f.seeing(2, MemberState::kDead), 7u);
  f.run(7 * kSec);
  for (size_t i = 0; i < 8; ++i) {
    if (i == 2) continue;
    EXPECT_EQ(f.sim.node(i).membership().members().find(gone), nullptr);
    EXPECT_TRUE(f.sim.node(i).dissemination().find(gone) == nullptr);
    EXPECT_EQ(f.sim.node(i).membership().members().size(), 7u);
  }
}

TEST(ClusterMembership, JoinsThroughSeedAddresses) {
  Fleet f(40);
  f.run(1 * kSec);
  size_t seeds[] = {0, 1};
  size_t joiner = f.sim.addJoiningNode(seeds, testing::testState(3));
  f.run(3 * kSec);
  auto& view = f.sim.node(joiner).membership().members();
  EXPECT_EQ(view.size(), 41u);
  EXPECT_EQ(view.liveCount(), 41u);
  EXPECT_EQ(f.sim.node(joiner).dissemination().records().size(), 41u);
  EXPECT_EQ(f.seeing(joiner, MemberState::kAlive), 40u);
  for (size_t i = 0; i < 40; ++i) {
    KJ_IF_MAYBE (r, f.sim.node(i).dissemination().find(f.sim.id(joiner))) {
      EXPECT_EQ(r->freeSlots, 3u);
    } else {
      ADD_FAILURE() << "node " << i << " lacks the joiner's capacity";
    }
  }
}

}  // namespace
}  // namespace nodeagent::cluster
