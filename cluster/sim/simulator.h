// A deterministic discrete-event world for cluster::Node: one simulated
// clock, a network with per-link delay, loss and partitions, and nodes that
// can stall, crash and restart. Everything random comes from the seed.
//
// A stalled node (a GC pause, SIGSTOP, an overloaded host) runs nothing and
// sends nothing; what arrives meanwhile waits, as in a socket buffer, and is
// processed in arrival order when the stall ends, interleaved with the
// timers that came due (also late). The buffer is unbounded.
#pragma once

#include <stdint.h>

#include <kj/function.h>
#include <kj/memory.h>
#include <queue>
#include <unordered_map>
#include <vector>

#include "cluster/node.h"
#include "cluster/sim/prng.h"

namespace nodeagent::cluster::sim {

struct Network {
  int64_t minDelayNs = 200'000;  // one way, uniform in [min, max]
  int64_t maxDelayNs = 2'000'000;
  double loss = 0;  // per packet
};

// What the simulator tells an observer (the scenario's measurements).
class Observer {
 public:
  virtual ~Observer() noexcept(false) = default;
  virtual void memberChanged(size_t observer, const Member& m, MemberState previous) {
    (void)observer, (void)m, (void)previous;
  }
  virtual void capacityChanged(size_t observer, const CapacityRecord& r) {
    (void)observer, (void)r;
  }
};

class Simulator {
 public:
  Simulator(uint64_t seed, const Config& config, Observer* observer = nullptr);
  ~Simulator();

  // Adds `n` nodes that already know each other and everyone's capacity
  // (a converged fleet) and starts them. Returns the first new index.
  size_t addConvergedFleet(size_t n, const NodeState& initial);
  // Adds one node that joins through the given members' addresses.
  size_t addJoiningNode(kj::ArrayPtr<const size_t> seeds, const NodeState& initial);

  void crash(size_t i);
  void restart(size_t i, kj::ArrayPtr<const size_t> seeds, const NodeState& initial);
  void stall(size_t i, int64_t durationNs);
  void setPartition(size_t i, uint32_t group) { slots_[i].partition = group; }
  Network& network() { return network_; }

  // Runs `fn` at simulated time `atNs` (a scenario step).
  void at(int64_t atNs, kj::Function<void()> fn);
  void runUntil(int64_t ns);
  int64_t now() const { return now_; }

  size_t size() const { return slots_.size(); }
  bool up(size_t i) const { return slots_[i].node.get() != nullptr; }
  bool stalled(size_t i) const { return slots_[i].stalledUntil > now_; }
  Node& node(size_t i) { return *slots_[i].node; }
  NodeId id(size_t i) const { return slots_[i].id; }
  kj::Maybe<size_t> indexOf(NodeId id) const;
  Prng& random() { return rng_; }

  uint64_t packetsDelivered() const { return delivered_; }
  uint64_t packetsDropped() const { return dropped_; }
  uint64_t bytesSent() const;  // by every node, alive or not, since the start
  uint64_t eventsRun() const { return events_; }

 private:
  class NodeEnv;
  struct Slot {
    NodeId id = 0;
    kj::Own<NodeEnv> env;
    kj::Own<Node> node;
    uint64_t generation = 0;
    int64_t armedAt = INT64_MAX;
    int64_t stalledUntil = 0;
    uint32_t partition = 0;
    uint64_t bytesFromPastLives = 0;
  };
  enum Kind : uint8_t { kWake, kDeliver, kAction };
  struct Event {
    int64_t at;   // when it runs
    int64_t due;  // when it was meant to (differs after a stall)
    uint64_t seq;
    uint32_t target;  // node index
    Kind kind;
    uint32_t payload;  // packet or action slot
    bool operator>(const Event& o) const {
      if (at != o.at) return at > o.at;
      if (due != o.due) return due > o.due;
      return seq > o.seq;
    }
  };

  size_t newSlot();
  void boot(size_t i, const NodeState& initial);
  void push(int64_t at, int64_t due, uint32_t target, Kind kind, uint32_t payload);
  void deliver(uint32_t from, uint32_t to, kj::ArrayPtr<const kj::byte> bytes);
  void runEvent(const Event& e);
  uint32_t storePacket(kj::Array<kj::byte> bytes);

  Config config_;
  Observer* observer_;
  uint64_t seed_;
  Prng rng_;
  Network network_;
  int64_t now_ = 0;
  uint64_t seq_ = 0;
  std::vector<Slot> slots_;
  std::unordered_map<NodeId, uint32_t> index_;
  std::priority_queue<Event, std::vector<Event>, std::greater<Event>> queue_;
  std::vector<kj::Array<kj::byte>> packets_;
  std::vector<uint32_t> freePackets_;
  kj::Vector<kj::Maybe<kj::Function<void()>>> actions_;
  uint64_t delivered_ = 0, dropped_ = 0, events_ = 0;
};

}  // namespace nodeagent::cluster::sim
