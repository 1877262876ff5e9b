#include "cluster/dissemination.h"

#include <algorithm>

#include "cluster/codec.h"

namespace nodeagent::cluster {
namespace {

bool newerThan(uint64_t gen, uint64_t version, uint64_t otherGen, uint64_t otherVersion) {
  return gen > otherGen || (gen == otherGen && version > otherVersion);
}
bool newerThan(uint64_t gen, uint64_t version, const CapacityRecord& r) {
  return newerThan(gen, version, r.generation, r.version);
}

// How far behind a peer at (gen, version) is on `r`: a different life is
// further behind than any number of versions.
uint64_t behind(const CapacityRecord& r, uint64_t gen, uint64_t version) {
  if (gen != r.generation) return (uint64_t(1) << 62) + r.version;
  return r.version - version;
}

CapacityRecord toRecord(const Delta& d) {
  CapacityRecord r;
  r.owner = d.owner;
  r.generation = d.generation;
  r.version = d.version;
  r.freeMemoryBytes = d.state.freeMemoryBytes;
  r.freeDiskBytes = d.state.freeDiskBytes;
  r.freeCpuMillis = d.state.freeCpuMillis;
  r.freeSlots = d.state.freeSlots;
  r.healthy = d.state.healthy;
  r.draining = d.state.draining;
  if (!d.state.warmTemplates.empty() || !d.state.volumes.empty()) {
    auto names = std::make_unique<CapacityRecord::Names>();
    for (auto& t : d.state.warmTemplates) names->warmTemplates.add(kj::str(t));
    for (auto& v : d.state.volumes) names->volumes.add(kj::str(v));
    r.names = kj::mv(names);
  }
  return r;
}

}  // namespace

NodeState CapacityRecord::state() const {
  NodeState s;
  s.freeCpuMillis = freeCpuMillis;
  s.freeMemoryBytes = freeMemoryBytes;
  s.freeDiskBytes = freeDiskBytes;
  s.freeSlots = freeSlots;
  s.healthy = healthy;
  s.draining = draining;
  if (names != nullptr) {
    for (auto& t : names->warmTemplates) s.warmTemplates.add(kj::str(t));
    for (auto& v : names->volumes) s.volumes.add(kj::str(v));
  }
  return s;
}

Dissemination::Dissemination(Env& env, const Config& config, TimerQueue& timers,
                             BroadcastQueue& broadcasts, Outbox& outbox, Listener& listener,
                             NodeId self, uint64_t generation, PeerPicker peers,
                             MemberFilter isMember)
    : env_(env),
      config_(config),
      timers_(timers),
      broadcasts_(broadcasts),
      outbox_(outbox),
      listener_(listener),
      self_(self),
      generation_(generation),
      peers_(kj::mv(peers)),
      isMember_(kj::mv(isMember)) {}

size_t Dissemination::budget() const {
  return config_.packetBudgetBytes - config_.sealOverheadBytes - kPacketOverheadBytes -
         2 * kListOverheadBytes - 24;
}

size_t Dissemination::lowerBound(NodeId owner) const {
  return std::lower_bound(records_.begin(), records_.end(), owner,
                          [](const CapacityRecord& r, NodeId id) { return r.owner < id; }) -
         records_.begin();
}

kj::Maybe<const CapacityRecord&> Dissemination::find(NodeId owner) const {
  size_t i = lowerBound(owner);
  if (i < records_.size() && records_[i].owner == owner) return records_[i];
  return nullptr;
}

kj::Maybe<Delta> Dissemination::delta(NodeId owner) const {
  KJ_IF_MAYBE (r, find(owner)) {
    return Delta{r->owner, r->generation, r->version, r->state()};
  }
  return nullptr;
}

void Dissemination::start() {
  timers_.add(env_.nowNs() + int64_t(env_.random() % uint64_t(config_.digestIntervalNs)),
              [this]() { digestTick(); });
}

void Dissemination::setLocal(NodeState state) {
  apply(Delta{self_, generation_, ++version_, kj::mv(state)}, true);
}

void Dissemination::bootstrap(const Delta& d) {
  if (d.owner == self_) version_ = std::max(version_, d.version);
  size_t i = lowerBound(d.owner);
  if (i < records_.size() && records_[i].owner == d.owner) {
    records_[i] = toRecord(d);
  } else {
    records_.insert(records_.begin() + i, toRecord(d));
  }
}

bool Dissemination::apply(const Delta& d, bool gossip) {
  if (d.owner == 0) return false;
  if (d.owner == self_ && d.generation != generation_) return false;  // our old life
  size_t i = lowerBound(d.owner);
  bool exists = i < records_.size() && records_[i].owner == d.owner;
  if (exists && !newerThan(d.generation, d.version, records_[i])) return false;
  if (exists) {
    records_[i] = toRecord(d);
  } else {
    records_.insert(records_.begin() + i, toRecord(d));
  }
  listener_.capacityChanged(records_[i]);
  if (gossip) broadcasts_.queueCapacity(d.owner);
  return true;
}

void Dissemination::forget(NodeId owner, uint64_t belowGeneration) {
  size_t i = lowerBound(owner);
  if (i < records_.size() && records_[i].owner == owner &&
      records_[i].generation < belowGeneration) {
    records_.erase(records_.begin() + i);
    broadcasts_.dropCapacity(owner);
  }
}

void Dissemination::appendState(Outbox::Stream& out) const {
  for (auto& r : records_) out.add(Delta{r.owner, r.generation, r.version, r.state()});
}

void Dissemination::digestTick() {
  timers_.add(env_.nowNs() + config_.digestIntervalNs, [this]() { digestTick(); });
  auto peers = peers_(1);
  if (peers.empty() || records_.empty()) return;
  // One packet's worth of our records, continuing where the last slice
  // ended; the range tells the peer which owners we listed all of.
  Digest d;
  d.rangeStart = cursor_;
  size_t room = budget();
  size_t i = lowerBound(cursor_);
  for (; i < records_.size(); ++i) {
    DigestEntry e{records_[i].owner, records_[i].generation, records_[i].version};
    size_t need = estimateBytes(e);
    if (need > room) break;
    room -= need;
    d.entries.add(e);
  }
  if (i >= records_.size()) {
    d.rangeEnd = UINT64_MAX;
    cursor_ = 0;
  } else {
    d.rangeEnd = records_[i].owner - 1;
    cursor_ = records_[i].owner;
  }
  Packet p;
  p.digests.add(kj::mv(d));
  outbox_.send(peers[0], kj::mv(p));
}

Packet Dissemination::answer(const Digest& digest) const {
  Packet reply;
  reply.sync = true;
  struct Candidate {
    uint64_t behind;
    size_t index;
  };
  kj::Vector<Candidate> offer;
  Digest request;
  request.request = true;
  size_t room = budget();

  if (digest.request) {
    for (auto& e : digest.entries) {
      KJ_IF_MAYBE (r, find(e.owner)) {
        if (newerThan(r->generation, r->version, e.generation, e.version))
          offer.add(Candidate{behind(*r, e.generation, e.version), lowerBound(e.owner)});
      }
    }
  } else {
    // Entries arrive sorted by owner; look each of ours in the range up.
    auto& entries = digest.entries;
    auto findEntry = [&](NodeId owner) -> const DigestEntry* {
      auto it = std::lower_bound(entries.begin(), entries.end(), owner,
                                 [](const DigestEntry& e, NodeId id) { return e.owner < id; });
      return it != entries.end() && it->owner == owner ? it : nullptr;
    };
    bool sorted = std::is_sorted(entries.begin(), entries.end(),
                                 [](auto& a, auto& b) { return a.owner < b.owner; });
    if (!sorted) return reply;  // not from us; ignore
    for (size_t i = lowerBound(digest.rangeStart);
         i < records_.size() && records_[i].owner <= digest.rangeEnd; ++i) {
      const CapacityRecord& r = records_[i];
      const DigestEntry* e = findEntry(r.owner);
      if (e == nullptr) {
        offer.add(Candidate{behind(r, 0, 0), i});
      } else if (newerThan(r.generation, r.version, e->generation, e->version)) {
        offer.add(Candidate{behind(r, e->generation, e->version), i});
      }
    }
    // Ask for what the peer has newer, within half the packet.
    size_t askRoom = room / 2;
    for (auto& e : entries) {
      if (e.owner == self_) continue;
      auto mine = find(e.owner);
      DigestEntry want{e.owner, 0, 0};
      KJ_IF_MAYBE (r, mine) {
        if (!newerThan(e.generation, e.version, *r)) continue;
        want = DigestEntry{e.owner, r->generation, r->version};
      } else if (!isMember_(e.owner)) {
        continue;  // we would drop its record anyway
      }
      size_t need = estimateBytes(want);
      if (need > askRoom) break;
      askRoom -= need;
      room -= need;
      request.entries.add(want);
    }
  }
  // The owners the peer is most behind on first.
  std::sort(offer.begin(), offer.end(),
            [](const Candidate& a, const Candidate& b) { return a.behind > b.behind; });
  for (auto& c : offer) {
    const CapacityRecord& r = records_[c.index];
    Delta d{r.owner, r.generation, r.version, r.state()};
    size_t need = estimateBytes(d);
    if (need > room) continue;  // a smaller record may still fit
    room -= need;
    reply.deltas.add(kj::mv(d));
  }
  if (!request.entries.empty()) reply.digests.add(kj::mv(request));
  return reply;
}

void Dissemination::receive(NodeId sender, const Packet& p) {
  for (auto& d : p.deltas) {
    if (d.owner != self_ && !isMember_(d.owner)) continue;
    apply(d, !p.sync);
  }
  for (auto& digest : p.digests) {
    Packet reply = answer(digest);
    if (!reply.deltas.empty() || !reply.digests.empty()) outbox_.send(sender, kj::mv(reply));
  }
}

}  // namespace nodeagent::cluster
