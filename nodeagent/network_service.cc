#include "nodeagent/network_service.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <kj/debug.h>

#include "isolator/sandbox_link.h"
#include "nodeagent/api_error.h"
#include "util/log.h"

namespace nodeagent {
namespace {

constexpr uint32_t kMaxEgressMbps = 100000;
constexpr uint64_t kDnsRefusalsAuditedPerSecond = 20;
constexpr int64_t kDnsRefusalQuietSeconds = 10;
constexpr size_t kDnsRefusedNamesKept = 256;

const char* reasonName(uint8_t reason) {
  switch (reason) {
    case NA_DENY_NETWORK_OFF:
      return "network-off";
    case NA_DENY_ALWAYS_DENIED:
      return "always-denied";
    case NA_DENY_NOT_ALLOWED:
      return "not-allowlisted";
    case NA_DENY_RESOLVER:
      return "other-resolver";
    case NA_DENY_BYTE_CAP:
      return "egress-byte-cap";
    case NA_DENY_NO_POLICY:
      return "no-policy";
  }
  return "unknown";
}

const char* hookName(uint8_t hook) {
  switch (hook) {
    case NA_HOOK_CONNECT:
      return "connect";
    case NA_HOOK_SENDMSG:
      return "sendmsg";
    case NA_HOOK_PACKET:
      return "packet";
  }
  return "unknown";
}

kj::String protocolName(uint8_t protocol) {
  switch (protocol) {
    case 1:
      return kj::str("icmp");
    case 6:
      return kj::str("tcp");
    case 17:
      return kj::str("udp");
    case 58:
      return kj::str("icmpv6");
  }
  return kj::str(protocol);
}

std::vector<IpPrefix> parsePrefixes(capnp::List<capnp::Text>::Reader list, kj::StringPtr field) {
  std::vector<IpPrefix> out;
  for (auto text : list) {
    KJ_IF_MAYBE (p, IpPrefix::parse(text)) {
      out.push_back(*p);
    } else {
      KJ_FAIL_REQUIRE("config: not a CIDR", field, text);
    }
  }
  return out;
}

isolator::HostNetworkConfig hostConfig(config::Config::Network::Reader c) {
  isolator::HostNetworkConfig h;
  h.bridge = c.getBridge().cStr();
  h.pool4 = KJ_REQUIRE_NONNULL(IpPrefix::parse(c.getIpv4Pool()), "config: bad network.ipv4Pool",
                               c.getIpv4Pool());
  if (c.getIpv6Pool().size() > 0) {
    h.pool6 = KJ_REQUIRE_NONNULL(IpPrefix::parse(c.getIpv6Pool()), "config: bad network.ipv6Pool",
                                 c.getIpv6Pool());
  }
  h.nat = c.getNat();
  return h;
}

int64_t unixSeconds() {
  return int64_t(time(nullptr));
}

}  // namespace

void NetworkService::ErrorLogger::taskFailed(kj::Exception&& e) {
  log::error("network.task_failed", {{"error", e.getDescription().cStr()}});
}

NetworkService::NetworkService(loop::UringEventPort& port, Options options, AuditFn audit)
    : port_(port), options_(kj::mv(options)), audit_(kj::mv(audit)), tasks_(errorLogger_) {}

NetworkService::~NetworkService() noexcept(false) {}

void NetworkService::start() {
  host_ = isolator::HostNetwork::setUp(hostConfig(options_.config));
  if (mkdir(options_.sandboxesV2Dir.c_str(), 0755) != 0 && errno != EEXIST) {
    KJ_FAIL_SYSCALL("mkdir", errno, options_.sandboxesV2Dir);
  }
  filter_ = ebpf::EgressFilter::start(options_.pinDir.c_str(), options_.sandboxesV2Dir.c_str());
  refreshAlwaysRules();

  DnsServer::Options dns;
  dns.listen.push_back(host_->gateway4());
  KJ_IF_MAYBE (g6, host_->gateway6()) {
    dns.listen.push_back(*g6);
  }
  for (auto text : options_.config.getDnsUpstreams()) {
    dns.upstreams.push_back(
        KJ_REQUIRE_NONNULL(parseDnsUpstream(text), "config: bad network.dnsUpstreams entry", text));
  }
  if (dns.upstreams.empty()) dns.upstreams = upstreamsFromResolvConf();
  dns_ = kj::heap<DnsServer>(port_, kj::mv(dns), *this);
  dns_->start();
  // The host's own addresses are always denied: follow them as they change.
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) KJ_FAIL_SYSCALL("socket(NETLINK_ROUTE)", errno);
  addressChanges_ = kj::AutoCloseFd(fd);
  sockaddr_nl groups{};
  groups.nl_family = AF_NETLINK;
  groups.nl_groups = RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
  KJ_SYSCALL(bind(fd, reinterpret_cast<sockaddr*>(&groups), sizeof(groups)));
  tasks_.add(followAddressChanges());
  tasks_.add(readEvents());
  tasks_.add(sweep());
  log::info("network.started", {{"bridge", options_.config.getBridge().cStr()},
                                {"gateway", host_->gateway4().toString().c_str()}});
}

void NetworkService::uninstall(config::Config::Network::Reader config, kj::StringPtr pinDir) {
  ebpf::EgressFilter::removePinned(pinDir);
  isolator::HostNetwork::tearDown(config.getBridge());
}

std::string NetworkService::resolvConf() const {
  std::string text = "nameserver " + host_->gateway4().toString() + "\n";
  KJ_IF_MAYBE (g6, host_->gateway6()) {
    text += "nameserver " + g6->toString() + "\n";
  }
  return text + "options timeout:2 attempts:2\n";
}

void NetworkService::validate(api::SandboxSpec::Builder spec, uint32_t templateMbps) {
  if (spec.getAllow().size() > 0 && spec.getNetwork() != api::NetworkMode::RESTRICTED) {
    throwApiError(api::ErrorCode::INVALID_ARGUMENT, "allow entries need network mode 'restricted'");
  }
  parseAllowlist(spec.getAllow());  // throws on a bad entry
  if (spec.getEgressMbps() == 0) spec.setEgressMbps(templateMbps);
  if (spec.getEgressMbps() > kMaxEgressMbps) {
    throwApiError(api::ErrorCode::INVALID_ARGUMENT,
                  kj::str("egressMbps must be at most ", kMaxEgressMbps));
  }
}

kj::Own<capnp::MallocMessageBuilder> NetworkService::settingsOf(api::SandboxSpec::Reader spec) {
  auto message = kj::heap<capnp::MallocMessageBuilder>(256);
  auto settings = message->initRoot<api::NetworkSettings>();
  settings.setMode(spec.getNetwork());
  settings.setAllow(spec.getAllow());
  settings.setEgressMbps(spec.getEgressMbps());
  settings.setEgressByteCap(spec.getEgressByteCap());
  return message;
}

uint32_t NetworkService::allocateSlot(const std::string& id) {
  for (uint32_t slot = 1; slot <= host_->capacity(); ++slot) {
    if (slots_.count(slot) == 0) {
      slots_.emplace(slot, id);
      return slot;
    }
  }
  throwApiError(api::ErrorCode::LIMIT_EXCEEDED, "the node's sandbox address pool is exhausted");
}

void NetworkService::freeSlot(Sandbox& s) {
  if (s.slot == 0) return;
  auto it = slots_.find(s.slot);
  if (it != slots_.end() && it->second == s.id) slots_.erase(it);
  s.slot = 0;
}

na_policy NetworkService::policyFor(const Sandbox& s) const {
  na_policy p{};
  switch (s.mode) {
    case api::NetworkMode::OFF:
      p.mode = NA_NET_OFF;
      break;
    case api::NetworkMode::RESTRICTED:
      p.mode = NA_NET_RESTRICTED;
      break;
    case api::NetworkMode::OPEN:
      p.mode = NA_NET_OPEN;
      break;
  }
  p.byte_cap = s.byteCap;
  p.resolver_port = htons(53);
  memcpy(p.resolver4, host_->gateway4().bytes().data(), 16);
  KJ_IF_MAYBE (g6, host_->gateway6()) {
    memcpy(p.resolver6, g6->bytes().data(), 16);
  } else {
    memcpy(p.resolver6, host_->gateway4().bytes().data(), 16);
  }
  if (s.slot != 0) {
    auto where = host_->addressing(s.slot);
    memcpy(p.self4, where.address4.bytes().data(), 16);
    KJ_IF_MAYBE (a6, where.address6) {
      memcpy(p.self6, a6->bytes().data(), 16);
    } else {
      memcpy(p.self6, where.address4.bytes().data(), 16);
    }
  } else {
    // No addresses: 127.0.0.1 stands in (loopback is allowed anyway).
    auto loopback = IpAddress::fromV4(0x7f000001);
    memcpy(p.self4, loopback.bytes().data(), 16);
    memcpy(p.self6, loopback.bytes().data(), 16);
  }
  return p;
}

void NetworkService::writePolicy(const Sandbox& s) {
  na_policy policy = policyFor(s);
  // A spent byte cap stays spent until the cap itself changes.
  KJ_IF_MAYBE (old, filter_->policy(s.cgroupId)) {
    if (old->byte_cap == policy.byte_cap) policy.cut_off = old->cut_off;
  }
  filter_->setPolicy(s.cgroupId, policy);
}

uint32_t NetworkService::configure(Sandbox& s, api::NetworkSettings::Reader settings, bool fresh) {
  Allowlist allowlist = parseAllowlist(settings.getAllow());
  api::NetworkMode mode = settings.getMode();
  uint32_t mbps = settings.getEgressMbps();
  bool rateChanged = !fresh && mbps != s.egressMbps;
  s.mode = mode;
  s.allowlist = kj::mv(allowlist);
  s.allowText.clear();
  for (auto entry : settings.getAllow()) s.allowText.add(kj::str(entry));
  s.egressMbps = mbps;
  if (settings.getEgressByteCap() != s.byteCap) s.cutOffAudited = false;
  s.byteCap = settings.getEgressByteCap();

  // Policy first: the sandbox never has a route out under an older policy.
  filter_->setAllowRules(s.cgroupId, s.allowlist.prefixes);
  writePolicy(s);
  if (!fresh) filter_->forgetResolved(s.cgroupId);

  if (mode != api::NetworkMode::OFF && s.slot == 0) {
    s.slot = allocateSlot(s.id);
    KJ_ON_SCOPE_FAILURE(freeSlot(s));
    isolator::attachSandboxLink(s.initPid, host_->addressing(s.slot), uint64_t(mbps) * 1000000);
    writePolicy(s);  // now with its own addresses
  } else if (mode == api::NetworkMode::OFF && s.slot != 0) {
    isolator::detachSandboxLink(host_->addressing(s.slot));
    freeSlot(s);
    writePolicy(s);
  } else if (s.slot != 0 && rateChanged) {
    isolator::setSandboxEgressRate(s.initPid, uint64_t(mbps) * 1000000);
  }
  return s.slot;
}

uint32_t NetworkService::attach(const SandboxRef& ref, api::NetworkSettings::Reader settings) {
  std::string id = ref.id.cStr();
  KJ_REQUIRE(sandboxes_.count(id) == 0, "sandbox network attached twice", ref.id);
  released_.erase(id);
  Sandbox& s = sandboxes_[id];
  s.id = id;
  s.tenant = ref.tenant.cStr();
  s.cgroupId = ref.cgroupId;
  s.initPid = ref.initPid;
  KJ_ON_SCOPE_FAILURE({
    filter_->forget(ref.cgroupId);
    freeSlot(s);
    sandboxes_.erase(id);
  });
  return configure(s, settings, true);
}

uint32_t NetworkService::update(const SandboxRef& ref, api::NetworkSettings::Reader settings) {
  auto it = sandboxes_.find(ref.id.cStr());
  if (it == sandboxes_.end()) return attach(ref, settings);
  return configure(it->second, settings, false);
}

void NetworkService::adopt(const SandboxRef& ref, api::NetworkSettings::Reader settings,
                           uint32_t slot) {
  std::string id = ref.id.cStr();
  Sandbox& s = sandboxes_[id];
  s.id = id;
  s.tenant = ref.tenant.cStr();
  s.cgroupId = ref.cgroupId;
  s.initPid = ref.initPid;
  s.mode = settings.getMode();
  s.allowlist = parseAllowlist(settings.getAllow());
  for (auto entry : settings.getAllow()) s.allowText.add(kj::str(entry));
  s.egressMbps = settings.getEgressMbps();
  s.byteCap = settings.getEgressByteCap();
  if (slot != 0) {
    KJ_REQUIRE(slot <= host_->capacity() && slots_.count(slot) == 0,
               "the sandbox's address slot does not fit this node's pool", slot);
    slots_.emplace(slot, id);
    s.slot = slot;
  }
  // Counters and names resolved before the restart are kept; the policy is
  // written again in case the configuration (gateways) changed.
  filter_->setAllowRules(s.cgroupId, s.allowlist.prefixes);
  writePolicy(s);
}

void NetworkService::retainOnly(kj::ArrayPtr<const uint64_t> cgroupIds) {
  filter_->retainOnly(cgroupIds);
}

void NetworkService::release(kj::StringPtr id) {
  auto it = sandboxes_.find(id.cStr());
  if (it == sandboxes_.end()) return;
  Sandbox& s = it->second;
  released_[s.id] = ReleasedCount{filter_->counters(s.cgroupId).allowed_bytes, unixSeconds()};
  filter_->forget(s.cgroupId);
  if (s.slot != 0) {
    // Usually gone with the namespace already; a claim keeps the namespace.
    KJ_IF_MAYBE (e, kj::runCatchingExceptions(
                        [&]() { isolator::detachSandboxLink(host_->addressing(s.slot)); })) {
      log::warn("network.detach_failed",
                {{"id", id.cStr()}, {"error", e->getDescription().cStr()}});
    }
  }
  freeSlot(s);
  sandboxes_.erase(it);
}

void NetworkService::fillStatus(kj::StringPtr id, api::NetworkStatus::Builder status) {
  auto it = sandboxes_.find(id.cStr());
  auto settings = status.initSettings();
  if (it == sandboxes_.end()) return;  // off, never attached
  Sandbox& s = it->second;
  settings.setMode(s.mode);
  auto allow = settings.initAllow(unsigned(s.allowText.size()));
  for (unsigned i = 0; i < s.allowText.size(); ++i) allow.set(i, s.allowText[i]);
  settings.setEgressMbps(s.egressMbps);
  settings.setEgressByteCap(s.byteCap);
  if (s.slot != 0) {
    auto where = host_->addressing(s.slot);
    bool v6 = where.address6 != nullptr;
    auto addresses = status.initAddresses(v6 ? 2 : 1);
    auto gateways = status.initGateways(v6 ? 2 : 1);
    addresses.set(0, where.address4.toString().c_str());
    gateways.set(0, where.gateway4.toString().c_str());
    KJ_IF_MAYBE (a6, where.address6) {
      addresses.set(1, a6->toString().c_str());
      gateways.set(1, KJ_ASSERT_NONNULL(where.gateway6).toString().c_str());
    }
  }
  na_counters c = filter_->counters(s.cgroupId);
  status.setEgressBytes(c.allowed_bytes);
  status.setEgressPackets(c.allowed_packets);
  status.setDeniedPackets(c.denied_packets);
  status.setDeniedCalls(c.denied_calls);
  bool cutOff = false;
  KJ_IF_MAYBE (policy, filter_->policy(s.cgroupId)) {
    cutOff = policy->cut_off != 0;
  }
  status.setCutOff(s.byteCap != 0 && (cutOff || c.allowed_bytes >= s.byteCap));
}

uint64_t NetworkService::egressBytes(kj::StringPtr id) {
  auto it = sandboxes_.find(id.cStr());
  if (it == sandboxes_.end()) {
    auto released = released_.find(id.cStr());
    return released == released_.end() ? 0 : released->second.bytes;
  }
  return filter_->counters(it->second.cgroupId).allowed_bytes;
}

NetworkService::Sandbox* NetworkService::byAddress(const IpAddress& address) {
  // Slot n holds gateway + n in each pool, so the address names the slot.
  auto slotOf = [&](const IpPrefix& pool, const IpAddress& gateway) -> uint64_t {
    if (!pool.contains(address)) return 0;
    uint64_t offset = 0;
    for (size_t i = 8; i < 16; ++i) {
      offset = offset << 8 | address.bytes()[i];
    }
    uint64_t base = 0;
    for (size_t i = 8; i < 16; ++i) base = base << 8 | gateway.bytes()[i];
    return offset > base ? offset - base : 0;
  };
  uint64_t slot = slotOf(host_->config().pool4, host_->gateway4());
  KJ_IF_MAYBE (p6, host_->config().pool6) {
    if (slot == 0) slot = slotOf(*p6, KJ_ASSERT_NONNULL(host_->gateway6()));
  }
  if (slot == 0 || slot > UINT32_MAX) return nullptr;
  auto owner = slots_.find(uint32_t(slot));
  if (owner == slots_.end()) return nullptr;
  auto it = sandboxes_.find(owner->second);
  return it == sandboxes_.end() ? nullptr : &it->second;
}

NetworkService::Sandbox* NetworkService::byCgroup(uint64_t cgroupId) {
  for (auto& [id, s] : sandboxes_) {
    if (s.cgroupId == cgroupId) return &s;
  }
  return nullptr;
}

DnsPolicy::Verdict NetworkService::judge(const IpAddress& client, const std::string& name,
                                         uint16_t) {
  Sandbox* s = byAddress(client);
  if (s == nullptr) return Verdict::kRefuse;
  if (s->mode == api::NetworkMode::OPEN) return Verdict::kForward;
  if (s->mode == api::NetworkMode::RESTRICTED) {
    KJ_IF_MAYBE (normalized, normalizeHostname(name.c_str())) {
      if (s->allowlist.allowsName(*normalized)) return Verdict::kForwardAndAdmit;
    }
  }
  int64_t second = unixSeconds();
  if (second != s->dnsRefusalSecond) {
    s->dnsRefusalSecond = second;
    s->dnsRefusalsThisSecond = 0;
  }
  auto seen = s->dnsRefusedAt.find(name);
  if (seen != s->dnsRefusedAt.end() && second - seen->second < kDnsRefusalQuietSeconds) {
    return Verdict::kRefuse;
  }
  if (s->dnsRefusedAt.size() >= kDnsRefusedNamesKept) s->dnsRefusedAt.clear();
  s->dnsRefusedAt[name] = second;
  if (++s->dnsRefusalsThisSecond <= kDnsRefusalsAuditedPerSecond) {
    audit_("dns-refused", s->id, s->tenant,
           kj::str("name=", name.c_str(), " rule=not-allowlisted"));
  }
  return Verdict::kRefuse;
}

void NetworkService::admit(const IpAddress& client, const std::string& name,
                           const std::vector<dns::AnswerAddress>& addresses) {
  Sandbox* s = byAddress(client);
  if (s == nullptr) return;
  uint64_t now = ebpf::bootClockNs();
  uint32_t minTtl = options_.config.getDnsMinTtlSeconds();
  size_t cap = options_.config.getDnsMaxAddressesPerName();
  size_t admitted = 0;
  for (const auto& a : addresses) {
    if (admitted >= cap) {
      log::warn("dns.address_cap", {{"id", s->id.c_str()}, {"name", name.c_str()}});
      break;
    }
    uint64_t ttl = kj::max(a.ttl, minTtl);
    filter_->allowResolved(s->cgroupId, a.address.bytes(), now + ttl * 1000000000ull);
    ++admitted;
  }
}

const DnsServer::Stats& NetworkService::dnsStats() const {
  return dns_->stats();
}

void NetworkService::refreshAlwaysRules() {
  std::vector<IpAddress> addresses = hostAddresses();
  if (!lastHostAddresses_.empty() && addresses == lastHostAddresses_) return;
  AlwaysDeniedInputs inputs;
  inputs.extraDenied = parsePrefixes(options_.config.getExtraDenied(), "network.extraDenied");
  inputs.operatorAllowed =
      parsePrefixes(options_.config.getOperatorAllowed(), "network.operatorAllowed");
  inputs.pools.push_back(host_->config().pool4);
  KJ_IF_MAYBE (p6, host_->config().pool6) {
    inputs.pools.push_back(*p6);
  }
  inputs.hostAddresses = addresses;
  filter_->setAlwaysRules(alwaysDeniedRules(inputs));
  lastHostAddresses_ = kj::mv(addresses);
}

kj::Promise<void> NetworkService::readEvents() {
  return port_.pollIn(filter_->eventsFd()).then([this](short) {
    filter_->drainEvents([this](const na_event& event) { onEvent(event); });
    return readEvents();
  });
}

void NetworkService::onEvent(const na_event& event) {
  Sandbox* s = byCgroup(event.cgroup);
  if (s == nullptr) return;  // ended meanwhile
  IpAddress destination = IpAddress::fromV6(event.addr);
  kj::String where = destination.isV4()
                         ? kj::str(destination.toString().c_str(), ":", event.port)
                         : kj::str("[", destination.toString().c_str(), "]:", event.port);
  kj::String detail = kj::str("dst=", where, " proto=", protocolName(event.protocol),
                              " rule=", reasonName(event.reason), " hook=", hookName(event.hook));
  if (event.suppressed > 0) detail = kj::str(detail, " suppressed=", event.suppressed);
  audit_("egress-denied", s->id, s->tenant, detail);
  if (event.reason == NA_DENY_BYTE_CAP && !s->cutOffAudited) {
    s->cutOffAudited = true;
    audit_("egress-cap", s->id, s->tenant, kj::str("cap=", s->byteCap, " cut off"));
  }
}

kj::Promise<void> NetworkService::followAddressChanges() {
  return port_.pollIn(addressChanges_).then([this](short) {
    char buffer[8192];
    while (recv(addressChanges_, buffer, sizeof(buffer), MSG_DONTWAIT) > 0) {
    }
    refreshAlwaysRules();
    return followAddressChanges();
  });
}

kj::Promise<void> NetworkService::sweep() {
  return port_.timer().afterDelay(options_.sweepInterval).then([this]() {
    filter_->expireResolved(ebpf::bootClockNs());
    // Longer than an ended sandbox stays readable (Supervisor::kEndedRetention).
    int64_t horizon = unixSeconds() - 15 * 60;
    for (auto it = released_.begin(); it != released_.end();) {
      it = it->second.releasedAt < horizon ? released_.erase(it) : std::next(it);
    }
    refreshAlwaysRules();
    return sweep();
  });
}

}  // namespace nodeagent
