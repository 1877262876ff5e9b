// The gossip messages as plain values: what membership and dissemination
// produce and consume. codec.h turns a Packet into bytes (schema/cluster.capnp)
// and back, so the protocol code never handles Cap'n Proto builders.
#pragma once

#include <stdint.h>

#include <kj/string.h>
#include <kj/vector.h>

namespace nodeagent::cluster {

using NodeId = uint64_t;  // stable across restarts; 0 is never a node

struct Ping {
  uint32_t seqNo;
  NodeId target;
};
struct PingReq {
  uint32_t seqNo;
  NodeId target;
};
struct Ack {
  uint32_t seqNo;
};
struct Nack {
  uint32_t seqNo;
};

struct Alive {
  NodeId node;
  uint64_t generation;
  uint32_t incarnation;
  kj::String address;
};
struct Suspect {
  NodeId node;
  uint64_t generation;
  uint32_t incarnation;
  NodeId from;
};
struct Dead {
  NodeId node;
  uint64_t generation;
  uint32_t incarnation;
  NodeId from;
};
struct Leave {
  NodeId node;
  uint64_t generation;
  uint32_t incarnation;
};

struct DigestEntry {
  NodeId owner;
  uint64_t generation;
  uint64_t version;
};
struct Digest {
  NodeId rangeStart = 0;
  NodeId rangeEnd = 0;
  bool request = false;
  kj::Vector<DigestEntry> entries;
};

// What a node advertises about itself (dissemination stores it compactly).
struct NodeState {
  uint32_t freeCpuMillis = 0;
  uint64_t freeMemoryBytes = 0;
  uint64_t freeDiskBytes = 0;
  uint32_t freeSlots = 0;
  kj::Vector<kj::String> warmTemplates;
  kj::Vector<kj::String> volumes;
  bool healthy = true;
  bool draining = false;

  NodeState clone() const;
  bool operator==(const NodeState& other) const;
};

struct Delta {
  NodeId owner;
  uint64_t generation;
  uint64_t version;
  NodeState state;
};

struct Packet {
  NodeId sender = 0;
  uint64_t senderGeneration = 0;
  kj::Vector<Ping> pings;
  kj::Vector<PingReq> pingReqs;
  kj::Vector<Ack> acks;
  kj::Vector<Nack> nacks;
  kj::Vector<Alive> alives;
  kj::Vector<Suspect> suspects;
  kj::Vector<Dead> deads;
  kj::Vector<Leave> leaves;
  kj::Vector<Digest> digests;
  kj::Vector<Delta> deltas;
  bool sync = false;      // a state transfer: merge, don't re-gossip
  bool wantSync = false;  // reply with the whole member and capacity view

  bool empty() const;
};

}  // namespace nodeagent::cluster
