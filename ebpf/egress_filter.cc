#include "ebpf/egress_filter.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <kj/debug.h>
#include <kj/io.h>

#include <algorithm>
#include <vector>

#include "ebpf/cpu_meter.h"  // ensureBpffs()
#include "ebpf/egress_policy.skel.h"

namespace nodeagent::ebpf {
namespace {

const char* const kMapNames[] = {"sandbox_policy", "sandbox_counters", "always_rules",
                                 "allow_rules",    "resolved",         "audit_budget",
                                 "events"};
const char* const kLinkNames[] = {"connect4", "connect6", "sendmsg4", "sendmsg6", "egress_packet"};

kj::String pinPath(kj::StringPtr dir, kj::StringPtr name) {
  return kj::str(dir, "/", name);
}

// Every key of a map, collected before any is deleted (deleting while walking
// a hash map can skip keys).
template <typename Key>
std::vector<Key> keysOf(int fd) {
  std::vector<Key> keys;
  Key key{}, next{};
  Key* previous = nullptr;
  while (bpf_map_get_next_key(fd, previous, &next) == 0) {
    keys.push_back(next);
    key = next;
    previous = &key;
  }
  return keys;
}

na_allow_key allowKey(uint64_t cgroupId, const AddressPrefix& prefix) {
  na_allow_key key{};
  key.prefixlen = 64 + prefix.length;
  key.cgroup_hi = uint32_t(cgroupId >> 32);
  key.cgroup_lo = uint32_t(cgroupId);
  memcpy(key.addr, prefix.address.data(), 16);
  return key;
}

uint64_t allowKeyCgroup(const na_allow_key& key) {
  return (uint64_t(key.cgroup_hi) << 32) | key.cgroup_lo;
}

// Attaches `program` on the cgroup through the link pinned at `path`: an
// existing pinned link (a previous agent's) gets the new program swapped in,
// atomically, so enforcement never lapses.
void attachPinned(bpf_program* program, int cgroupFd, kj::StringPtr path) {
  if (access(path.cStr(), F_OK) == 0) {
    bpf_link* old = bpf_link__open(path.cStr());
    if (old != nullptr) {
      int rc = bpf_link__update_program(old, program);
      bpf_link__destroy(old);  // the pin keeps the link
      if (rc == 0) return;
    }
    unlink(path.cStr());  // stale or unusable: attach afresh
  }
  bpf_link* link = bpf_program__attach_cgroup(program, cgroupFd);
  if (link == nullptr) KJ_FAIL_SYSCALL("attaching an egress program", errno, path);
  int rc = bpf_link__pin(link, path.cStr());
  int pinErr = -rc;
  bpf_link__destroy(link);
  if (rc != 0) KJ_FAIL_SYSCALL("pinning an egress program's link", pinErr, path);
}

}  // namespace

uint64_t bootClockNs() {
  timespec ts;
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return uint64_t(ts.tv_sec) * 1000000000 + uint64_t(ts.tv_nsec);
}

kj::Own<EgressFilter> EgressFilter::start(kj::StringPtr pinDir, kj::StringPtr sandboxesV2Dir) {
  ensureBpffs();
  if (mkdir(pinDir.cStr(), 0700) != 0 && errno != EEXIST) KJ_FAIL_SYSCALL("mkdir", errno, pinDir);
  egress_policy* skeleton = egress_policy::open();
  if (skeleton == nullptr) KJ_FAIL_SYSCALL("opening the egress policy BPF programs", errno);
  auto filter = kj::heap<EgressFilter>(skeleton);
  bpf_map* maps[] = {skeleton->maps.sandbox_policy, skeleton->maps.sandbox_counters,
                     skeleton->maps.always_rules,   skeleton->maps.allow_rules,
                     skeleton->maps.resolved,       skeleton->maps.audit_budget,
                     skeleton->maps.events};
  static_assert(sizeof(maps) / sizeof(maps[0]) == sizeof(kMapNames) / sizeof(kMapNames[0]));
  for (size_t i = 0; i < sizeof(maps) / sizeof(maps[0]); ++i) {
    auto path = pinPath(pinDir, kMapNames[i]);
    int rc = bpf_map__set_pin_path(maps[i], path.cStr());
    if (rc != 0) KJ_FAIL_SYSCALL("bpf_map__set_pin_path", -rc, path);
  }
  int rc = egress_policy::load(skeleton);
  if (rc != 0) KJ_FAIL_SYSCALL("loading the egress policy BPF programs", -rc, pinDir);

  int cgroupFd = open(sandboxesV2Dir.cStr(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (cgroupFd < 0) KJ_FAIL_SYSCALL("open", errno, sandboxesV2Dir);
  kj::AutoCloseFd cgroup(cgroupFd);
  bpf_program* programs[] = {skeleton->progs.connect4, skeleton->progs.connect6,
                             skeleton->progs.sendmsg4, skeleton->progs.sendmsg6,
                             skeleton->progs.egress_packet};
  for (size_t i = 0; i < sizeof(programs) / sizeof(programs[0]); ++i) {
    attachPinned(programs[i], cgroup, pinPath(pinDir, kj::str("link_", kLinkNames[i])));
  }

  filter->events_ = ring_buffer__new(bpf_map__fd(skeleton->maps.events), &EgressFilter::onRingEvent,
                                     filter.get(), nullptr);
  if (filter->events_ == nullptr) KJ_FAIL_SYSCALL("ring_buffer__new", errno);
  return filter;
}

void EgressFilter::removePinned(kj::StringPtr pinDir) {
  for (const char* name : kLinkNames) {
    auto path = pinPath(pinDir, kj::str("link_", name));
    if (unlink(path.cStr()) != 0 && errno != ENOENT) KJ_FAIL_SYSCALL("unlink", errno, path);
  }
  for (const char* name : kMapNames) {
    auto path = pinPath(pinDir, name);
    if (unlink(path.cStr()) != 0 && errno != ENOENT) KJ_FAIL_SYSCALL("unlink", errno, path);
  }
  if (rmdir(pinDir.cStr()) != 0 && errno != ENOENT) KJ_FAIL_SYSCALL("rmdir", errno, pinDir);
}

EgressFilter::EgressFilter(egress_policy* skeleton) : skeleton_(skeleton) {}

EgressFilter::~EgressFilter() {
  if (events_ != nullptr) ring_buffer__free(events_);
  egress_policy::destroy(skeleton_);  // the pinned links keep the programs attached
}

void EgressFilter::setAlwaysRules(kj::ArrayPtr<const GlobalRule> rules) {
  int fd = bpf_map__fd(skeleton_->maps.always_rules);
  std::vector<na_global_key> wanted;
  for (const GlobalRule& rule : rules) {
    na_global_key key{};
    key.prefixlen = rule.prefix.length;
    memcpy(key.addr, rule.prefix.address.data(), 16);
    uint8_t verdict = rule.allow ? NA_VERDICT_ALLOW : NA_VERDICT_DENY;
    KJ_SYSCALL(bpf_map_update_elem(fd, &key, &verdict, BPF_ANY), "always-denied rule");
    wanted.push_back(key);
  }
  // Rules no longer configured go only after the new ones are in.
  for (const na_global_key& key : keysOf<na_global_key>(fd)) {
    bool keep = false;
    for (const auto& w : wanted) keep = keep || memcmp(&w, &key, sizeof(key)) == 0;
    if (!keep) bpf_map_delete_elem(fd, &key);
  }
}

void EgressFilter::setPolicy(uint64_t cgroupId, const na_policy& policy) {
  na_counters zero{};
  int countersFd = bpf_map__fd(skeleton_->maps.sandbox_counters);
  if (bpf_map_update_elem(countersFd, &cgroupId, &zero, BPF_NOEXIST) != 0 && errno != EEXIST) {
    KJ_FAIL_SYSCALL("creating a sandbox's egress counters", errno, cgroupId);
  }
  KJ_SYSCALL(
      bpf_map_update_elem(bpf_map__fd(skeleton_->maps.sandbox_policy), &cgroupId, &policy, BPF_ANY),
      "setting a sandbox's egress policy", cgroupId);
}

kj::Maybe<na_policy> EgressFilter::policy(uint64_t cgroupId) const {
  na_policy policy{};
  if (bpf_map_lookup_elem(bpf_map__fd(skeleton_->maps.sandbox_policy), &cgroupId, &policy) != 0) {
    return nullptr;
  }
  return policy;
}

void EgressFilter::setAllowRules(uint64_t cgroupId, kj::ArrayPtr<const AllowRule> rules) {
  int fd = bpf_map__fd(skeleton_->maps.allow_rules);
  std::vector<na_allow_key> wanted;
  for (const AllowRule& rule : rules) {
    KJ_REQUIRE(rule.ports.size() <= NA_MAX_PORTS, "too many ports for one prefix");
    na_allow_key key = allowKey(cgroupId, rule.prefix);
    na_allow_rule value{};
    value.port_count = uint8_t(rule.ports.size());
    for (size_t i = 0; i < rule.ports.size(); ++i) value.ports[i] = rule.ports[i];
    KJ_SYSCALL(bpf_map_update_elem(fd, &key, &value, BPF_ANY), "allowlist rule", cgroupId);
    wanted.push_back(key);
  }
  for (const na_allow_key& key : keysOf<na_allow_key>(fd)) {
    if (allowKeyCgroup(key) != cgroupId) continue;
    bool keep = false;
    for (const auto& w : wanted) keep = keep || memcmp(&w, &key, sizeof(key)) == 0;
    if (!keep) bpf_map_delete_elem(fd, &key);
  }
}

void EgressFilter::allowResolved(uint64_t cgroupId, const Address16& address,
                                 uint64_t expiresBootNs) {
  na_resolved_key key{};
  key.cgroup = cgroupId;
  memcpy(key.addr, address.data(), 16);
  int fd = bpf_map__fd(skeleton_->maps.resolved);
  na_resolved current{};
  // A shorter TTL in a later answer does not cut an earlier permission short.
  if (bpf_map_lookup_elem(fd, &key, &current) == 0 && current.expires_ns >= expiresBootNs) return;
  na_resolved value{expiresBootNs};
  KJ_SYSCALL(bpf_map_update_elem(fd, &key, &value, BPF_ANY), "allowing a resolved address",
             cgroupId);
}

size_t EgressFilter::expireResolved(uint64_t nowBootNs) {
  int fd = bpf_map__fd(skeleton_->maps.resolved);
  size_t dropped = 0;
  for (const na_resolved_key& key : keysOf<na_resolved_key>(fd)) {
    na_resolved value{};
    if (bpf_map_lookup_elem(fd, &key, &value) == 0 && value.expires_ns <= nowBootNs) {
      if (bpf_map_delete_elem(fd, &key) == 0) ++dropped;
    }
  }
  return dropped;
}

void EgressFilter::forgetResolved(uint64_t cgroupId) {
  int fd = bpf_map__fd(skeleton_->maps.resolved);
  for (const na_resolved_key& key : keysOf<na_resolved_key>(fd)) {
    if (key.cgroup == cgroupId) bpf_map_delete_elem(fd, &key);
  }
}

void EgressFilter::forget(uint64_t cgroupId) {
  bpf_map_delete_elem(bpf_map__fd(skeleton_->maps.sandbox_policy), &cgroupId);
  setAllowRules(cgroupId, nullptr);
  forgetResolved(cgroupId);
  bpf_map_delete_elem(bpf_map__fd(skeleton_->maps.sandbox_counters), &cgroupId);
  bpf_map_delete_elem(bpf_map__fd(skeleton_->maps.audit_budget), &cgroupId);
}

void EgressFilter::retainOnly(kj::ArrayPtr<const uint64_t> keep) {
  auto kept = [&](uint64_t id) {
    for (uint64_t k : keep) {
      if (k == id) return true;
    }
    return false;
  };
  std::vector<uint64_t> stale;
  for (uint64_t id : keysOf<uint64_t>(bpf_map__fd(skeleton_->maps.sandbox_policy))) {
    if (!kept(id)) stale.push_back(id);
  }
  for (uint64_t id : keysOf<uint64_t>(bpf_map__fd(skeleton_->maps.sandbox_counters))) {
    if (!kept(id)) stale.push_back(id);
  }
  for (const na_allow_key& key : keysOf<na_allow_key>(bpf_map__fd(skeleton_->maps.allow_rules))) {
    if (!kept(allowKeyCgroup(key))) stale.push_back(allowKeyCgroup(key));
  }
  for (const auto& key : keysOf<na_resolved_key>(bpf_map__fd(skeleton_->maps.resolved))) {
    if (!kept(key.cgroup)) stale.push_back(key.cgroup);
  }
  std::sort(stale.begin(), stale.end());
  stale.erase(std::unique(stale.begin(), stale.end()), stale.end());
  for (uint64_t id : stale) forget(id);
}

na_counters EgressFilter::counters(uint64_t cgroupId) const {
  na_counters counters{};
  bpf_map_lookup_elem(bpf_map__fd(skeleton_->maps.sandbox_counters), &cgroupId, &counters);
  return counters;
}

int EgressFilter::eventsFd() const {
  return ring_buffer__epoll_fd(events_);
}

size_t EgressFilter::drainEvents(kj::Function<void(const na_event&)> onEvent) {
  onEvent_ = kj::mv(onEvent);
  int n = ring_buffer__consume(events_);
  onEvent_ = nullptr;
  if (n < 0) KJ_FAIL_SYSCALL("reading egress audit events", -n);
  return size_t(n);
}

int EgressFilter::onRingEvent(void* self, void* data, size_t size) {
  auto* filter = static_cast<EgressFilter*>(self);
  if (size < sizeof(na_event)) return 0;
  na_event event;
  memcpy(&event, data, sizeof(event));
  KJ_IF_MAYBE (handler, filter->onEvent_) {
    (*handler)(event);
  }
  return 0;
}

}  // namespace nodeagent::ebpf
