#include "cluster/codec.h"

#include <gtest/gtest.h>

namespace nodeagent::cluster {
namespace {

TEST(ClusterCodec, RoundTripsEveryMessage) {
  Packet p;
  p.sender = 0x1234567890abcdefull;
  p.senderGeneration = 1700000000123456789ull;
  p.pings.add(Ping{7, 42});
  p.pingReqs.add(PingReq{8, 43});
  p.acks.add(Ack{9});
  p.nacks.add(Nack{10});
  p.alives.add(Alive{44, 3, 2, kj::str("10.0.0.1:7946")});
  p.suspects.add(Suspect{45, 3, 1, 46});
  p.deads.add(Dead{47, 3, 5, 48});
  p.leaves.add(Leave{49, 3, 0});
  Digest d;
  d.rangeStart = 5;
  d.rangeEnd = 500;
  d.request = true;
  d.entries.add(DigestEntry{50, 3, 77});
  p.digests.add(kj::mv(d));
  NodeState s;
  s.freeCpuMillis = 1500;
  s.freeMemoryBytes = 1ull << 33;
  s.freeDiskBytes = 1ull << 40;
  s.freeSlots = 12;
  s.warmTemplates.add(kj::str("python-3.12"));
  s.volumes.add(kj::str("vol-1"));
  s.draining = true;
  p.deltas.add(Delta{51, 3, 9, kj::mv(s)});
  p.sync = true;

  auto bytes = encodePacket(p);
  KJ_IF_MAYBE (q, decodePacket(bytes)) {
    EXPECT_EQ(q->sender, p.sender);
    EXPECT_EQ(q->senderGeneration, p.senderGeneration);
    EXPECT_TRUE(q->sync);
    EXPECT_FALSE(q->wantSync);
    ASSERT_EQ(q->pings.size(), 1u);
    EXPECT_EQ(q->pings[0].target, 42u);
    EXPECT_EQ(q->pingReqs[0].seqNo, 8u);
    EXPECT_EQ(q->acks[0].seqNo, 9u);
    EXPECT_EQ(q->nacks[0].seqNo, 10u);
    EXPECT_EQ(q->alives[0].address, "10.0.0.1:7946");
    EXPECT_EQ(q->suspects[0].from, 46u);
    EXPECT_EQ(q->deads[0].incarnation, 5u);
    EXPECT_EQ(q->leaves[0].node, 49u);
    EXPECT_EQ(q->digests[0].entries[0].version, 77u);
    EXPECT_TRUE(q->digests[0].request);
    EXPECT_EQ(q->deltas[0].version, 9u);
    EXPECT_TRUE(q->deltas[0].state == p.deltas[0].state);
  } else {
    FAIL() << "did not decode";
  }
}

TEST(ClusterCodec, DropsGarbage) {
  kj::byte junk[] = {0xff, 0x13, 0x00, 0x77, 0x01, 0x02, 0x03};
  EXPECT_TRUE(decodePacket(junk) == nullptr);
  EXPECT_TRUE(decodePacket(kj::ArrayPtr<const kj::byte>()) == nullptr);
}

TEST(ClusterCodec, EstimatesAreUpperBounds) {
  // A packet filled by estimate must not come out larger once encoded.
  Packet p;
  p.sender = 0xfedcba9876543210ull;
  p.senderGeneration = 0x17a0000000000001ull;
  for (uint64_t i = 0; i < 20; ++i) {
    p.alives.add(Alive{0xa5a5a5a5a5a5a5a5ull ^ i, 0x17a0000000000001ull, uint32_t(i),
                       kj::str("10.1.2.3:7946")});
    p.suspects.add(Suspect{0x5a5a5a5a5a5a5a5aull ^ i, 0x17a0000000000001ull, uint32_t(i),
                           0x1111111111111111ull});
    NodeState s;
    s.freeCpuMillis = 31999;
    s.freeMemoryBytes = 0x1f00ff00ff;
    s.freeDiskBytes = 0xff00ff00ff00;
    s.freeSlots = 63;
    p.deltas.add(Delta{0x3c3c3c3c3c3c3c3cull ^ i, 0x17a0000000000001ull, 1000 + i, kj::mv(s)});
  }
  EXPECT_LE(encodePacket(p).size(), estimateBytes(p));
}

}  // namespace
}  // namespace nodeagent::cluster
