// Gossip tunables. memberlist() mirrors hashicorp/memberlist's LAN profile;
// fastLan() is what a fleet runs (see config.cc for why each value differs).
#pragma once

#include <stdint.h>

namespace nodeagent::cluster {

struct Config {
  // SWIM probing.
  int64_t probeIntervalNs = 1'000'000'000;
  int64_t probeTimeoutNs = 500'000'000;
  uint32_t indirectChecks = 3;

  // Suspicion: min = suspicionMult * max(1, log10(n)) * probeInterval,
  // max = suspicionMaxTimeoutMult * min; the timeout decays from max to min as
  // independent confirmations arrive, reaching min at `suspicionConfirmations`.
  double suspicionMult = 4;
  double suspicionMaxTimeoutMult = 6;
  uint32_t suspicionConfirmations = 2;  // memberlist: suspicionMult - 2

  // Lifeguard local health: probe interval and timeout scale by (score + 1).
  uint32_t awarenessMaxMultiplier = 8;

  // Gossip of piggybacked broadcasts.
  int64_t gossipIntervalNs = 200'000'000;
  uint32_t gossipNodes = 3;
  uint32_t retransmitMult = 4;  // limit = retransmitMult * ceil(log10(n + 1))

  // Anti-entropy: membership sync of a slice of members, and a capacity
  // digest sweep, each with one random peer per interval.
  int64_t pushPullIntervalNs = 30'000'000'000;
  int64_t digestIntervalNs = 2'000'000'000;

  // A member declared dead still gets gossip for a while, so a node that was
  // wrongly declared dead hears it and refutes (memberlist GossipToTheDeadTime).
  int64_t gossipToTheDeadNs = 30'000'000'000;
  // Every this often, one random member we hold dead (not left) is told so
  // directly: if it is in fact alive (a partition healed, a long stall), it
  // refutes and is back at once, instead of never hearing of its death once
  // the gossip about it has died down (serf's reconnect, without the TCP join).
  int64_t reconnectIntervalNs = 30'000'000'000;
  // Dead and left members are forgotten after this; until then their
  // generation/incarnation keeps stale gossip from resurrecting them.
  int64_t reapNs = 60'000'000'000;

  // Largest packet before sealing, and the sealing overhead the transport
  // adds (XChaCha20-Poly1305: 24-byte nonce, 16-byte tag, 1-byte key id).
  uint32_t packetBudgetBytes = 1400;
  uint32_t sealOverheadBytes = 41;

  static Config memberlist();
  static Config fastLan();
};

}  // namespace nodeagent::cluster
