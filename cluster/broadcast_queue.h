// Piggybacked gossip: membership updates and capacity records waiting to be
// retransmitted, each at most `limit` times, the least-sent and newest
// first. A newer update about the same node replaces the queued one.
#pragma once

#include <stdint.h>

#include <kj/function.h>
#include <vector>

#include "cluster/messages.h"

namespace nodeagent::cluster {

class BroadcastQueue {
 public:
  // An Alive's address is looked up when sent (see fill), so items stay small.
  void queue(const Alive& m) { replace(Item{kAlive, m.node, m.generation, m.incarnation, 0}); }
  void queue(const Suspect& m) {
    replace(Item{kSuspect, m.node, m.generation, m.incarnation, m.from});
  }
  void queue(const Dead& m) { replace(Item{kDead, m.node, m.generation, m.incarnation, m.from}); }
  void queue(const Leave& m) { replace(Item{kLeave, m.node, m.generation, m.incarnation, 0}); }
  // The record itself is read when sent, so the newest state always goes.
  void queueCapacity(NodeId owner) { replace(Item{kCapacity, owner, 0, 0, 0}); }
  void dropCapacity(NodeId owner);

  struct Sources {
    kj::Function<kj::String(NodeId)> addressOf;
    kj::Function<kj::Maybe<Delta>(NodeId)> capacity;
  };
  // Moves broadcasts into `packet` while their estimated size fits in
  // `budget` (decremented); each counts one transmission.
  void fill(Packet& packet, size_t& budget, uint32_t limit, Sources& sources);

  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }

 private:
  enum Kind : uint8_t { kAlive, kSuspect, kDead, kLeave, kCapacity };
  struct Item {
    Kind kind;
    NodeId node;
    uint64_t generation;
    uint32_t incarnation;
    NodeId from;
    uint32_t transmits = 0;
    uint64_t seq = 0;  // queue order: higher is newer
  };
  void replace(Item item);

  std::vector<Item> items_;
  uint64_t nextSeq_ = 0;
};

}  // namespace nodeagent::cluster
