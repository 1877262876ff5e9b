#include "cluster/node.h"

#include "cluster/codec.h"

namespace nodeagent::cluster {

// Splits a state transfer into packets within the budget.
class Node::Stream final : public Outbox::Stream {
 public:
  Stream(Node& node, NodeId to) : node_(node), to_(to) { reset(); }
  ~Stream() noexcept(false) { flush(); }

  void add(Alive m) override { put(packet_.alives, kj::mv(m)); }
  void add(Suspect m) override { put(packet_.suspects, m); }
  void add(Dead m) override { put(packet_.deads, m); }
  void add(Leave m) override { put(packet_.leaves, m); }
  void add(Delta m) override { put(packet_.deltas, kj::mv(m)); }

 private:
  template <typename T>
  void put(kj::Vector<T>& list, T m) {
    size_t need = estimateBytes(m) + (list.empty() ? kListOverheadBytes : 0);
    if (need > room_ && !packet_.empty()) {
      flush();
      reset();
    }
    room_ -= std::min(room_, need);
    list.add(kj::mv(m));
  }
  void reset() {
    packet_ = Packet();
    packet_.sync = true;
    room_ =
        node_.config_.packetBudgetBytes - node_.config_.sealOverheadBytes - kPacketOverheadBytes;
  }
  void flush() {
    if (!packet_.empty()) node_.send(to_, kj::mv(packet_));
    packet_ = Packet();
  }

  Node& node_;
  NodeId to_;
  Packet packet_;
  size_t room_ = 0;
};

Node::Node(Env& env, const Config& config, NodeId id, uint64_t generation, kj::String address,
           Listener* listener)
    : env_(env),
      config_(config),
      listener_(listener),
      membership_(env, config, timers_, broadcasts_, *this, *this, id, generation, kj::mv(address)),
      dissemination_(
          env, config, timers_, broadcasts_, *this, *this, id, generation,
          [this](uint32_t count) { return membership_.randomMembers(count, 0); },
          [this](NodeId owner) {
            const Member* m = membership_.members().find(owner);
            return m != nullptr && m->live();
          }),
      sources_{[this](NodeId id) { return membership_.addressOf(id); },
               [this](NodeId owner) { return dissemination_.delta(owner); }} {}

void Node::start() {
  membership_.start();
  dissemination_.start();
  int64_t now = env_.nowNs();
  timers_.add(now + int64_t(env_.random() % uint64_t(config_.gossipIntervalNs)),
              [this]() { gossipTick(); });
  rearm();
}

void Node::rearm() {
  int64_t next = timers_.nextDue();
  if (next != armedAt_) {
    armedAt_ = next;
    if (next != INT64_MAX) env_.wakeAt(next);
  }
}

void Node::wake() {
  armedAt_ = INT64_MAX;  // the alarm that woke us is spent
  timers_.runDue(env_.nowNs());
  rearm();
}

void Node::gossipTick() {
  timers_.add(env_.nowNs() + config_.gossipIntervalNs, [this]() { gossipTick(); });
  if (broadcasts_.empty()) return;  // an idle fleet sends nothing
  for (auto to : membership_.randomMembers(config_.gossipNodes, 0, true)) {
    send(to, Packet());
    if (broadcasts_.empty()) break;
  }
}

kj::Array<kj::byte> Node::seal(Packet& p) {
  p.sender = membership_.self();
  p.senderGeneration = membership_.generation();
  size_t budget = config_.packetBudgetBytes - config_.sealOverheadBytes;
  if (!p.sync) {
    // Piggyback queued gossip into whatever room the packet leaves.
    size_t used = estimateBytes(p);
    size_t room = budget > used ? budget - used : 0;
    broadcasts_.fill(p, room, membership_.retransmitLimit(), sources_);
  }
  auto bytes = encodePacket(p);
  // The estimates are upper bounds in practice; should one fall short,
  // shed piggybacked records until the packet fits.
  while (bytes.size() > budget) {
    if (!p.deltas.empty()) {
      p.deltas.removeLast();
    } else if (!p.alives.empty()) {
      p.alives.removeLast();
    } else if (!p.suspects.empty()) {
      p.suspects.removeLast();
    } else if (!p.deads.empty()) {
      p.deads.removeLast();
    } else {
      break;
    }
    bytes = encodePacket(p);
  }
  return bytes;
}

void Node::send(NodeId to, Packet p) {
  auto bytes = seal(p);
  if (p.empty()) return;
  bytesSent_ += bytes.size() + config_.sealOverheadBytes;
  ++packetsSent_;
  if (p.sync) {
    env_.sendBulk(to, bytes);
  } else {
    env_.send(to, bytes);
  }
}

void Node::sendToAddress(kj::StringPtr address, Packet p) {
  auto bytes = seal(p);
  bytesSent_ += bytes.size() + config_.sealOverheadBytes;
  ++packetsSent_;
  env_.sendToAddress(address, bytes);
}

void Node::receive(kj::ArrayPtr<const kj::byte> datagram) {
  KJ_IF_MAYBE (p, decodePacket(datagram)) {
    const Member* sender = membership_.members().find(p->sender);
    // A packet from a sender's earlier life (delayed in the network) says
    // nothing about the node now.
    if (sender != nullptr && sender->generation > p->senderGeneration) return;
    membership_.receive(p->sender, *p);
    dissemination_.receive(p->sender, *p);
    if (p->wantSync) {
      Stream out(*this, p->sender);
      membership_.appendState(out);
      dissemination_.appendState(out);
    }
  }
  rearm();
}

void Node::memberChanged(const Member& m, MemberState previous, bool isNew) {
  // A new life's capacity is unknown until it says; the old one's is void.
  if (isNew) dissemination_.forget(m.id, m.generation);
  if (listener_ != nullptr) listener_->memberChanged(m, previous, isNew);
}

void Node::memberReaped(NodeId id) {
  dissemination_.forget(id);
}

void Node::capacityChanged(const CapacityRecord& record) {
  if (listener_ != nullptr) listener_->capacityChanged(record);
}

}  // namespace nodeagent::cluster
