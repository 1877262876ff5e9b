// Placement (issue 5, item 4): any node places a spec by sampling a few
// candidates from its gossip view of the fleet's free capacity, weighted by
// how many copies of the spec each would fit and by affinity (the
// template's warm pool, the tenant's volume), and asking the best one to
// reserve with a short lease. The candidate admits against its own ledger
// (Admission), which is the only authority: the view is a hint, so a
// concurrent placement can never overcommit a node, it can only be
// refused. A refusal carries the candidate's current free capacity, which
// the placer folds into its view before retrying with a larger sample.
//
// The protocol never touches a clock or the network itself: replies come
// back through a ReservationChannel (the simulator delivers them after a
// simulated delay; the agent would use an RPC).
#pragma once

#include <stdint.h>

#include <kj/function.h>
#include <kj/string.h>
#include <unordered_map>
#include <vector>

#include "cluster/messages.h"

namespace nodeagent::cluster {

class Node;

struct Resources {
  uint32_t cpuMillis = 0;
  uint64_t memoryBytes = 0;
  uint32_t slots = 0;

  bool fitsIn(const Resources& free) const {
    return cpuMillis <= free.cpuMillis && memoryBytes <= free.memoryBytes && slots <= free.slots;
  }
};

using ReservationId = uint64_t;

// A node's own ledger: capacity minus what reservations (pending or
// committed) hold. Single-threaded; each call is atomic with respect to the
// others, and reserve admits only what fits, so `used() <= capacity()`
// always holds.
class Admission {
 public:
  // Called with the node's advertised state after every change (the agent
  // and the simulator pass Node::setLocalState).
  using Publish = kj::Function<void(NodeState)>;

  // `base` supplies what the ledger does not own (disk, warm templates,
  // volumes, health); its free cpu/memory/slots are overwritten.
  Admission(Resources capacity, NodeState base, kj::Maybe<Publish> publish = nullptr);

  // Admits `request` if it fits in what is free at `nowNs` (expired leases
  // are reclaimed first). The reservation lapses at nowNs + leaseNs unless
  // committed.
  kj::Maybe<ReservationId> reserve(const Resources& request, int64_t leaseNs, int64_t nowNs);
  // Makes a pending reservation permanent. False if unknown or lapsed.
  bool commit(ReservationId id, int64_t nowNs);
  // Gives a reservation (pending or committed) back. False if unknown.
  bool release(ReservationId id, int64_t nowNs);
  // Reclaims lapsed leases; returns how many.
  size_t expire(int64_t nowNs);
  // Publishes the current state (at start, or after `base` changed).
  void advertise() { publish(); }
  // Replaces what the ledger does not own; publishes if it changed.
  void setBase(NodeState base);
  // What a live reservation holds (null if unknown or lapsed by `nowNs`).
  kj::Maybe<Resources> held(ReservationId id, int64_t nowNs);

  const Resources& capacity() const { return capacity_; }
  const Resources& used() const { return used_; }
  Resources free() const;
  size_t pending() const;
  size_t reservations() const { return entries_.size(); }

 private:
  struct Entry {
    Resources held;
    int64_t leaseEndNs;  // INT64_MAX once committed
  };
  void publish();

  Resources capacity_;
  Resources used_;
  NodeState base_;
  kj::Maybe<Publish> publish_;
  ReservationId next_ = 1;
  std::unordered_map<ReservationId, Entry> entries_;
};

// How a placer reaches a candidate's Admission.
class ReservationChannel {
 public:
  struct Reply {
    bool granted = false;
    ReservationId id = 0;
    Resources free;  // the candidate's free capacity after deciding
  };
  virtual ~ReservationChannel() noexcept(false) = default;
  // Asks `target` to reserve; `done` runs exactly once with the answer.
  virtual void reserve(NodeId target, const Resources& request, int64_t leaseNs,
                       kj::Function<void(Reply)> done) = 0;
  virtual void commit(NodeId target, ReservationId id) = 0;
};

struct PlacementSpec {
  Resources need;
  kj::StringPtr templateName;  // empty: no warm-pool affinity
  kj::StringPtr volume;        // empty: no volume affinity
};

class Placer {
 public:
  struct Options {
    uint32_t firstSample = 2;  // doubled on each retry
    uint32_t maxAttempts = 5;  // reservations asked for, at most
    int64_t leaseNs = 5'000'000'000;
    double warmBonus = 1.0;    // a warm template multiplies the score by 1 + this
    double volumeBonus = 3.0;  // likewise the tenant's volume
    // How long a refusal's report overrides gossip for that node.
    int64_t refusalMemoryNs = 2'000'000'000;
  };
  struct Result {
    bool placed = false;
    NodeId node = 0;
    ReservationId id = 0;
    uint32_t attempts = 0;  // reservations asked for
    uint32_t sample = 0;    // the sample size asked for in the last attempt
  };
  // One candidate as the placer sees it (exposed for tests).
  struct Candidate {
    NodeId id;
    Resources free;
    bool warm;
    bool volume;
  };

  // `random` is the node's randomness (Env::random).
  Placer(Node& node, ReservationChannel& channel, kj::Function<uint64_t()> random,
         kj::Function<int64_t()> nowNs, Options options);
  Placer(Node& node, ReservationChannel& channel, kj::Function<uint64_t()> random,
         kj::Function<int64_t()> nowNs)
      : Placer(node, channel, kj::mv(random), kj::mv(nowNs), Options()) {}

  // Places `spec` (its strings must outlive the call to `done`); `done`
  // runs once, with a reservation the caller commits (or lets lapse). The
  // placer must outlive every placement it started.
  void place(const PlacementSpec& spec, kj::Function<void(Result)> done);

  // The live candidates that fit `spec` per the view and folded refusals.
  std::vector<Candidate> candidates(const PlacementSpec& spec);
  // A node refused (or granted) and reported `free`: trust it over gossip
  // for a while.
  void fold(NodeId node, const Resources& free);
  // The sampling score: copies of the spec that fit, times affinity.
  double score(const Candidate& c, const PlacementSpec& spec) const;

 private:
  struct Attempt;
  void attempt(kj::Own<Attempt> a);

  Node& node_;
  ReservationChannel& channel_;
  kj::Function<uint64_t()> random_;
  kj::Function<int64_t()> now_;
  Options options_;
  struct Folded {
    Resources free;
    int64_t untilNs;
  };
  std::unordered_map<NodeId, Folded> folded_;
};

}  // namespace nodeagent::cluster
