#include "cluster/dissemination.h"

#include <gtest/gtest.h>
#include <kj/debug.h>

#include "fleet.h"

namespace nodeagent::cluster {
namespace {

using testing::Fleet;
using testing::kMs;
using testing::kSec;

uint64_t versionAt(Fleet& f, size_t observer, size_t owner) {
  KJ_IF_MAYBE (r, f.sim.node(observer).dissemination().find(f.sim.id(owner))) {
    return r->version;
  }
  return 0;
}

TEST(ClusterDissemination, ACapacityChangeReachesEveryone) {
  Fleet f(60);
  f.run(1 * kSec);
  auto s = testing::testState(5);
  s.warmTemplates.add(kj::str("node-22"));
  f.sim.node(3).setLocalState(kj::mv(s));
  EXPECT_EQ(f.sim.node(3).dissemination().localVersion(), 2u);
  f.run(1 * kSec);
  for (size_t i = 0; i < 60; ++i) {
    ASSERT_EQ(versionAt(f, i, 3), 2u) << i;
    auto& r = KJ_ASSERT_NONNULL(f.sim.node(i).dissemination().find(f.sim.id(3)));
    EXPECT_EQ(r.freeSlots, 5u);
    EXPECT_EQ(r.state().warmTemplates[0], "node-22");
  }
}

TEST(ClusterDissemination, NewerReplacesOlderNeverTheReverse) {
  Fleet f(4);
  NodeId owner = f.sim.id(2);
  uint64_t gen = f.sim.node(2).membership().generation();
  auto send = [&](uint64_t g, uint64_t v, uint32_t slots) {
    Packet p;
    p.sender = f.sim.id(1);
    p.senderGeneration = f.sim.node(1).membership().generation();
    p.deltas.add(Delta{owner, g, v, testing::testState(slots)});
    f.inject(0, kj::mv(p));
  };
  auto& d = f.sim.node(0).dissemination();
  send(gen, 5, 50);
  EXPECT_EQ(KJ_ASSERT_NONNULL(d.find(owner)).version, 5u);
  send(gen, 3, 30);  // late and older: ignored, no step back
  EXPECT_EQ(KJ_ASSERT_NONNULL(d.find(owner)).freeSlots, 50u);
  send(gen, 5, 51);  // same version: nothing new
  EXPECT_EQ(KJ_ASSERT_NONNULL(d.find(owner)).freeSlots, 50u);
  send(gen + 1, 1, 10);  // a new life starts over at version 1 and wins
  EXPECT_EQ(KJ_ASSERT_NONNULL(d.find(owner)).generation, gen + 1);
  EXPECT_EQ(KJ_ASSERT_NONNULL(d.find(owner)).freeSlots, 10u);
  // Records of strangers are not kept.
  Packet p;
  p.sender = f.sim.id(1);
  p.senderGeneration = f.sim.node(1).membership().generation();
  p.deltas.add(Delta{0x4242, 1, 1, testing::testState()});
  f.inject(0, kj::mv(p));
  EXPECT_TRUE(d.find(0x4242) == nullptr);
}

TEST(ClusterDissemination, DigestAnswerFitsTheBudgetMostBehindFirst) {
  Fleet f(300);
  auto& d = f.sim.node(0).dissemination();
  // Node 0 has newer records for three owners: 9 versions ahead, 2, and 5.
  size_t ahead[] = {10, 11, 12};
  uint64_t versions[] = {10, 3, 6};
  for (int k = 0; k < 3; ++k) {
    auto& n = f.sim.node(ahead[k]);
    d.bootstrap(Delta{n.id(), n.membership().generation(), versions[k], testing::testState()});
  }
  Digest digest;  // the peer's view of everything: version 1 of every owner
  digest.rangeStart = 0;
  digest.rangeEnd = UINT64_MAX;
  for (auto& r : d.records()) digest.entries.add(DigestEntry{r.owner, r.generation, 1});
  Packet reply = d.answer(digest);
  ASSERT_EQ(reply.deltas.size(), 3u);
  EXPECT_EQ(reply.deltas[0].owner, f.sim.id(10));
  EXPECT_EQ(reply.deltas[1].owner, f.sim.id(12));
  EXPECT_EQ(reply.deltas[2].owner, f.sim.id(11));

  // A peer that knows nothing: as many records as one packet holds, no more.
  Digest empty;
  empty.rangeStart = 0;
  empty.rangeEnd = UINT64_MAX;
  Packet all = d.answer(empty);
  EXPECT_GT(all.deltas.size(), 10u);
  EXPECT_LT(all.deltas.size(), 300u);
  all.sender = f.sim.id(0);
  all.senderGeneration = f.sim.node(0).membership().generation();
  auto config = Config::fastLan();
  EXPECT_LE(encodePacket(all).size(), config.packetBudgetBytes - config.sealOverheadBytes);
}

TEST(ClusterDissemination, GossipPacketsStayWithinTheBudget) {
  Fleet f(200);
  f.run(1 * kSec);
  // Many owners change at once: far more than one packet can carry.
  for (size_t i = 0; i < 200; i += 2) {
    auto s = testing::testState(uint32_t(i));
    s.volumes.add(kj::str("volume-with-a-longish-name-", i));
    f.sim.node(i).setLocalState(kj::mv(s));
  }
  uint64_t bytes = f.sim.bytesSent(), packets = 0;
  for (size_t i = 0; i < 200; ++i) packets += f.sim.node(i).packetsSent();
  f.run(3 * kSec);
  uint64_t sentBytes = f.sim.bytesSent() - bytes;
  uint64_t sentPackets = 0;
  for (size_t i = 0; i < 200; ++i) sentPackets += f.sim.node(i).packetsSent();
  sentPackets -= packets;
  EXPECT_GT(sentPackets, 0u);
  EXPECT_LE(sentBytes / sentPackets, Config::fastLan().packetBudgetBytes);
  for (size_t i = 0; i < 200; ++i)
    for (size_t o = 0; o < 200; o += 2) ASSERT_EQ(versionAt(f, i, o), 2u) << i << " " << o;
}

TEST(ClusterDissemination, AntiEntropyRepairsWhatGossipMissed) {
  Config c = Config::fastLan();
  c.retransmitMult = 0;  // no piggybacked gossip at all: only digests carry news
  Fleet f(20, c);
  f.run(1 * kSec);
  f.sim.node(4).setLocalState(testing::testState(2));
  f.run(40 * kSec);
  for (size_t i = 0; i < 20; ++i) EXPECT_EQ(versionAt(f, i, 4), 2u) << i;
}

}  // namespace
}  // namespace nodeagent::cluster
