// The loader of egress_policy.bpf.c: attaches its five programs once on the
// cgroup that holds every sandbox and keeps each sandbox's policy in maps
// keyed by the sandbox's v2 cgroup id.
//
// Links and maps are pinned under `pinDir`, so the policy stays enforced while
// no agent runs; the next start() reuses the maps (policies, counters, the
// events not read yet) and swaps the new programs into the pinned links.
//
//   auto filter = EgressFilter::start(pinDir, "/sys/fs/cgroup/.../sandboxes");
//   filter->setAlwaysRules(rules);
//   filter->setPolicy(cgroupId, policy);       // before the sandbox gets a route out
//   filter->setAllowRules(cgroupId, allowed);
//   filter->allowResolved(cgroupId, address, expiresBootNs);   // DNS answers
//   filter->forget(cgroupId);                   // when the sandbox ends
#pragma once

#include <kj/array.h>
#include <kj/function.h>
#include <kj/memory.h>
#include <kj/string.h>
#include <kj/vector.h>

#include <array>
#include <cstdint>

#include "ebpf/egress_policy.h"

struct egress_policy;
struct ring_buffer;

namespace nodeagent::ebpf {

// 16 bytes; IPv4 in its IPv4-mapped IPv6 form.
using Address16 = std::array<uint8_t, 16>;

struct AddressPrefix {
  Address16 address{};
  uint8_t length = 0;  // bits of `address`, 0..128 (an IPv4 /8 is 96 + 8)
};

struct GlobalRule {
  AddressPrefix prefix;
  bool allow = false;  // false: always denied
};

struct AllowRule {
  AddressPrefix prefix;
  kj::Vector<uint16_t> ports;  // empty: every port; at most NA_MAX_PORTS
};

class EgressFilter {
 public:
  // Throws (with libbpf's reason) without the privileges the programs need.
  static kj::Own<EgressFilter> start(kj::StringPtr pinDir, kj::StringPtr sandboxesV2Dir);
  // Detaches the programs and deletes every pinned object (uninstall, tests).
  static void removePinned(kj::StringPtr pinDir);

  explicit EgressFilter(egress_policy* skeleton);
  ~EgressFilter();
  KJ_DISALLOW_COPY(EgressFilter);

  // Replaces the always-denied set (and the operator's exceptions to it).
  void setAlwaysRules(kj::ArrayPtr<const GlobalRule> rules);
  // Sets a sandbox's policy; its counters start at zero the first time.
  void setPolicy(uint64_t cgroupId, const na_policy& policy);
  kj::Maybe<na_policy> policy(uint64_t cgroupId) const;
  // Replaces the sandbox's CIDR allowlist.
  void setAllowRules(uint64_t cgroupId, kj::ArrayPtr<const AllowRule> rules);
  // Lets the sandbox reach `address` until `expiresBootNs` (CLOCK_BOOTTIME).
  void allowResolved(uint64_t cgroupId, const Address16& address, uint64_t expiresBootNs);
  // Drops the permissions that lapsed before `nowBootNs`; returns how many.
  size_t expireResolved(uint64_t nowBootNs);
  // Every resolved permission of one sandbox, dropped (e.g. its mode changed).
  void forgetResolved(uint64_t cgroupId);
  // Everything of one sandbox: policy, rules, permissions, counters, budget.
  void forget(uint64_t cgroupId);
  // Forgets every sandbox not in `keep` (ended while no agent ran).
  void retainOnly(kj::ArrayPtr<const uint64_t> keep);

  na_counters counters(uint64_t cgroupId) const;  // zeros for an unknown id

  // The ring buffer of refusals: readable when there are events.
  int eventsFd() const;
  // Hands every queued event to `onEvent`; returns how many.
  size_t drainEvents(kj::Function<void(const na_event&)> onEvent);

 private:
  egress_policy* skeleton_;
  ring_buffer* events_ = nullptr;
  kj::Maybe<kj::Function<void(const na_event&)>> onEvent_;
  static int onRingEvent(void* self, void* data, size_t size);
};

// Now on the clock the programs compare expiries with (CLOCK_BOOTTIME).
uint64_t bootClockNs();

}  // namespace nodeagent::ebpf
