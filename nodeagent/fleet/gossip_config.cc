#include "nodeagent/fleet/gossip_config.h"

#include <kj/debug.h>

namespace nodeagent::fleet {

cluster::Config gossipConfig(config::Config::Cluster::Reader cluster) {
  cluster::Config c;
  kj::StringPtr name = cluster.getProfile();
  if (name == "fast-lan") {
    c = cluster::Config::fastLan();
  } else if (name == "memberlist") {
    c = cluster::Config::memberlist();
  } else {
    KJ_FAIL_REQUIRE("cluster.profile must be fast-lan or memberlist", name);
  }
  auto t = cluster.getTuning();
  auto ms = [](uint32_t v, int64_t& field) {
    if (v != 0) field = int64_t(v) * 1'000'000;
  };
  auto set = [](auto v, auto& field) {
    if (v != 0) field = v;
  };
  ms(t.getProbeIntervalMillis(), c.probeIntervalNs);
  ms(t.getProbeTimeoutMillis(), c.probeTimeoutNs);
  set(t.getIndirectChecks(), c.indirectChecks);
  set(t.getSuspicionMult(), c.suspicionMult);
  set(t.getSuspicionMaxTimeoutMult(), c.suspicionMaxTimeoutMult);
  set(t.getSuspicionConfirmations(), c.suspicionConfirmations);
  set(t.getAwarenessMaxMultiplier(), c.awarenessMaxMultiplier);
  ms(t.getGossipIntervalMillis(), c.gossipIntervalNs);
  set(t.getGossipNodes(), c.gossipNodes);
  set(t.getRetransmitMult(), c.retransmitMult);
  ms(t.getPushPullIntervalMillis(), c.pushPullIntervalNs);
  ms(t.getDigestIntervalMillis(), c.digestIntervalNs);
  ms(t.getGossipToTheDeadMillis(), c.gossipToTheDeadNs);
  ms(t.getReconnectIntervalMillis(), c.reconnectIntervalNs);
  ms(t.getReapMillis(), c.reapNs);
  set(t.getPacketBudgetBytes(), c.packetBudgetBytes);
  KJ_REQUIRE(c.probeTimeoutNs < c.probeIntervalNs,
             "cluster.tuning: the probe timeout must be shorter than the probe interval");
  KJ_REQUIRE(c.packetBudgetBytes >= 512 && c.packetBudgetBytes <= 65000,
             "cluster.tuning.packetBudgetBytes must be 512-65000");
  KJ_REQUIRE(c.suspicionMult > 0 && c.suspicionMaxTimeoutMult >= 1,
             "cluster.tuning: suspicion multipliers out of range");
  return c;
}

}  // namespace nodeagent::fleet
