#include "cluster/sim/placement_sim.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include <kj/debug.h>

namespace nodeagent::cluster::sim {
namespace {

constexpr uint64_t kMiB = uint64_t(1) << 20;

// Independent of every Admission: sums what was granted per node.
struct Auditor {
  explicit Auditor(size_t n, Resources capacity) : capacity(capacity), held(n), over(n) {}
  void granted(size_t node, const Resources& r) {
    Resources& h = held[node];
    h.cpuMillis += r.cpuMillis;
    h.memoryBytes += r.memoryBytes;
    h.slots += r.slots;
    total.cpuMillis += r.cpuMillis;
    total.memoryBytes += r.memoryBytes;
    total.slots += r.slots;
    if (!h.fitsIn(capacity)) over[node] = true;
  }
  double utilization() const {
    double n = double(held.size());
    return std::max({double(total.cpuMillis) / (n * capacity.cpuMillis),
                     double(total.memoryBytes) / (n * double(capacity.memoryBytes)),
                     double(total.slots) / (n * capacity.slots)});
  }
  Resources capacity;
  Resources total;
  std::vector<Resources> held;
  std::vector<bool> over;
};

class Phase;

// One node's way to its peers: each message takes a network delay.
class Channel final : public ReservationChannel {
 public:
  Channel(Phase& phase, size_t from) : phase_(phase), from_(from) {}
  void reserve(NodeId target, const Resources& request, int64_t leaseNs,
               kj::Function<void(Reply)> done) override;
  void commit(NodeId target, ReservationId id) override;

 private:
  Phase& phase_;
  size_t from_;
};

class Phase {
 public:
  Phase(Simulator& sim, const PlacementOptions& o)
      : sim_(sim), o_(o), auditor_(sim.size(), o.capacity) {
    for (uint32_t t = 0; t < o.templates; ++t) names_.add(kj::str("template-", t));
    size_t n = sim.size();
    warm_.resize(n);
    for (size_t i = 0; i < n; ++i) {
      NodeState base;
      base.freeDiskBytes = uint64_t(1) << 40;
      if (o.templates > 0) {
        warm_[i] = uint32_t(sim.random().below(o.templates));
        base.warmTemplates.add(kj::str(names_[warm_[i]]));
      }
      Node& node = sim.node(i);
      ledgers_.push_back(std::make_unique<Admission>(
          o.capacity, kj::mv(base),
          Admission::Publish([&node](NodeState s) { node.setLocalState(kj::mv(s)); })));
      channels_.push_back(std::make_unique<Channel>(*this, i));
      placers_.push_back(std::make_unique<Placer>(
          node, *channels_.back(), [&sim]() { return sim.random().next(); },
          [&sim]() { return sim.now(); }, o.placer));
    }
  }

  PlacementResult run() {
    // Advertise the warm pools and let them spread before placing.
    for (auto& l : ledgers_) l->advertise();
    sim_.runUntil(sim_.now() + 3'000'000'000);
    start_ = sim_.now();
    for (size_t i = 0; i < sim_.size(); ++i) {
      sim_.at(start_ + sim_.random().between(o_.thinkMinNs, o_.thinkMaxNs),
              [this, i]() { next(i); });
    }
    int64_t step = 100'000'000;
    for (int64_t t = start_; t < start_ + o_.limitNs; t += step) {
      sim_.runUntil(t + step);
      if (stopped_ && inFlight_ == 0) break;
    }
    sim_.runUntil(sim_.now() + 100'000'000);  // the last commits land

    PlacementResult r = result_;
    r.success = r.placements == 0 ? 0 : double(r.placed) / double(r.placements);
    r.utilization = auditor_.utilization();
    for (size_t i = 0; i < sim_.size(); ++i) {
      r.overcommittedNodes += auditor_.over[i];
      r.ledgerViolations += !ledgers_[i]->used().fitsIn(o_.capacity);
    }
    if (!latencies_.empty()) {
      std::sort(latencies_.begin(), latencies_.end());
      auto pick = [&](double p) {
        size_t k = size_t(std::ceil(p * double(latencies_.size())));
        return double(latencies_[std::clamp<size_t>(k, 1, latencies_.size()) - 1]) / 1e6;
      };
      r.latencyP50Ms = pick(0.5);
      r.latencyP99Ms = pick(0.99);
      r.attemptsMean = double(attemptsSum_) / double(latencies_.size());
    }
    r.simulatedS = double(sim_.now() - start_) / 1e9;
    return r;
  }

  // Called by Channel.
  void reserveAt(size_t from, NodeId target, const Resources& request, int64_t leaseNs,
                 kj::Function<void(ReservationChannel::Reply)> done) {
    ++result_.reservationsAsked;
    size_t to = KJ_ASSERT_NONNULL(sim_.indexOf(target), "reservation for an unknown node");
    (void)from;
    sim_.at(sim_.now() + delay(), [this, to, request, leaseNs, done = kj::mv(done)]() mutable {
      ReservationChannel::Reply reply;
      KJ_IF_MAYBE (id, ledgers_[to]->reserve(request, leaseNs, sim_.now())) {
        reply.granted = true;
        reply.id = *id;
        auditor_.granted(to, request);
      } else {
        ++result_.refusals;
      }
      reply.free = ledgers_[to]->free();
      sim_.at(sim_.now() + delay(), [done = kj::mv(done), reply]() mutable { done(reply); });
    });
  }
  void commitAt(NodeId target, ReservationId id) {
    KJ_IF_MAYBE (i, sim_.indexOf(target)) {
      size_t to = *i;
      sim_.at(sim_.now() + delay(), [this, to, id]() {
        if (!ledgers_[to]->commit(id, sim_.now())) ++result_.commitsLost;
      });
    }
  }

 private:
  int64_t delay() {
    return sim_.random().between(sim_.network().minDelayNs, sim_.network().maxDelayNs);
  }

  // A node's next placement, unless the fleet is full enough.
  void next(size_t i) {
    if (auditor_.utilization() >= o_.targetUtilization) {
      stopped_ = true;
      return;
    }
    if (sim_.now() >= start_ + o_.limitNs) return;
    // The seed's runtimes: a quarter, one or two vCPUs; 512 MiB or 2 GiB.
    static constexpr uint32_t kCpu[] = {250, 1000, 2000};
    static constexpr uint64_t kMem[] = {512 * kMiB, 2048 * kMiB};
    PlacementSpec spec;
    spec.need = Resources{kCpu[sim_.random().below(3)], kMem[sim_.random().below(2)], 1};
    uint32_t tmpl = o_.templates == 0 ? 0 : uint32_t(sim_.random().below(o_.templates));
    if (o_.templates > 0) spec.templateName = names_[tmpl];
    ++result_.placements;
    ++inFlight_;
    int64_t began = sim_.now();
    placers_[i]->place(spec, [this, i, began, tmpl](Placer::Result pr) {
      --inFlight_;
      latencies_.push_back(sim_.now() - began);
      attemptsSum_ += pr.attempts;
      result_.attemptsMax = std::max(result_.attemptsMax, pr.attempts);
      if (pr.placed) {
        ++result_.placed;
        KJ_IF_MAYBE (t, sim_.indexOf(pr.node)) {
          if (o_.templates > 0 && warm_[*t] == tmpl) ++result_.warmHits;
        }
        channels_[i]->commit(pr.node, pr.id);
      }
      // A failure can answer without any message: back off so that a full
      // fleet cannot spin at one instant.
      int64_t pause = sim_.random().between(o_.thinkMinNs, o_.thinkMaxNs);
      if (!pr.placed) pause += 10'000'000;
      sim_.at(sim_.now() + pause, [this, i]() { next(i); });
    });
  }

  Simulator& sim_;
  const PlacementOptions& o_;
  Auditor auditor_;
  kj::Vector<kj::String> names_;
  std::vector<uint32_t> warm_;
  std::vector<std::unique_ptr<Admission>> ledgers_;
  std::vector<std::unique_ptr<Channel>> channels_;
  std::vector<std::unique_ptr<Placer>> placers_;
  PlacementResult result_;
  std::vector<int64_t> latencies_;
  uint64_t attemptsSum_ = 0;
  uint64_t inFlight_ = 0;
  bool stopped_ = false;
  int64_t start_ = 0;
};

void Channel::reserve(NodeId target, const Resources& request, int64_t leaseNs,
                      kj::Function<void(Reply)> done) {
  phase_.reserveAt(from_, target, request, leaseNs, kj::mv(done));
}
void Channel::commit(NodeId target, ReservationId id) {
  phase_.commitAt(target, id);
}

}  // namespace

PlacementResult runPlacement(Simulator& sim, const PlacementOptions& options) {
  Phase phase(sim, options);
  return phase.run();
}

}  // namespace nodeagent::cluster::sim
