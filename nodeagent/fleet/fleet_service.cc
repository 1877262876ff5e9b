#include "nodeagent/fleet/fleet_service.h"

#include <sodium.h>
#include <sys/statvfs.h>
#include <sys/sysinfo.h>
#include <time.h>
#include <unistd.h>

#include <kj/debug.h>

#include <set>
#include <string>

#include "nodeagent/api_error.h"
#include "nodeagent/fleet/gossip_config.h"
#include "util/log.h"

namespace nodeagent::fleet {
namespace {

constexpr kj::Duration kRefreshInterval = 1 * kj::SECONDS;
constexpr kj::Duration kJoinRetry = 5 * kj::SECONDS;
constexpr kj::Duration kReserveTimeout = 1 * kj::SECONDS;
constexpr kj::Duration kDeliverTimeout = 2 * kj::SECONDS;
constexpr kj::Duration kLeaveLinger = 1 * kj::SECONDS;
constexpr uint64_t kDiskGranule = 64ull << 20;  // free disk is gossiped in these steps

int64_t monotonicNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// The fleet id of this node: a hash of the store's node id, so it is fixed
// for the life of the state dir.
cluster::NodeId fleetIdOf(kj::StringPtr storeNodeId) {
  uint64_t id = 0;
  crypto_generichash(reinterpret_cast<unsigned char*>(&id), sizeof(id),
                     reinterpret_cast<const unsigned char*>(storeNodeId.begin()),
                     storeNodeId.size(), nullptr, 0);
  return id == 0 ? 1 : id;
}

// A new generation per start that only grows: the wall clock at boot.
uint64_t newGeneration() {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000 + uint64_t(ts.tv_nsec);
}

kj::StringPtr stateName(cluster::MemberState s) {
  switch (s) {
    case cluster::MemberState::kAlive:
      return "alive";
    case cluster::MemberState::kSuspect:
      return "suspect";
    case cluster::MemberState::kDead:
      return "dead";
    case cluster::MemberState::kLeft:
      return "left";
  }
  return "unknown";
}

// What one sandbox of `spec` holds of a node's capacity. Its disk is RAM too
// (a tmpfs, within its memory limit).
cluster::Resources needOf(api::SandboxSpec::Reader spec) {
  return cluster::Resources{spec.getCpuSustainedMillis(),
                            spec.getMemoryBytes() + spec.getDiskBytes(), 1};
}

cluster::Resources capacityOf(config::Config::Reader config) {
  auto c = config.getCluster().getCapacity();
  cluster::Resources r;
  r.cpuMillis = c.getCpuMillis();
  if (r.cpuMillis == 0) r.cpuMillis = uint32_t(sysconf(_SC_NPROCESSORS_ONLN)) * 1000;
  r.memoryBytes = c.getMemoryBytes();
  if (r.memoryBytes == 0) {
    struct sysinfo info;
    KJ_SYSCALL(sysinfo(&info));
    uint64_t total = uint64_t(info.totalram) * info.mem_unit;
    r.memoryBytes = total > (2ull << 30) ? total - (1ull << 30) : total / 2;
  }
  r.slots = c.getSlots();
  if (r.slots == 0) r.slots = config.getMaxSandboxes();
  return r;
}

kj::String resourcesText(const cluster::Resources& r) {
  return kj::str("cpuMillis=", r.cpuMillis, " memoryBytes=", r.memoryBytes, " slots=", r.slots);
}

}  // namespace

// What other nodes may call. Every connection is mutually authenticated by
// the fleet's CA before this is reached.
class FleetService::PeerServer final : public Peer::Server {
 public:
  PeerServer(FleetService& fleet, kj::String actor) : fleet_(fleet), actor_(kj::mv(actor)) {}

  kj::Promise<void> deliver(DeliverContext context) override {
    for (auto packet : context.getParams().getPackets()) fleet_.transport_.receiveSealed(packet);
    return kj::READY_NOW;
  }

  kj::Promise<void> reserve(ReserveContext context) override {
    auto p = context.getParams();
    cluster::Resources request{p.getCpuMillis(), p.getMemoryBytes(), p.getSlots()};
    int64_t lease = int64_t(p.getLeaseMillis()) * 1'000'000;
    if (lease <= 0 || lease > fleet_.leaseNs_) lease = fleet_.leaseNs_;
    auto decided = fleet_.reserveHere(request, lease);
    auto reply = context.getResults().initReply();
    reply.setGranted(decided.granted);
    reply.setReservation(decided.id);
    reply.setFreeCpuMillis(decided.free.cpuMillis);
    reply.setFreeMemoryBytes(decided.free.memoryBytes);
    reply.setFreeSlots(decided.free.slots);
    return kj::READY_NOW;
  }

  kj::Promise<void> release(ReleaseContext context) override {
    fleet_.admission_->release(context.getParams().getReservation(), monotonicNs());
    return kj::READY_NOW;
  }

  kj::Promise<void> createReserved(CreateReservedContext context) override {
    auto p = context.getParams();
    auto actor = kj::str(actor_, " for ", p.getActor());
    return fleet_.supervisor_.create(p.getSpec(), actor, p.getReservation())
        .then([this, context, actor = kj::mv(actor)](kj::Own<SandboxRuntime> sandbox) mutable {
          auto results = context.getResults();
          results.setId(sandbox->id());
          results.setSandbox(newSandboxServer(fleet_.server_, kj::mv(sandbox), kj::mv(actor)));
        });
  }

 private:
  FleetService& fleet_;
  kj::String actor_;
};

void FleetService::ErrorLogger::taskFailed(kj::Exception&& e) {
  log::warn("fleet.task_failed", {{"error", e.getDescription().cStr()}});
}

FleetService::FleetService(ServerContext& server, config::Config::Reader config,
                           kj::TlsContext& tls)
    : server_(server),
      supervisor_(server.supervisor),
      port_(server.port),
      stateDir_(kj::str(config.getStateDir())),
      advertise_(kj::str(config.getCluster().getAdvertise().size() > 0
                             ? config.getCluster().getAdvertise()
                             : config.getCluster().getBind())),
      leaseNs_(int64_t(config.getCluster().getLeaseMillis()) * 1'000'000),
      gossipConfig_(gossipConfig(config.getCluster())),
      keys_(kj::heap<GossipKeys>(config.getCluster().getKeyFile().size() > 0
                                     ? kj::str(config.getCluster().getKeyFile())
                                     : kj::str(config.getStateDir(), "/gossip.keys"))),
      links_(server.port, tls, server.maxMessageBytes),
      transport_(server.port, config.getCluster().getBind(), *keys_,
                 [this](kj::StringPtr address, kj::Array<kj::byte> sealed) {
                   deliverBulk(address, kj::mv(sealed));
                 }),
      tasks_(errorLogger_) {
  auto cluster = config.getCluster();
  socklen_t len;
  auto advertised = parseHostPort(advertise_, &len);
  KJ_REQUIRE(advertised != nullptr, "cluster.advertise must be IP:PORT", advertise_);
  KJ_IF_MAYBE (a, advertised) {
    bool any = (a->ss_family == AF_INET &&
                reinterpret_cast<sockaddr_in*>(a)->sin_addr.s_addr == htonl(INADDR_ANY)) ||
               (a->ss_family == AF_INET6 &&
                IN6_IS_ADDR_UNSPECIFIED(&reinterpret_cast<sockaddr_in6*>(a)->sin6_addr));
    KJ_REQUIRE(!any, "cluster.bind is a wildcard address: set cluster.advertise", advertise_);
  }
  for (auto seed : cluster.getSeeds()) {
    KJ_REQUIRE(parseHostPort(seed, &len) != nullptr, "cluster.seeds entries must be IP:PORT", seed);
    if (seed != advertise_) seeds_.add(kj::str(seed));
  }
  KJ_REQUIRE(leaseNs_ > 0, "cluster.leaseMillis must be above 0");

  cluster::Node::Listener* nodeListener = this;
  cluster::ReservationChannel& channel = *this;
  node_ = kj::heap<cluster::Node>(transport_, gossipConfig_, fleetIdOf(supervisor_.nodeId()),
                                  newGeneration(), kj::str(advertise_), nodeListener);
  admission_ = kj::heap<cluster::Admission>(
      capacityOf(config), baseState(), cluster::Admission::Publish([this](cluster::NodeState s) {
        node_->setLocalState(kj::mv(s));
      }));
  placer_ = kj::heap<cluster::Placer>(
      *node_, channel, [this]() { return transport_.random(); }, []() { return monotonicNs(); },
      [this]() {
        cluster::Placer::Options o;
        o.leaseNs = leaseNs_;
        return o;
      }());
  listener_ = kj::heap<PeerListener>(port_, cluster.getBind(), tls, server.maxMessageBytes,
                                     [this](kj::String actor) -> Peer::Client {
                                       return kj::heap<PeerServer>(*this, kj::mv(actor));
                                     });
  log::info("fleet.member", {{"node", idText(node_->id()).cStr()},
                             {"address", advertise_.cStr()},
                             {"capacity", resourcesText(admission_->capacity()).cStr()}});
}

FleetService::~FleetService() noexcept(false) {
  supervisor_.clearCapacityGate();
}

kj::String FleetService::idText(cluster::NodeId id) {
  char hex[17];
  snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(id));
  return kj::str(hex);
}

kj::Promise<void> FleetService::run() {
  // Sandboxes the previous agent left running (adopted by now) hold
  // capacity already.
  supervisor_.setCapacityGate(*this);
  transport_.start(*node_);
  node_->start();
  admission_->advertise();
  if (seeds_.size() > 0) {
    auto seeds = KJ_MAP(s, seeds_)->kj::StringPtr {
      return s;
    };
    node_->join(seeds);
  }
  tasks_.add(refreshLoop());
  return listener_->run();
}

kj::Promise<void> FleetService::leave() {
  node_->leave();
  return port_.timer().afterDelay(kLeaveLinger);
}

cluster::NodeState FleetService::baseState() {
  cluster::NodeState s;
  struct statvfs fs;
  if (statvfs(stateDir_.cStr(), &fs) == 0) {
    uint64_t free = uint64_t(fs.f_bavail) * fs.f_frsize;
    s.freeDiskBytes = free / kDiskGranule * kDiskGranule;
  }
  for (auto& pool : supervisor_.warmPools()) {
    if (pool.idle > 0) s.warmTemplates.add(kj::str(pool.templateName));
  }
  s.healthy = true;
  s.draining = supervisor_.draining();
  return s;
}

kj::Promise<void> FleetService::refreshLoop() {
  return port_.timer().afterDelay(kRefreshInterval).then([this]() {
    admission_->expire(monotonicNs());
    admission_->setBase(baseState());
    // A seed we do not count as live (down when we started, or across a
    // partition that outlived the reaping, after which neither side would
    // ever probe the other again): ask it to (re)join us, now and then.
    int64_t now = monotonicNs();
    if (seeds_.size() > 0 && now - lastJoinNs_ >= kJoinRetry / kj::NANOSECONDS) {
      lastJoinNs_ = now;
      auto lost = unreachedSeeds();
      if (lost.size() > 0) node_->join(lost);
    }
    return refreshLoop();
  });
}

kj::Array<kj::StringPtr> FleetService::unreachedSeeds() {
  std::set<std::string> live;
  auto& table = node_->membership().members();
  for (size_t i = 0; i < table.size(); ++i) {
    const auto& m = table.at(i);
    if (m.live() && m.id != node_->id()) live.insert(transport_.addressOf(m.id).cStr());
  }
  kj::Vector<kj::StringPtr> out;
  for (auto& seed : seeds_) {
    if (live.count(seed.cStr()) == 0) out.add(seed);
  }
  return out.releaseAsArray();
}

void FleetService::deliverBulk(kj::StringPtr address, kj::Array<kj::byte> sealed) {
  auto request = links_.peer(address).deliverRequest();
  request.initPackets(1).set(0, sealed);
  auto delivered = request.send().ignoreResult().then([]() { return true; });
  auto bounded = delivered.exclusiveJoin(
      port_.timer().afterDelay(kDeliverTimeout).then([]() { return false; }));
  tasks_.add(bounded.then(
      [this, address = kj::str(address)](bool done) {
        if (!done) links_.drop(address);
      },
      [this, address = kj::str(address)](kj::Exception&& e) {
        log::debug("fleet.deliver_failed", {{"error", e.getDescription().cStr()}});
        links_.drop(address);
      }));
}

void FleetService::memberChanged(const cluster::Member& m, cluster::MemberState previous,
                                 bool isNew) {
  if (!isNew && m.state == previous) return;
  log::info("fleet.member_changed", {{"node", idText(m.id).cStr()},
                                     {"state", stateName(m.state).cStr()},
                                     {"was", isNew ? "new" : stateName(previous).cStr()},
                                     {"generation", m.generation}});
}

uint64_t FleetService::admit(api::SandboxSpec::Reader spec, uint64_t reservation) {
  auto need = needOf(spec);
  int64_t now = monotonicNs();
  if (reservation != 0) {
    KJ_IF_MAYBE (held, admission_->held(reservation, now)) {
      if (!need.fitsIn(*held)) {
        throwApiError(api::ErrorCode::INVALID_ARGUMENT,
                      "the spec needs more than its reservation holds");
      }
      admission_->commit(reservation, now);
      return reservation;
    }
    throwApiError(api::ErrorCode::UNAVAILABLE,
                  "the placement's reservation lapsed before the create; place it again");
  }
  KJ_IF_MAYBE (id, admission_->reserve(need, leaseNs_, now)) {
    admission_->commit(*id, now);
    return *id;
  }
  throwApiError(api::ErrorCode::LIMIT_EXCEEDED,
                kj::str("this node's capacity is taken (needs ", resourcesText(need), "; free ",
                        resourcesText(admission_->free()), "); place it on the fleet"));
}

void FleetService::release(uint64_t ticket) {
  if (ticket != 0) admission_->release(ticket, monotonicNs());
}

void FleetService::reserve(cluster::NodeId target, const cluster::Resources& request,
                           int64_t leaseNs, kj::Function<void(Reply)> done) {
  if (target == node_->id()) {
    // Our own ledger: decided now, answered in a later turn as a remote
    // answer would be (the placer does not expect re-entry).
    auto reply = reserveHere(request, leaseNs);
    tasks_.add(kj::evalLater([done = kj::mv(done), reply]() mutable { done(reply); }));
    return;
  }
  auto address = transport_.addressOf(target);
  if (address.size() == 0) {
    tasks_.add(kj::evalLater([done = kj::mv(done)]() mutable { done(Reply()); }));
    return;
  }
  auto req = links_.peer(address).reserveRequest();
  req.setCpuMillis(request.cpuMillis);
  req.setMemoryBytes(request.memoryBytes);
  req.setSlots(request.slots);
  req.setLeaseMillis(uint32_t(leaseNs / 1'000'000));
  auto answered = req.send().then(
      [](capnp::Response<Peer::ReserveResults>&& r) {
        auto reply = r.getReply();
        Reply out;
        out.granted = reply.getGranted();
        out.id = reply.getReservation();
        out.free = cluster::Resources{reply.getFreeCpuMillis(), reply.getFreeMemoryBytes(),
                                      reply.getFreeSlots()};
        return out;
      },
      [](kj::Exception&& e) {
        log::debug("fleet.reserve_failed", {{"error", e.getDescription().cStr()}});
        return Reply();
      });
  // An unreachable, failing or slow candidate counts as a refusal with
  // nothing free; a grant that arrives too late lapses on its own.
  auto bounded = answered.exclusiveJoin(
      port_.timer().afterDelay(kReserveTimeout).then([]() { return Reply(); }));
  tasks_.add(bounded.then([done = kj::mv(done)](Reply reply) mutable { done(reply); }));
}

cluster::ReservationChannel::Reply FleetService::reserveHere(const cluster::Resources& request,
                                                             int64_t leaseNs) {
  // A draining node grants nothing and reports nothing free.
  Reply reply;
  if (supervisor_.draining()) return reply;
  KJ_IF_MAYBE (id, admission_->reserve(request, leaseNs, monotonicNs())) {
    reply.granted = true;
    reply.id = *id;
  }
  reply.free = admission_->free();
  return reply;
}

void FleetService::commit(cluster::NodeId target, cluster::ReservationId id) {
  // The agent commits by creating under the reservation (createReserved).
  (void)target;
  (void)id;
}

kj::Promise<FleetService::Placed> FleetService::place(api::SandboxSpec::Reader spec,
                                                      kj::StringPtr actor) {
  auto record = supervisor_.resolveSpec(spec);  // throws for a bad spec, before any traffic
  auto filled = record->getRoot<state::SandboxRecord>().getSpec();
  auto need = needOf(filled);
  int64_t start = monotonicNs();
  auto paf = kj::newPromiseAndFulfiller<cluster::Placer::Result>();
  cluster::PlacementSpec placement{need, filled.getTemplate(), ""};
  placer_->place(placement, [fulfiller = kj::mv(paf.fulfiller)](cluster::Placer::Result r) mutable {
    fulfiller->fulfill(kj::mv(r));
  });
  return paf.promise.then([this, record = kj::mv(record), start, actor = kj::str(actor)](
                              cluster::Placer::Result r) mutable -> kj::Promise<Placed> {
    if (!r.placed) {
      throwApiError(api::ErrorCode::UNAVAILABLE,
                    kj::str("no node of the fleet has room for it (asked ", r.attempts, ")"));
    }
    uint64_t decisionNs = uint64_t(monotonicNs() - start);
    auto filled = record->getRoot<state::SandboxRecord>().getSpec();
    if (r.node == node_->id()) {
      auto node = r.node;
      auto attempts = r.attempts;
      return supervisor_.create(filled, actor, r.id)
          .then([this, actor = kj::mv(actor), node, attempts,
                 decisionNs](kj::Own<SandboxRuntime> sandbox) mutable {
            kj::String id = kj::str(sandbox->id());
            return Placed{newSandboxServer(server_, kj::mv(sandbox), kj::mv(actor)),
                          kj::mv(id),
                          node,
                          kj::str(advertise_),
                          attempts,
                          decisionNs};
          });
    }
    auto address = transport_.addressOf(r.node);
    auto req = links_.peer(address).createReservedRequest();
    req.setReservation(r.id);
    req.setSpec(filled);
    req.setActor(actor);
    auto node = r.node;
    auto attempts = r.attempts;
    return req.send().then([node, attempts, decisionNs, address = kj::mv(address)](
                               capnp::Response<Peer::CreateReservedResults>&& created) mutable {
      return Placed{created.getSandbox(),
                    kj::str(created.getId()),
                    node,
                    kj::mv(address),
                    attempts,
                    decisionNs};
    });
  });
}

void FleetService::members(api::Node::MembersResults::Builder results) {
  auto& table = node_->membership().members();
  auto out = results.initMembers(table.size());
  for (size_t i = 0; i < table.size(); ++i) {
    const auto& m = table.at(i);
    auto b = out[i];
    b.setNode(idText(m.id));
    b.setAddress(m.id == node_->id() ? kj::str(advertise_) : transport_.addressOf(m.id));
    b.setState(stateName(m.state));
    b.setGeneration(m.generation);
    b.setIncarnation(m.incarnation);
    b.setSelf(m.id == node_->id());
  }
}

void FleetService::capacity(api::Node::CapacityResults::Builder results) {
  auto& records = node_->dissemination().records();
  auto out = results.initNodes(records.size());
  for (size_t i = 0; i < records.size(); ++i) {
    const auto& r = records[i];
    auto b = out[i];
    b.setNode(idText(r.owner));
    b.setVersion(r.version);
    b.setFreeCpuMillis(r.freeCpuMillis);
    b.setFreeMemoryBytes(r.freeMemoryBytes);
    b.setFreeDiskBytes(r.freeDiskBytes);
    b.setFreeSlots(r.freeSlots);
    b.setHealthy(r.healthy);
    b.setDraining(r.draining);
    if (r.names != nullptr) {
      auto warm = b.initWarmTemplates(r.names->warmTemplates.size());
      for (size_t j = 0; j < warm.size(); ++j) warm.set(j, r.names->warmTemplates[j]);
    }
  }
}

void FleetService::changeKeys(api::GossipKeyChange::Reader change,
                              api::Node::GossipKeysResults::Builder out) {
  switch (change.which()) {
    case api::GossipKeyChange::LIST:
      break;
    case api::GossipKeyChange::ADD:
      keys_->add(change.getAdd());
      break;
    case api::GossipKeyChange::USE:
      keys_->use(change.getUse());
      break;
    case api::GossipKeyChange::REMOVE:
      keys_->remove(change.getRemove());
      break;
  }
  auto ids = keys_->ids();
  auto list = out.initKeyIds(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) list.set(i, ids[i]);
  out.setPrimary(keys_->primaryId());
}

}  // namespace nodeagent::fleet
