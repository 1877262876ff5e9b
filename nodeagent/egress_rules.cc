#include "nodeagent/egress_rules.h"

#include <ifaddrs.h>
#include <netinet/in.h>

#include <kj/debug.h>

#include <algorithm>

#include "nodeagent/api_error.h"

namespace nodeagent {
namespace {

const kj::StringPtr kBuiltinDenied[] = {
    // IPv4
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
    // IPv6: unspecified, loopback, IPv4-compatible, discard, Teredo and 6to4
    // (both embed IPv4), NAT64 local use, unique local (cloud metadata such as
    // fd00:ec2::254 lives here), link-local, site-local, multicast.
    "::/128", "::1/128", "::/96", "100::/64", "2001::/32", "2002::/16", "64:ff9b:1::/48",
    "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8"};

[[noreturn]] void badEntry(kj::StringPtr entry, kj::StringPtr why) {
  throwApiError(api::ErrorCode::INVALID_ARGUMENT,
                kj::str("network allowlist entry \"", entry, "\": ", why));
}

bool isLabelChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

kj::Maybe<uint16_t> parsePort(const std::string& text) {
  if (text.empty() || text.size() > 5) return nullptr;
  uint32_t port = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return nullptr;
    port = port * 10 + uint32_t(c - '0');
  }
  if (port == 0 || port > 65535) return nullptr;
  return uint16_t(port);
}

bool looksLikeAddress(const std::string& s) {
  if (s.empty()) return false;
  if (s[0] == '[' || s.find(':') != std::string::npos) return true;
  // Digits, dots, a slash and a colon only: an IPv4 form (a hostname label
  // of digits alone is not a name we serve).
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || c == '.' || c == '/'; });
}

void addPrefix(Allowlist& list, const IpPrefix& prefix, kj::Maybe<uint16_t> port,
               kj::StringPtr entry) {
  ebpf::AllowRule* rule = nullptr;
  for (auto& r : list.prefixes) {
    if (r.prefix.length == prefix.length() && r.prefix.address == prefix.address().bytes()) {
      rule = &r;
    }
  }
  if (rule == nullptr) {
    ebpf::AllowRule fresh;
    fresh.prefix.address = prefix.address().bytes();
    fresh.prefix.length = prefix.length();
    KJ_IF_MAYBE (p, port) {
      fresh.ports.add(*p);
    }
    list.prefixes.add(kj::mv(fresh));
    return;
  }
  if (rule->ports.size() == 0) return;  // every port already
  KJ_IF_MAYBE (p, port) {
    if (std::find(rule->ports.begin(), rule->ports.end(), *p) != rule->ports.end()) return;
    if (rule->ports.size() >= NA_MAX_PORTS) {
      badEntry(entry, kj::str("at most ", NA_MAX_PORTS, " ports per address range"));
    }
    rule->ports.add(*p);
  } else {
    rule->ports.clear();  // the whole range, every port
  }
}

}  // namespace

kj::Maybe<std::string> normalizeHostname(kj::StringPtr raw) {
  std::string name(raw.cStr());
  if (!name.empty() && name.back() == '.') name.pop_back();
  if (name.empty() || name.size() > 253) return nullptr;
  for (char& c : name) {
    if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
  }
  size_t start = 0;
  while (start <= name.size()) {
    size_t dot = name.find('.', start);
    if (dot == std::string::npos) dot = name.size();
    size_t length = dot - start;
    if (length == 0 || length > 63) return nullptr;
    if (name[start] == '-' || name[dot - 1] == '-') return nullptr;
    for (size_t i = start; i < dot; ++i) {
      if (!isLabelChar(name[i])) return nullptr;
    }
    start = dot + 1;
  }
  return name;
}

bool Allowlist::allowsName(const std::string& name) const {
  for (const auto& pattern : names) {
    if (!pattern.subdomains) {
      if (name == pattern.name) return true;
    } else if (name.size() > pattern.name.size() + 1 &&
               name.compare(name.size() - pattern.name.size(), pattern.name.size(), pattern.name) ==
                   0 &&
               name[name.size() - pattern.name.size() - 1] == '.') {
      return true;
    }
  }
  return false;
}

Allowlist parseAllowlist(capnp::List<capnp::Text>::Reader entries) {
  if (entries.size() > kMaxAllowEntries) {
    throwApiError(api::ErrorCode::INVALID_ARGUMENT,
                  kj::str("at most ", kMaxAllowEntries, " network allowlist entries"));
  }
  Allowlist list;
  for (capnp::Text::Reader entryText : entries) {
    kj::StringPtr entry = entryText;
    std::string s(entry.begin(), entry.size());
    if (s.empty()) badEntry(entry, "empty");
    if (s.find('\0') != std::string::npos) badEntry(entry, "contains a NUL byte");
    if (looksLikeAddress(s)) {
      std::string prefixText = s;
      kj::Maybe<uint16_t> port;
      if (s[0] == '[') {  // [V6 or V6/LEN]:PORT
        size_t close = s.find(']');
        if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':') {
          badEntry(entry, "expected [IPV6]:PORT or [IPV6/LEN]:PORT");
        }
        prefixText = s.substr(1, close - 1);
        port = parsePort(s.substr(close + 2));
        if (port == nullptr) badEntry(entry, "port must be 1-65535");
      } else if (s.find(':') != std::string::npos && s.find('.') != std::string::npos &&
                 std::count(s.begin(), s.end(), ':') == 1) {  // V4[/LEN]:PORT
        size_t colon = s.find(':');
        prefixText = s.substr(0, colon);
        port = parsePort(s.substr(colon + 1));
        if (port == nullptr) badEntry(entry, "port must be 1-65535");
      }
      KJ_IF_MAYBE (prefix, IpPrefix::parse(prefixText.c_str())) {
        addPrefix(list, *prefix, port, entry);
      } else {
        badEntry(entry, "not an address or CIDR (host bits must be zero)");
      }
      continue;
    }
    bool subdomains = s.size() > 2 && s[0] == '*' && s[1] == '.';
    KJ_IF_MAYBE (name, normalizeHostname(subdomains ? kj::StringPtr(entry.cStr() + 2) : entry)) {
      list.names.push_back(HostnamePattern{kj::mv(*name), subdomains});
    } else {
      badEntry(entry, "not a CIDR, CIDR:PORT, HOSTNAME or *.DOMAIN");
    }
  }
  return list;
}

kj::ArrayPtr<const kj::StringPtr> builtinDeniedPrefixes() {
  return kBuiltinDenied;
}

kj::Vector<ebpf::GlobalRule> alwaysDeniedRules(const AlwaysDeniedInputs& inputs) {
  kj::Vector<ebpf::GlobalRule> rules;
  auto deny = [&](const IpPrefix& p, bool allow) {
    rules.add(ebpf::GlobalRule{ebpf::AddressPrefix{p.address().bytes(), p.length()}, allow});
  };
  for (kj::StringPtr text : kBuiltinDenied) deny(KJ_ASSERT_NONNULL(IpPrefix::parse(text)), false);
  for (const auto& p : inputs.extraDenied) deny(p, false);
  for (const auto& p : inputs.pools) deny(p, false);
  for (const auto& a : inputs.hostAddresses) deny(IpPrefix(a, 128), false);
  // Exceptions last: for the same prefix the later rule replaces the earlier.
  for (const auto& p : inputs.operatorAllowed) deny(p, true);
  return rules;
}

std::vector<IpAddress> hostAddresses() {
  std::vector<IpAddress> out;
  ifaddrs* list = nullptr;
  KJ_SYSCALL(getifaddrs(&list));
  KJ_DEFER(freeifaddrs(list));
  for (ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr == nullptr) continue;
    if (i->ifa_addr->sa_family == AF_INET) {
      auto* sa = reinterpret_cast<sockaddr_in*>(i->ifa_addr);
      out.push_back(IpAddress::fromV4(ntohl(sa->sin_addr.s_addr)));
    } else if (i->ifa_addr->sa_family == AF_INET6) {
      auto* sa = reinterpret_cast<sockaddr_in6*>(i->ifa_addr);
      out.push_back(IpAddress::fromV6(sa->sin6_addr.s6_addr));
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace nodeagent
