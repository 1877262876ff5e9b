// One fleet member: membership and capacity dissemination sharing a timer
// queue, a piggyback queue and an outbox, driven through an Env. Entry
// points are start/join/leave/setLocalState, receive() for each datagram
// and wake() when the Env's alarm fires.
#pragma once

#include <stdint.h>

#include <kj/string.h>

#include "cluster/broadcast_queue.h"
#include "cluster/config.h"
#include "cluster/dissemination.h"
#include "cluster/env.h"
#include "cluster/membership.h"
#include "cluster/outbox.h"
#include "cluster/timer_queue.h"

namespace nodeagent::cluster {

class Node final : private Outbox, private Membership::Listener, private Dissemination::Listener {
 public:
  class Listener {
   public:
    virtual ~Listener() noexcept(false) = default;
    virtual void memberChanged(const Member& m, MemberState previous, bool isNew) {
      (void)m, (void)previous, (void)isNew;
    }
    virtual void capacityChanged(const CapacityRecord& record) { (void)record; }
  };

  // `generation` must grow across restarts of the same id (boot time works).
  Node(Env& env, const Config& config, NodeId id, uint64_t generation, kj::String address,
       Listener* listener = nullptr);

  void start();
  void join(kj::ArrayPtr<const kj::StringPtr> seedAddresses) {
    membership_.join(seedAddresses);
    rearm();
  }
  void leave() {
    membership_.leave();
    rearm();
  }
  void setLocalState(NodeState state) {
    dissemination_.setLocal(kj::mv(state));
    rearm();
  }
  void receive(kj::ArrayPtr<const kj::byte> datagram);
  void wake();

  NodeId id() const { return membership_.self(); }
  Membership& membership() { return membership_; }
  const Membership& membership() const { return membership_; }
  Dissemination& dissemination() { return dissemination_; }
  const Dissemination& dissemination() const { return dissemination_; }
  size_t pendingBroadcasts() const { return broadcasts_.size(); }
  uint64_t bytesSent() const { return bytesSent_; }  // including the sealing overhead
  uint64_t packetsSent() const { return packetsSent_; }

 private:
  class Stream;
  void send(NodeId to, Packet packet) override;
  void sendToAddress(kj::StringPtr address, Packet packet) override;
  kj::Array<kj::byte> seal(Packet& packet);
  void memberChanged(const Member& m, MemberState previous, bool isNew) override;
  void memberReaped(NodeId id) override;
  void capacityChanged(const CapacityRecord& record) override;
  void gossipTick();
  void rearm();

  Env& env_;
  const Config& config_;
  Listener* listener_;
  TimerQueue timers_;
  BroadcastQueue broadcasts_;
  Membership membership_;
  Dissemination dissemination_;
  BroadcastQueue::Sources sources_;
  int64_t armedAt_ = INT64_MAX;
  uint64_t bytesSent_ = 0;
  uint64_t packetsSent_ = 0;
};

}  // namespace nodeagent::cluster
