#include "cluster/membership.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "cluster/codec.h"

namespace nodeagent::cluster {

Membership::Membership(Env& env, const Config& config, TimerQueue& timers,
                       BroadcastQueue& broadcasts, Outbox& outbox, Listener& listener, NodeId self,
                       uint64_t generation, kj::String address)
    : env_(env),
      config_(config),
      timers_(timers),
      broadcasts_(broadcasts),
      outbox_(outbox),
      listener_(listener),
      self_(self),
      generation_(generation),
      address_(kj::mv(address)) {
  members_.insert(Member{self_, generation_, 0, MemberState::kAlive});
}

void Membership::start() {
  int64_t now = env_.nowNs();
  // Random phases keep a fleet that booted together from probing in lockstep.
  timers_.add(now + int64_t(env_.random() % uint64_t(config_.probeIntervalNs)),
              [this]() { probeTick(); });
  timers_.add(now + int64_t(env_.random() % uint64_t(config_.pushPullIntervalNs)),
              [this]() { pushPullTick(); });
  timers_.add(now + 1'000'000'000, [this]() { reapTick(); });
  // Phase from the id, not from env_.random(): adding this timer must not
  // shift the random stream every other seeded decision draws from.
  timers_.add(
      now + int64_t((self_ * 0x9e3779b97f4a7c15ull) % uint64_t(config_.reconnectIntervalNs)),
      [this]() { reconnectTick(); });
}

void Membership::reconnectTick() {
  timers_.add(env_.nowNs() + config_.reconnectIntervalNs, [this]() { reconnectTick(); });
  if (leaving_) return;
  kj::Vector<const Member*> dead;
  for (size_t i = 0; i < members_.size(); ++i) {
    const Member& m = members_.at(i);
    if (m.state == MemberState::kDead) dead.add(&m);
  }
  if (dead.empty()) return;
  const Member& m = *dead[env_.random() % dead.size()];
  // Its death, addressed to it: a live node refutes (to us directly).
  Packet p;
  p.alives.add(Alive{self_, generation_, incarnation_, kj::str(address_)});
  p.deads.add(Dead{m.id, m.generation, m.incarnation, self_});
  outbox_.send(m.id, kj::mv(p));
}

void Membership::bootstrap(kj::ArrayPtr<const Member> members) {
  members_.reserve(members.size() + 1);
  for (auto& m : members) {
    if (m.id != self_ && members_.find(m.id) == nullptr) members_.insert(m);
  }
}

void Membership::join(kj::ArrayPtr<const kj::StringPtr> seedAddresses) {
  for (auto address : seedAddresses) {
    Packet p;
    p.alives.add(Alive{self_, generation_, incarnation_, kj::str(address_)});
    p.wantSync = true;
    outbox_.sendToAddress(address, kj::mv(p));
  }
}

void Membership::leave() {
  leaving_ = true;
  Leave l{self_, generation_, incarnation_};
  broadcasts_.queue(l);
  for (auto id : randomMembers(config_.gossipNodes, 0)) {
    Packet p;
    p.leaves.add(l);
    outbox_.send(id, kj::mv(p));
  }
}

uint32_t Membership::retransmitLimit() const {
  double n = double(members_.liveCount());
  return config_.retransmitMult * uint32_t(std::ceil(std::log10(n + 1)));
}

std::pair<int64_t, int64_t> Membership::suspicionBounds() const {
  double n = double(std::max<size_t>(1, members_.liveCount()));
  double scale = std::max(1.0, std::log10(n));
  auto min = int64_t(config_.suspicionMult * scale * double(config_.probeIntervalNs));
  auto max = int64_t(config_.suspicionMaxTimeoutMult * double(min));
  return {min, max};
}

kj::Maybe<const Suspicion&> Membership::suspicion(NodeId id) const {
  auto it = suspected_.find(id);
  if (it == suspected_.end()) return nullptr;
  return it->second.suspicion;
}

void Membership::adjustHealth(int delta) {
  int h = int(health_) + delta;
  health_ = uint32_t(std::clamp(h, 0, int(config_.awarenessMaxMultiplier) - 1));
}

kj::Vector<NodeId> Membership::randomMembers(uint32_t count, NodeId exclude, bool deadToo) {
  kj::Vector<NodeId> out;
  int64_t now = env_.nowNs();
  auto eligible = [&](const Member& m) {
    if (m.id == self_ || m.id == exclude) return false;
    if (m.live()) return true;
    if (!deadToo || m.state != MemberState::kDead) return false;
    auto it = downSince_.find(m.id);
    return it != downSince_.end() && now - it->second < config_.gossipToTheDeadNs;
  };
  size_t n = members_.size();
  if (n <= 4 * size_t(count) + 16) {
    // Small table: choose among all eligible members.
    kj::Vector<NodeId> all;
    for (size_t i = 0; i < n; ++i)
      if (eligible(members_.at(i))) all.add(members_.at(i).id);
    for (size_t i = 0; i < all.size() && out.size() < count; ++i) {
      size_t j = i + env_.random() % (all.size() - i);
      std::swap(all[i], all[j]);
      out.add(all[i]);
    }
    return out;
  }
  for (uint32_t tries = 0; tries < 8 * count && out.size() < count; ++tries) {
    const Member& m = members_.at(env_.random() % n);
    if (!eligible(m)) continue;
    if (std::find(out.begin(), out.end(), m.id) != out.end()) continue;
    out.add(m.id);
  }
  return out;
}

NodeId Membership::nextProbeTarget() {
  size_t n = members_.size();
  for (size_t attempts = 0; attempts <= n; ++attempts) {
    if (roundI_ >= roundSize_ || roundSize_ != n) {
      // A new round: a fresh random permutation i -> (a*i + b) mod n.
      roundSize_ = n;
      roundI_ = 0;
      roundB_ = env_.random() % n;
      roundA_ = 1;
      if (n > 2) {
        do {
          roundA_ = 1 + env_.random() % (n - 1);
        } while (std::gcd(roundA_, uint64_t(n)) != 1);
      }
    }
    const Member& m = members_.at((roundA_ * roundI_++ + roundB_) % n);
    if (m.id != self_ && m.live()) return m.id;
  }
  return 0;
}

void Membership::addBuddy(NodeId target, Packet& packet) const {
  auto* m = members_.find(target);
  if (m != nullptr && m->state == MemberState::kSuspect) {
    packet.suspects.add(Suspect{target, m->generation, m->incarnation, self_});
  }
}

void Membership::probeTick() {
  int64_t now = env_.nowNs();
  NodeId target = nextProbeTarget();
  if (target != 0) {
    uint32_t seq = nextSeq_++;
    probe_ = Probe{seq, target};
    ++probes_;
    Packet p;
    p.pings.add(Ping{seq, target});
    addBuddy(target, p);
    addHeldSuspicion(target, p);
    outbox_.send(target, kj::mv(p));
    timers_.add(now + scaled(config_.probeTimeoutNs), [this, seq]() { probeTimeout(seq); });
    // Added before the next tick, so at equal times it runs first.
    timers_.add(now + scaled(config_.probeIntervalNs), [this, seq]() { probeDeadline(seq); });
  }
  timers_.add(now + scaled(config_.probeIntervalNs), [this]() { probeTick(); });
}

void Membership::addHeldSuspicion(NodeId target, Packet& p) {
  // One of the suspicions we hold rides along, in turn. Gossip leaves a
  // small tail of nodes that miss a refutation; a probed node that knows
  // the suspect refuted tells us (see onSuspect), so our timer never runs
  // out on a healthy node just because the gossip missed us.
  if (suspected_.empty()) return;
  auto it = suspected_.begin();
  std::advance(it, heldTurn_++ % suspected_.size());
  if (it->first == target) return;
  const Member* m = members_.find(it->first);
  p.suspects.add(Suspect{m->id, m->generation, m->incarnation, self_});
}

void Membership::probeTimeout(uint32_t seqNo) {
  if (probe_.seqNo != seqNo || probe_.acked) return;
  auto helpers = randomMembers(config_.indirectChecks, probe_.target);
  probe_.expectedNacks = helpers.size();
  for (auto h : helpers) {
    Packet p;
    p.pingReqs.add(PingReq{seqNo, probe_.target});
    outbox_.send(h, kj::mv(p));
  }
}

void Membership::probeDeadline(uint32_t seqNo) {
  if (probe_.seqNo != seqNo || probe_.acked) return;
  // Lifeguard: helpers that did not even nack point at us (our packets or
  // our processing are slow), not at the target. With no helpers to judge
  // by, every failed probe counts against us.
  if (probe_.expectedNacks > 0) {
    adjustHealth(int(probe_.expectedNacks) - int(std::min(probe_.nacks, probe_.expectedNacks)));
  } else {
    adjustHealth(1);
  }
  auto* m = members_.find(probe_.target);
  if (m != nullptr && m->live()) {
    onSuspect(self_, Suspect{m->id, m->generation, m->incarnation, self_}, true, false);
  }
}

void Membership::pushPullTick() {
  timers_.add(env_.nowNs() + config_.pushPullIntervalNs, [this]() { pushPullTick(); });
  auto peers = randomMembers(1, 0);
  if (peers.empty()) return;
  // One packet's worth of our view, continuing where the last slice ended,
  // so every record reaches some peer once per sweep.
  Packet p;
  p.sync = true;
  size_t budget = config_.packetBudgetBytes - config_.sealOverheadBytes - kPacketOverheadBytes -
                  4 * kListOverheadBytes;
  size_t n = members_.size();
  size_t i = members_.lowerBound(syncCursor_);
  for (size_t sent = 0; sent < n; ++sent, ++i) {
    if (i >= n) i = 0;
    const Member& m = members_.at(i);
    size_t need = 0;
    if (m.id == self_) {
      Alive a{self_, generation_, incarnation_, kj::str(address_)};
      need = estimateBytes(a);
      if (need > budget) break;
      p.alives.add(kj::mv(a));
    } else if (m.state == MemberState::kAlive) {
      Alive a{m.id, m.generation, m.incarnation, env_.addressOf(m.id)};
      need = estimateBytes(a);
      if (need > budget) break;
      p.alives.add(kj::mv(a));
    } else if (m.state == MemberState::kSuspect) {
      Suspect s{m.id, m.generation, m.incarnation, self_};
      need = estimateBytes(s);
      if (need > budget) break;
      p.suspects.add(s);
    } else if (m.state == MemberState::kDead) {
      Dead d{m.id, m.generation, m.incarnation, self_};
      need = estimateBytes(d);
      if (need > budget) break;
      p.deads.add(d);
    } else {
      Leave l{m.id, m.generation, m.incarnation};
      need = estimateBytes(l);
      if (need > budget) break;
      p.leaves.add(l);
    }
    budget -= need;
    syncCursor_ = i + 1 < n ? members_.at(i + 1).id : 0;
  }
  outbox_.send(peers[0], kj::mv(p));
}

void Membership::reapTick() {
  int64_t now = env_.nowNs();
  timers_.add(now + 1'000'000'000, [this]() { reapTick(); });
  kj::Vector<NodeId> gone;
  for (auto& [id, since] : downSince_)
    if (now - since >= config_.reapNs) gone.add(id);
  for (auto id : gone) {
    downSince_.erase(id);
    members_.erase(id);
    listener_.memberReaped(id);
  }
}

void Membership::appendState(Outbox::Stream& out) const {
  for (size_t i = 0; i < members_.size(); ++i) {
    const Member& m = members_.at(i);
    switch (m.state) {
      case MemberState::kAlive:
        out.add(Alive{m.id, m.generation, m.id == self_ ? incarnation_ : m.incarnation,
                      m.id == self_ ? kj::str(address_) : env_.addressOf(m.id)});
        break;
      case MemberState::kSuspect:
        out.add(Suspect{m.id, m.generation, m.incarnation, self_});
        break;
      case MemberState::kDead:
        out.add(Dead{m.id, m.generation, m.incarnation, self_});
        break;
      case MemberState::kLeft:
        out.add(Leave{m.id, m.generation, m.incarnation});
        break;
    }
  }
}

void Membership::receive(NodeId sender, const Packet& p) {
  bool gossip = !p.sync;
  // Updates first: a buddy suspicion riding on a ping is refuted before the
  // ack goes out, so the ack carries the refutation.
  for (auto& m : p.alives) onAlive(m, gossip);
  bool probe = !p.pings.empty();
  for (auto& m : p.suspects) onSuspect(sender, m, gossip, probe);
  for (auto& m : p.deads) onDown(m.node, m.generation, m.incarnation, m.from, false, gossip);
  for (auto& m : p.leaves) onDown(m.node, m.generation, m.incarnation, m.node, true, gossip);
  for (auto& m : p.pings) onPing(sender, m);
  for (auto& m : p.pingReqs) onPingReq(sender, m);
  for (auto& m : p.acks) onAck(sender, m);
  for (auto& m : p.nacks) onNack(m);
}

void Membership::onPing(NodeId sender, const Ping& m) {
  if (m.target != self_) return;  // meant for whoever had this address before
  Packet p;
  p.acks.add(Ack{m.seqNo});
  outbox_.send(sender, kj::mv(p));
}

void Membership::onPingReq(NodeId sender, const PingReq& m) {
  uint32_t seq = nextSeq_++;
  auto timer = timers_.add(env_.nowNs() + config_.probeTimeoutNs, [this, seq]() {
    auto it = relays_.find(seq);
    if (it == relays_.end()) return;
    Packet p;
    p.nacks.add(Nack{it->second.requesterSeq});
    outbox_.send(it->second.requester, kj::mv(p));
    relays_.erase(it);
  });
  relays_.emplace(seq, Relay{sender, m.seqNo, timer});
  Packet p;
  p.pings.add(Ping{seq, m.target});
  addBuddy(m.target, p);
  outbox_.send(m.target, kj::mv(p));
}

void Membership::onAck(NodeId sender, const Ack& m) {
  auto it = relays_.find(m.seqNo);
  if (it != relays_.end()) {
    Packet p;
    p.acks.add(Ack{it->second.requesterSeq});
    outbox_.send(it->second.requester, kj::mv(p));
    timers_.cancel(it->second.nackTimer);
    relays_.erase(it);
    return;
  }
  if (m.seqNo == probe_.seqNo && !probe_.acked) {
    probe_.acked = true;
    if (sender == probe_.target) adjustHealth(-1);
  }
}

void Membership::onNack(const Nack& m) {
  if (m.seqNo == probe_.seqNo) ++probe_.nacks;
}

void Membership::changeState(Member& m, MemberState state) {
  MemberState previous = m.state;
  members_.setState(m, state);
  listener_.memberChanged(m, previous, false);
}

void Membership::onAlive(const Alive& m, bool gossip) {
  if (m.node == self_ || m.node == 0) return;
  Member* member = members_.find(m.node);
  if (member == nullptr) {
    Member& added =
        members_.insert(Member{m.node, m.generation, m.incarnation, MemberState::kAlive});
    if (m.address.size() > 0) env_.learnAddress(m.node, m.address);
    listener_.memberChanged(added, MemberState::kAlive, true);
    if (gossip) broadcasts_.queue(m);
    return;
  }
  if (!newer(m.generation, m.incarnation, *member)) return;
  bool restarted = m.generation > member->generation;
  MemberState previous = member->state;
  member->generation = m.generation;
  member->incarnation = m.incarnation;
  auto it = suspected_.find(m.node);
  if (it != suspected_.end()) {
    timers_.cancel(it->second.timer);
    suspected_.erase(it);
  }
  downSince_.erase(m.node);
  members_.setState(*member, MemberState::kAlive);
  if (m.address.size() > 0) env_.learnAddress(m.node, m.address);
  listener_.memberChanged(*member, previous, restarted);
  if (gossip) broadcasts_.queue(m);
}

void Membership::onSuspect(NodeId sender, const Suspect& m, bool gossip, bool probe) {
  if (m.node == self_) {
    if (m.generation == generation_ && !leaving_) {
      if (m.incarnation >= incarnation_) {
        refute(m.incarnation, m.from);
      } else {
        tellAlive(m.from);  // a stale suspicion: the sender missed our refutation
      }
    }
    return;
  }
  Member* member = members_.find(m.node);
  if (member == nullptr || member->generation != m.generation || !member->live()) return;
  if (m.incarnation < member->incarnation) {
    // A prober holds a suspicion the suspect has refuted: correct it. (Only
    // for probes; answering every stale gossip would multiply the traffic.)
    if (probe && member->state == MemberState::kAlive && sender != m.node && sender != self_) {
      Packet p;
      p.alives.add(Alive{m.node, member->generation, member->incarnation, addressOf(m.node)});
      outbox_.send(sender, kj::mv(p));
    }
    return;
  }
  if (member->state == MemberState::kSuspect && m.incarnation == member->incarnation) {
    auto it = suspected_.find(m.node);
    if (it != suspected_.end() && it->second.suspicion.confirm(m.from)) {
      armSuspicionTimer(m.node);
      if (gossip) broadcasts_.queue(m);
    }
    return;
  }
  // A new suspicion, or one about a newer incarnation than the one we suspect
  // (we missed the refutation in between): the timer starts over.
  member->incarnation = m.incarnation;
  if (member->state != MemberState::kSuspect) changeState(*member, MemberState::kSuspect);
  auto old = suspected_.find(m.node);
  if (old != suspected_.end()) timers_.cancel(old->second.timer);
  auto [min, max] = suspicionBounds();
  // Only others than the suspecter and the suspect can confirm.
  uint32_t k = config_.suspicionConfirmations;
  if (members_.liveCount() < k + 2) k = 0;
  suspected_.insert_or_assign(
      m.node, Suspected{Suspicion(m.from, k, min, max, env_.nowNs()), TimerQueue::Id{}});
  armSuspicionTimer(m.node);
  if (gossip) broadcasts_.queue(m);
  if (m.from == self_) {
    // Our own probe failed: tell the suspect at once, so that if it is only
    // slow it refutes before anyone's timer runs out.
    Packet p;
    p.suspects.add(m);
    outbox_.send(m.node, kj::mv(p));
  }
}

void Membership::armSuspicionTimer(NodeId node) {
  auto it = suspected_.find(node);
  if (it == suspected_.end()) return;
  timers_.cancel(it->second.timer);
  const Member* m = members_.find(node);
  uint64_t gen = m->generation;
  uint32_t inc = m->incarnation;
  int64_t at = std::max(env_.nowNs(), it->second.suspicion.deadlineNs());
  it->second.timer =
      timers_.add(at, [this, node, gen, inc]() { suspicionExpired(node, gen, inc, true); });
}

void Membership::suspicionExpired(NodeId node, uint64_t gen, uint32_t inc, bool lastChance) {
  Member* m = members_.find(node);
  if (m == nullptr || m->state != MemberState::kSuspect || m->generation != gen ||
      m->incarnation != inc) {
    return;
  }
  if (lastChance) {
    // Gossip may have missed us with the suspect's refutation (epidemic
    // spread leaves a small tail). Before declaring it dead, show the suspect
    // the suspicion once more: alive, it answers with its newest Alive at
    // once. Two packets, so one loss cannot cost a healthy node its life.
    for (int copy = 0; copy < 2; ++copy) {
      Packet p;
      p.pings.add(Ping{nextSeq_++, node});
      p.suspects.add(Suspect{node, gen, inc, self_});
      outbox_.send(node, kj::mv(p));
    }
    timers_.add(env_.nowNs() + scaled(config_.probeTimeoutNs),
                [this, node, gen, inc]() { suspicionExpired(node, gen, inc, false); });
    return;
  }
  onDown(node, gen, inc, self_, false, true);
}

void Membership::onDown(NodeId node, uint64_t gen, uint32_t inc, NodeId from, bool left,
                        bool gossip) {
  if (node == self_) {
    if (!left && gen == generation_ && !leaving_) {
      if (inc >= incarnation_) {
        refute(inc, from);
      } else {
        tellAlive(from);
      }
    }
    return;
  }
  Member* member = members_.find(node);
  if (member == nullptr || member->generation != gen || inc < member->incarnation ||
      !member->live()) {
    return;
  }
  member->incarnation = inc;
  auto it = suspected_.find(node);
  if (it != suspected_.end()) {
    timers_.cancel(it->second.timer);
    suspected_.erase(it);
  }
  downSince_[node] = env_.nowNs();
  changeState(*member, left ? MemberState::kLeft : MemberState::kDead);
  if (gossip) {
    if (left) {
      broadcasts_.queue(Leave{node, gen, inc});
    } else {
      broadcasts_.queue(Dead{node, gen, inc, from});
    }
  }
}

void Membership::refute(uint32_t seenIncarnation, NodeId tell) {
  incarnation_ = std::max(incarnation_, seenIncarnation) + 1;
  members_.find(self_)->incarnation = incarnation_;
  // Having to refute means we were too slow to answer: Lifeguard counts it.
  adjustHealth(1);
  broadcasts_.queue(Alive{self_, generation_, incarnation_, kj::str(address_)});
  tellAlive(tell);
}

void Membership::tellAlive(NodeId to) {
  if (to == 0 || to == self_) return;
  Packet p;
  p.alives.add(Alive{self_, generation_, incarnation_, kj::str(address_)});
  outbox_.send(to, kj::mv(p));
}

}  // namespace nodeagent::cluster
