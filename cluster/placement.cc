#include "cluster/placement.h"

#include <algorithm>
#include <cmath>

#include "cluster/node.h"

namespace nodeagent::cluster {

// ---- Admission ----

Admission::Admission(Resources capacity, NodeState base, kj::Maybe<Publish> publish)
    : capacity_(capacity), base_(kj::mv(base)), publish_(kj::mv(publish)) {}

Resources Admission::free() const {
  return Resources{capacity_.cpuMillis - used_.cpuMillis, capacity_.memoryBytes - used_.memoryBytes,
                   capacity_.slots - used_.slots};
}

size_t Admission::pending() const {
  size_t n = 0;
  for (auto& [id, e] : entries_) n += e.leaseEndNs != INT64_MAX;
  return n;
}

kj::Maybe<ReservationId> Admission::reserve(const Resources& request, int64_t leaseNs,
                                            int64_t nowNs) {
  bool changed = expire(nowNs) > 0;
  if (!request.fitsIn(free())) {
    if (changed) publish();
    return nullptr;
  }
  ReservationId id = next_++;
  int64_t end = leaseNs >= INT64_MAX - nowNs ? INT64_MAX - 1 : nowNs + leaseNs;
  entries_.emplace(id, Entry{request, end});
  used_.cpuMillis += request.cpuMillis;
  used_.memoryBytes += request.memoryBytes;
  used_.slots += request.slots;
  publish();
  return id;
}

bool Admission::commit(ReservationId id, int64_t nowNs) {
  if (expire(nowNs) > 0) publish();
  auto it = entries_.find(id);
  if (it == entries_.end()) return false;
  it->second.leaseEndNs = INT64_MAX;
  return true;
}

bool Admission::release(ReservationId id, int64_t nowNs) {
  expire(nowNs);
  auto it = entries_.find(id);
  if (it == entries_.end()) return false;
  used_.cpuMillis -= it->second.held.cpuMillis;
  used_.memoryBytes -= it->second.held.memoryBytes;
  used_.slots -= it->second.held.slots;
  entries_.erase(it);
  publish();
  return true;
}

size_t Admission::expire(int64_t nowNs) {
  size_t n = 0;
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (it->second.leaseEndNs <= nowNs) {
      used_.cpuMillis -= it->second.held.cpuMillis;
      used_.memoryBytes -= it->second.held.memoryBytes;
      used_.slots -= it->second.held.slots;
      it = entries_.erase(it);
      ++n;
    } else {
      ++it;
    }
  }
  return n;
}

void Admission::setBase(NodeState base) {
  if (base == base_) return;
  base_ = kj::mv(base);
  publish();
}

kj::Maybe<Resources> Admission::held(ReservationId id, int64_t nowNs) {
  if (expire(nowNs) > 0) publish();
  auto it = entries_.find(id);
  if (it == entries_.end()) return nullptr;
  return it->second.held;
}

void Admission::publish() {
  KJ_IF_MAYBE (p, publish_) {
    NodeState s = base_.clone();
    Resources f = free();
    s.freeCpuMillis = f.cpuMillis;
    s.freeMemoryBytes = f.memoryBytes;
    s.freeSlots = f.slots;
    (*p)(kj::mv(s));
  }
}

// ---- Placer ----

namespace {

bool listed(const CapacityRecord& r, bool volumes, kj::StringPtr name) {
  if (name.size() == 0 || r.names == nullptr) return false;
  auto& list = volumes ? r.names->volumes : r.names->warmTemplates;
  for (auto& n : list)
    if (n == name) return true;
  return false;
}

}  // namespace

struct Placer::Attempt {
  PlacementSpec spec;
  kj::Function<void(Result)> done;
  uint32_t sample;
  uint32_t attempts = 0;
  std::vector<NodeId> refused;
};

Placer::Placer(Node& node, ReservationChannel& channel, kj::Function<uint64_t()> random,
               kj::Function<int64_t()> nowNs, Options options)
    : node_(node),
      channel_(channel),
      random_(kj::mv(random)),
      now_(kj::mv(nowNs)),
      options_(options) {}

void Placer::fold(NodeId node, const Resources& free) {
  folded_[node] = Folded{free, now_() + options_.refusalMemoryNs};
}

double Placer::score(const Candidate& c, const PlacementSpec& spec) const {
  double copies = HUGE_VAL;
  auto ratio = [&](double have, double need) {
    if (need > 0) copies = std::min(copies, have / need);
  };
  ratio(c.free.cpuMillis, spec.need.cpuMillis);
  ratio(double(c.free.memoryBytes), double(spec.need.memoryBytes));
  ratio(c.free.slots, spec.need.slots);
  if (copies == HUGE_VAL) copies = double(c.free.slots) + 1;  // a spec that needs nothing
  double s = copies;
  if (c.warm) s *= 1 + options_.warmBonus;
  if (c.volume) s *= 1 + options_.volumeBonus;
  return s;
}

std::vector<Placer::Candidate> Placer::candidates(const PlacementSpec& spec) {
  int64_t now = now_();
  std::vector<Candidate> out;
  auto& members = node_.membership().members();
  for (auto& r : node_.dissemination().records()) {
    if (!r.healthy || r.draining) continue;
    const Member* m = members.find(r.owner);
    if (r.owner != node_.id() &&
        (m == nullptr || m->state != MemberState::kAlive || m->generation != r.generation)) {
      continue;
    }
    Resources free{r.freeCpuMillis, r.freeMemoryBytes, r.freeSlots};
    auto f = folded_.find(r.owner);
    if (f != folded_.end()) {
      if (f->second.untilNs <= now) {
        folded_.erase(f);
      } else {
        free.cpuMillis = std::min(free.cpuMillis, f->second.free.cpuMillis);
        free.memoryBytes = std::min(free.memoryBytes, f->second.free.memoryBytes);
        free.slots = std::min(free.slots, f->second.free.slots);
      }
    }
    if (!spec.need.fitsIn(free)) continue;
    out.push_back(Candidate{r.owner, free, listed(r, false, spec.templateName),
                            listed(r, true, spec.volume)});
  }
  return out;
}

void Placer::place(const PlacementSpec& spec, kj::Function<void(Result)> done) {
  auto a = kj::heap<Attempt>();
  a->spec = spec;
  a->done = kj::mv(done);
  a->sample = std::max<uint32_t>(options_.firstSample, 1);
  attempt(kj::mv(a));
}

void Placer::attempt(kj::Own<Attempt> a) {
  std::vector<Candidate> all = candidates(a->spec);
  std::erase_if(all, [&](const Candidate& c) {
    return std::find(a->refused.begin(), a->refused.end(), c.id) != a->refused.end();
  });
  if (all.empty() || a->attempts >= options_.maxAttempts) {
    Result r;
    r.attempts = a->attempts;
    r.sample = a->attempts == 0 ? 0 : a->sample / 2;
    auto done = kj::mv(a->done);
    done(r);
    return;
  }
  // Weighted sampling without replacement (Efraimidis-Spirakis: the k
  // largest u^(1/w)), then the best score in the sample.
  struct Keyed {
    double key;
    double score;
    size_t index;
  };
  std::vector<Keyed> keyed;
  keyed.reserve(all.size());
  for (size_t i = 0; i < all.size(); ++i) {
    double w = score(all[i], a->spec);
    double u = (double(random_() >> 11) + 0.5) * 0x1.0p-53;  // (0, 1)
    keyed.push_back(Keyed{std::log(u) / w, w, i});
  }
  size_t k = std::min<size_t>(a->sample, keyed.size());
  std::partial_sort(keyed.begin(), keyed.begin() + ptrdiff_t(k), keyed.end(),
                    [](const Keyed& x, const Keyed& y) { return x.key > y.key; });
  auto best = std::max_element(keyed.begin(), keyed.begin() + ptrdiff_t(k),
                               [](const Keyed& x, const Keyed& y) { return x.score < y.score; });
  NodeId target = all[best->index].id;
  ++a->attempts;
  Resources need = a->spec.need;
  channel_.reserve(target, need, options_.leaseNs,
                   [this, target, owned = kj::mv(a)](ReservationChannel::Reply reply) mutable {
                     fold(target, reply.free);
                     if (reply.granted) {
                       Result r;
                       r.placed = true;
                       r.node = target;
                       r.id = reply.id;
                       r.attempts = owned->attempts;
                       r.sample = owned->sample;
                       auto done = kj::mv(owned->done);
                       done(r);
                       return;
                     }
                     owned->refused.push_back(target);
                     owned->sample *= 2;
                     attempt(kj::mv(owned));
                   });
}

}  // namespace nodeagent::cluster
