// Capacity dissemination: each node owns one versioned record of its free
// capacity; everyone keeps the newest record of every owner.
//
// A record is ordered by (generation, version), so a record is always a
// whole state and "newer" replaces "older": there are no gaps to fill. News
// spreads two ways: a changed record rides the piggybacked gossip (fast,
// epidemic), and every digest interval a node sends one random peer a
// scuttlebutt digest of a slice of owners; the peer answers with the
// records it has newer (those the sender is most behind on first, within
// the packet budget) and asks for the ones it lacks.
#pragma once

#include <stdint.h>

#include <kj/function.h>
#include <memory>
#include <vector>

#include "cluster/broadcast_queue.h"
#include "cluster/config.h"
#include "cluster/env.h"
#include "cluster/outbox.h"
#include "cluster/timer_queue.h"

namespace nodeagent::cluster {

// One owner's record as a peer keeps it: 64 bytes, names out of line.
struct CapacityRecord {
  struct Names {
    kj::Vector<kj::String> warmTemplates;
    kj::Vector<kj::String> volumes;
  };
  NodeId owner = 0;
  uint64_t generation = 0;
  uint64_t version = 0;
  uint64_t freeMemoryBytes = 0;
  uint64_t freeDiskBytes = 0;
  uint32_t freeCpuMillis = 0;
  uint32_t freeSlots = 0;
  bool healthy = false;
  bool draining = false;
  std::unique_ptr<const Names> names;  // null when both lists are empty

  NodeState state() const;
};

class Dissemination {
 public:
  class Listener {
   public:
    virtual ~Listener() noexcept(false) = default;
    virtual void capacityChanged(const CapacityRecord& record) = 0;
  };
  using PeerPicker = kj::Function<kj::Vector<NodeId>(uint32_t count)>;
  using MemberFilter = kj::Function<bool(NodeId owner)>;

  Dissemination(Env& env, const Config& config, TimerQueue& timers, BroadcastQueue& broadcasts,
                Outbox& outbox, Listener& listener, NodeId self, uint64_t generation,
                PeerPicker peers, MemberFilter isMember);

  void start();  // digest exchanges
  // Our own capacity changed: a new version, gossiped at once.
  void setLocal(NodeState state);
  // Adopts a record without traffic (a simulator starting a fleet).
  void bootstrap(const Delta& delta);

  // Deltas (applied when newer and from a member) and digests.
  void receive(NodeId sender, const Packet& packet);
  // An owner was reaped, or came back in a newer generation.
  void forget(NodeId owner, uint64_t belowGeneration = UINT64_MAX);
  void appendState(Outbox::Stream& out) const;

  kj::Maybe<Delta> delta(NodeId owner) const;
  kj::Maybe<const CapacityRecord&> find(NodeId owner) const;
  const std::vector<CapacityRecord>& records() const { return records_; }
  uint64_t localVersion() const { return version_; }

  // Builds the reply to a digest (exposed for tests).
  Packet answer(const Digest& digest) const;

 private:
  void digestTick();
  bool apply(const Delta& d, bool gossip);
  size_t lowerBound(NodeId owner) const;
  size_t budget() const;

  Env& env_;
  const Config& config_;
  TimerQueue& timers_;
  BroadcastQueue& broadcasts_;
  Outbox& outbox_;
  Listener& listener_;
  NodeId self_;
  uint64_t generation_;
  uint64_t version_ = 0;
  PeerPicker peers_;
  mutable MemberFilter isMember_;
  std::vector<CapacityRecord> records_;  // sorted by owner
  NodeId cursor_ = 0;                    // where the next digest slice starts
};

}  // namespace nodeagent::cluster
