#include "cluster/config.h"

namespace nodeagent::cluster {

Config Config::memberlist() {
  return Config{};  // the defaults are memberlist's DefaultLANConfig
}

Config Config::fastLan() {
  Config c;
  // Probing twice as often halves the time until someone notices a crash.
  // Cost: one ping and one ack per node per 500 ms (~0.3 KB/s).
  c.probeIntervalNs = 500'000'000;
  // A LAN round trip is well under 5 ms; 200 ms still leaves room for a
  // busy peer while giving the indirect probes 300 ms of the period.
  c.probeTimeoutNs = 200'000'000;
  // memberlist waits at least 12 s (4 * log10(1000) * 1 s) before it
  // declares a node dead. Lifeguard's confirmations let a much smaller floor
  // be safe: a suspicion only reaches the floor once three other members
  // failed to reach the node independently, and the suspect refutes as soon
  // as it hears (the suspecter tells it directly, pings carry the suspicion).
  // The floor must still outlast a stalled node (1 s) plus the spread of its
  // refutation. Cost: a node unreachable for longer than ~2-4 s is declared
  // dead and must rejoin with a higher incarnation.
  c.suspicionMult = 1.5;
  c.suspicionMaxTimeoutMult = 3;
  c.suspicionConfirmations = 3;
  // Gossip twice as often to one more peer: a change reaches 1,000 nodes in
  // about log5(1000) + tail ~ 7 rounds of 100 ms. Packets are only sent
  // when there is something to gossip, so an idle fleet pays nothing.
  c.gossipIntervalNs = 100'000'000;
  c.gossipNodes = 4;
  c.retransmitMult = 3;
  // Anti-entropy repairs what gossip missed; with fast gossip it rarely has
  // work, so a slice every few seconds is enough.
  c.pushPullIntervalNs = 10'000'000'000;
  c.digestIntervalNs = 1'000'000'000;
  // A healed partition comes back within a few seconds (one packet per node
  // per interval, and only while some member is held dead).
  c.reconnectIntervalNs = 2'000'000'000;
  return c;
}

}  // namespace nodeagent::cluster
