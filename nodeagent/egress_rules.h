// What a sandbox's network policy is made of, parsed and checked: the
// allowlist entries a tenant gives (`sbx create --allow ENTRY`) and the set
// that is always denied unless the operator allows it.
//
// Allowlist entries:
//   CIDR          198.51.100.0/24, 2001:db8::/32, or one address
//   CIDR:PORT     198.51.100.7:443, 198.51.100.0/24:443, [2001:db8::/32]:443
//   HOSTNAME      api.example.com (exactly that name)
//   *.DOMAIN      *.example.com (any name below example.com, not itself)
#pragma once

#include <capnp/list.h>
#include <kj/string.h>
#include <kj/vector.h>

#include <string>
#include <vector>

#include "ebpf/egress_filter.h"
#include "util/ip_prefix.h"

namespace nodeagent {

constexpr size_t kMaxAllowEntries = 256;

struct HostnamePattern {
  std::string name;         // lower case, no trailing dot
  bool subdomains = false;  // "*.name"
};

struct Allowlist {
  kj::Vector<ebpf::AllowRule> prefixes;  // one per distinct prefix, ports merged
  std::vector<HostnamePattern> names;
  // Whether DNS may answer `name` (lower case, no trailing dot).
  bool allowsName(const std::string& name) const;
};

// Throws invalidArgument naming the first bad entry and what is wrong with it.
Allowlist parseAllowlist(capnp::List<capnp::Text>::Reader entries);

// A DNS name as the policy compares it: lower case, without the final dot.
// Null for a name that is not a valid hostname.
kj::Maybe<std::string> normalizeHostname(kj::StringPtr name);

// The built-in always-denied prefixes (private, shared, link-local and
// metadata, loopback, multicast, reserved, and the IPv6 forms that embed
// IPv4 or are local), as text.
kj::ArrayPtr<const kj::StringPtr> builtinDeniedPrefixes();

struct AlwaysDeniedInputs {
  std::vector<IpPrefix> extraDenied;      // config network.extraDenied
  std::vector<IpPrefix> operatorAllowed;  // config network.operatorAllowed
  std::vector<IpPrefix> pools;            // other sandboxes and the gateways
  std::vector<IpAddress> hostAddresses;   // the host's own
};

// The rules for EgressFilter::setAlwaysRules: everything denied, then the
// operator's exceptions as allow rules (the longest prefix decides).
kj::Vector<ebpf::GlobalRule> alwaysDeniedRules(const AlwaysDeniedInputs& inputs);

// Every address on the host's interfaces.
std::vector<IpAddress> hostAddresses();

}  // namespace nodeagent
