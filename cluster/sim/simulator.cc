#include "cluster/sim/simulator.h"

#include <stdlib.h>

#include <algorithm>

namespace nodeagent::cluster::sim {

class Simulator::NodeEnv final : public Env, public Node::Listener {
 public:
  NodeEnv(Simulator& sim, uint32_t index, uint64_t seed) : sim_(sim), index_(index), rng_(seed) {}

  int64_t nowNs() override { return sim_.now_; }
  void send(NodeId to, kj::ArrayPtr<const kj::byte> packet) override {
    auto it = sim_.index_.find(to);
    if (it != sim_.index_.end()) sim_.deliver(index_, it->second, packet);
  }
  void sendToAddress(kj::StringPtr address, kj::ArrayPtr<const kj::byte> packet) override {
    if (!address.startsWith("sim:")) return;
    size_t i = strtoull(address.begin() + 4, nullptr, 10);
    if (i < sim_.slots_.size()) sim_.deliver(index_, uint32_t(i), packet);
  }
  void wakeAt(int64_t atNs) override {
    sim_.slots_[index_].armedAt = atNs;
    sim_.push(atNs, atNs, index_, kWake, 0);
  }
  uint64_t random() override { return rng_.next(); }
  kj::String addressOf(NodeId node) override {
    auto it = sim_.index_.find(node);
    return it == sim_.index_.end() ? kj::str() : kj::str("sim:", it->second);
  }

  void memberChanged(const Member& m, MemberState previous, bool) override {
    if (sim_.observer_ != nullptr) sim_.observer_->memberChanged(index_, m, previous);
  }
  void capacityChanged(const CapacityRecord& r) override {
    if (sim_.observer_ != nullptr) sim_.observer_->capacityChanged(index_, r);
  }

 private:
  Simulator& sim_;
  uint32_t index_;
  Prng rng_;
};

Simulator::Simulator(uint64_t seed, const Config& config, Observer* observer)
    : config_(config), observer_(observer), seed_(seed), rng_(seed) {}

Simulator::~Simulator() {
  // Nodes first: their destructors must not outlive their Envs.
  for (auto& s : slots_) s.node = nullptr;
}

kj::Maybe<size_t> Simulator::indexOf(NodeId id) const {
  auto it = index_.find(id);
  if (it == index_.end()) return nullptr;
  return size_t(it->second);
}

size_t Simulator::newSlot() {
  size_t i = slots_.size();
  slots_.emplace_back();
  uint64_t s = seed_ ^ (0x5bd1e995ull * (i + 1));
  NodeId id;
  do {
    id = splitmix64(s);  // random-looking ids, as a real fleet's would be
  } while (id == 0 || index_.count(id) != 0);
  slots_[i].id = id;
  index_.emplace(id, uint32_t(i));
  return i;
}

void Simulator::boot(size_t i, const NodeState& initial) {
  (void)initial;
  Slot& s = slots_[i];
  // A generation is the boot time: it grows across restarts.
  s.generation = std::max(s.generation + 1, uint64_t(now_) + 1);
  s.armedAt = INT64_MAX;
  uint64_t seed = seed_ ^ (s.id * 0x9e3779b97f4a7c15ull) ^ s.generation;
  s.env = kj::heap<NodeEnv>(*this, uint32_t(i), seed);
  s.node = kj::heap<Node>(*s.env, config_, s.id, s.generation, kj::str("sim:", i), s.env.get());
}

size_t Simulator::addConvergedFleet(size_t n, const NodeState& initial) {
  size_t first = slots_.size();
  for (size_t k = 0; k < n; ++k) newSlot();
  std::vector<Member> members;
  for (size_t i = first; i < slots_.size(); ++i) {
    Slot& s = slots_[i];
    s.generation = std::max(s.generation + 1, uint64_t(now_) + 1);
    members.push_back(Member{s.id, s.generation, 0, MemberState::kAlive});
  }
  std::sort(members.begin(), members.end(),
            [](const Member& a, const Member& b) { return a.id < b.id; });
  for (size_t i = first; i < slots_.size(); ++i) {
    slots_[i].generation -= 1;  // boot() adds it back
    boot(i, initial);
    Node& node = *slots_[i].node;
    node.membership().bootstrap(kj::arrayPtr(members.data(), members.size()));
    for (auto& m : members) {
      node.dissemination().bootstrap(Delta{m.id, m.generation, 1, initial.clone()});
    }
  }
  for (size_t i = first; i < slots_.size(); ++i) slots_[i].node->start();
  return first;
}

size_t Simulator::addJoiningNode(kj::ArrayPtr<const size_t> seeds, const NodeState& initial) {
  size_t i = newSlot();
  restart(i, seeds, initial);
  return i;
}

void Simulator::restart(size_t i, kj::ArrayPtr<const size_t> seeds, const NodeState& initial) {
  if (up(i)) crash(i);
  boot(i, initial);
  Node& node = *slots_[i].node;
  node.start();
  node.setLocalState(initial.clone());
  kj::Vector<kj::String> addresses;
  for (auto s : seeds) addresses.add(kj::str("sim:", s));
  kj::Vector<kj::StringPtr> ptrs;
  for (auto& a : addresses) ptrs.add(a);
  node.join(ptrs);
}

void Simulator::crash(size_t i) {
  Slot& s = slots_[i];
  if (s.node.get() == nullptr) return;
  s.bytesFromPastLives += s.node->bytesSent();
  s.node = nullptr;
  s.env = nullptr;
  s.stalledUntil = 0;
  s.armedAt = INT64_MAX;
}

void Simulator::stall(size_t i, int64_t durationNs) {
  slots_[i].stalledUntil = std::max(slots_[i].stalledUntil, now_ + durationNs);
}

uint64_t Simulator::bytesSent() const {
  uint64_t total = 0;
  for (auto& s : slots_) total += s.bytesFromPastLives + (s.node ? s.node->bytesSent() : 0);
  return total;
}

void Simulator::at(int64_t atNs, kj::Function<void()> fn) {
  actions_.add(kj::mv(fn));
  push(atNs, atNs, 0, kAction, uint32_t(actions_.size() - 1));
}

void Simulator::push(int64_t at, int64_t due, uint32_t target, Kind kind, uint32_t payload) {
  queue_.push(Event{at, due, seq_++, target, kind, payload});
}

uint32_t Simulator::storePacket(kj::Array<kj::byte> bytes) {
  if (!freePackets_.empty()) {
    uint32_t i = freePackets_.back();
    freePackets_.pop_back();
    packets_[i] = kj::mv(bytes);
    return i;
  }
  packets_.push_back(kj::mv(bytes));
  return uint32_t(packets_.size() - 1);
}

void Simulator::deliver(uint32_t from, uint32_t to, kj::ArrayPtr<const kj::byte> bytes) {
  if (slots_[from].partition != slots_[to].partition ||
      (network_.loss > 0 && rng_.unit() < network_.loss)) {
    ++dropped_;
    return;
  }
  int64_t at = now_ + rng_.between(network_.minDelayNs, network_.maxDelayNs);
  push(at, at, to, kDeliver, storePacket(kj::heapArray(bytes)));
}

void Simulator::runEvent(const Event& e) {
  if (e.kind == kAction) {
    KJ_IF_MAYBE (fn, actions_[e.payload]) {
      auto f = kj::mv(*fn);
      actions_[e.payload] = nullptr;
      f();
    }
    return;
  }
  Slot& s = slots_[e.target];
  if (s.node.get() == nullptr) {
    if (e.kind == kDeliver) {
      packets_[e.payload] = nullptr;
      freePackets_.push_back(e.payload);
    }
    return;
  }
  if (s.stalledUntil > e.at) {
    push(s.stalledUntil, e.due, e.target, e.kind, e.payload);  // the backlog, in order
    return;
  }
  if (e.kind == kWake) {
    if (s.armedAt != e.due) return;  // superseded by a later wakeAt
    s.armedAt = INT64_MAX;
    s.node->wake();
  } else {
    auto bytes = kj::mv(packets_[e.payload]);
    freePackets_.push_back(e.payload);
    ++delivered_;
    s.node->receive(bytes);
  }
}

void Simulator::runUntil(int64_t ns) {
  while (!queue_.empty() && queue_.top().at <= ns) {
    Event e = queue_.top();
    queue_.pop();
    now_ = e.at;
    ++events_;
    runEvent(e);
  }
  now_ = std::max(now_, ns);
}

}  // namespace nodeagent::cluster::sim
