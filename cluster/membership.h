// SWIM membership with the Lifeguard extensions, for one node.
//
// Every probe period the node pings the next member of a randomized
// round-robin order; without an ack within the probe timeout it asks
// `indirectChecks` others to ping for it (they nack if they cannot reach it
// either), and without any ack by the end of the period it suspects the
// member. A suspicion becomes a death after a timeout that shrinks with
// independent confirmations, unless the member refutes it with a higher
// incarnation. Generations order a member's lives: a restarted node's
// higher generation beats any incarnation of its old one. Lifeguard's local
// health score slows our probing when we are the slow one (missed nacks,
// having to refute).
#pragma once

#include <stdint.h>

#include <kj/function.h>
#include <kj/string.h>
#include <unordered_map>

#include "cluster/broadcast_queue.h"
#include "cluster/config.h"
#include "cluster/env.h"
#include "cluster/member_table.h"
#include "cluster/outbox.h"
#include "cluster/suspicion.h"
#include "cluster/timer_queue.h"

namespace nodeagent::cluster {

class Membership {
 public:
  class Listener {
   public:
    virtual ~Listener() noexcept(false) = default;
    // A member appeared, changed state, or came back in a new generation.
    virtual void memberChanged(const Member& m, MemberState previous, bool isNew) = 0;
    virtual void memberReaped(NodeId id) = 0;
  };

  Membership(Env& env, const Config& config, TimerQueue& timers, BroadcastQueue& broadcasts,
             Outbox& outbox, Listener& listener, NodeId self, uint64_t generation,
             kj::String address);

  // Starts probing, gossip-free anti-entropy and reaping.
  void start();
  // Adopts a converged view without any traffic (a simulator starting a fleet).
  void bootstrap(kj::ArrayPtr<const Member> members);
  // Announces itself to the seeds (by address) and asks for their whole view.
  void join(kj::ArrayPtr<const kj::StringPtr> seedAddresses);
  // Tells the fleet it is going: the caller keeps the node running for a
  // few gossip intervals so the Leave spreads, then stops it.
  void leave();

  // The membership parts of a received packet. News in a state transfer
  // (packet.sync) is merged but not re-gossiped.
  void receive(NodeId sender, const Packet& packet);
  // The whole view, for a joiner.
  void appendState(Outbox::Stream& out) const;

  // Where a member (or we) can be reached, for an Alive about it.
  kj::String addressOf(NodeId id) const {
    return id == self_ ? kj::str(address_) : env_.addressOf(id);
  }
  // Adds the suspicion about `target` to a ping (Lifeguard's buddy system).
  void addBuddy(NodeId target, Packet& packet) const;

  const MemberTable& members() const { return members_; }
  NodeId self() const { return self_; }
  uint64_t generation() const { return generation_; }
  uint32_t incarnation() const { return incarnation_; }
  uint32_t healthScore() const { return health_; }
  uint64_t probesSent() const { return probes_; }
  bool leaving() const { return leaving_; }
  // min, max of a new suspicion at the current fleet size.
  std::pair<int64_t, int64_t> suspicionBounds() const;
  kj::Maybe<const Suspicion&> suspicion(NodeId id) const;
  uint32_t retransmitLimit() const;
  // Random live members other than us and `exclude`; with `deadToo`, members
  // that died recently count (so a wrongly declared node hears and refutes).
  kj::Vector<NodeId> randomMembers(uint32_t count, NodeId exclude, bool deadToo = false);

 private:
  struct Probe {
    uint32_t seqNo = 0;
    NodeId target = 0;
    bool acked = false;
    bool direct = false;
    uint32_t nacks = 0;
    uint32_t expectedNacks = 0;
  };
  struct Relay {  // we ping for someone else
    NodeId requester;
    uint32_t requesterSeq;
    TimerQueue::Id nackTimer;
  };
  struct Suspected {
    Suspicion suspicion;
    TimerQueue::Id timer;
  };

  int64_t scaled(int64_t ns) const { return ns * (health_ + 1); }
  void adjustHealth(int delta);
  void probeTick();
  NodeId nextProbeTarget();
  void probeTimeout(uint32_t seqNo);
  void probeDeadline(uint32_t seqNo);
  void pushPullTick();
  void reapTick();
  void reconnectTick();

  void onPing(NodeId sender, const Ping& m);
  void onPingReq(NodeId sender, const PingReq& m);
  void onAck(NodeId sender, const Ack& m);
  void onNack(const Nack& m);
  void onAlive(const Alive& m, bool gossip);
  void onSuspect(NodeId sender, const Suspect& m, bool gossip, bool probe);
  void addHeldSuspicion(NodeId target, Packet& p);
  void onDown(NodeId node, uint64_t gen, uint32_t inc, NodeId from, bool left, bool gossip);
  void refute(uint32_t seenIncarnation, NodeId tell);
  void armSuspicionTimer(NodeId node);
  // First a last-chance check with the suspect, then (if still suspect) death.
  void suspicionExpired(NodeId node, uint64_t gen, uint32_t inc, bool lastChance);
  void tellAlive(NodeId to);
  void changeState(Member& m, MemberState state);

  Env& env_;
  const Config& config_;
  TimerQueue& timers_;
  BroadcastQueue& broadcasts_;
  Outbox& outbox_;
  Listener& listener_;
  NodeId self_;
  uint64_t generation_;
  uint32_t incarnation_ = 0;
  kj::String address_;
  bool leaving_ = false;
  uint32_t health_ = 0;

  MemberTable members_;
  std::unordered_map<NodeId, Suspected> suspected_;
  std::unordered_map<NodeId, int64_t> downSince_;  // dead or left: when
  std::unordered_map<uint32_t, Relay> relays_;
  uint32_t nextSeq_ = 1;
  Probe probe_;

  // Randomized round-robin: member index (a * i + b) mod size for i = 0..size-1.
  uint64_t roundA_ = 1, roundB_ = 0, roundI_ = 0, roundSize_ = 0;
  NodeId syncCursor_ = 0;
  uint64_t heldTurn_ = 0;
  uint64_t probes_ = 0;
};

}  // namespace nodeagent::cluster
