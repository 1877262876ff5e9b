// Unit tests of nodeagent/egress_rules: the tenant's allowlist entries and
// the always-denied set the egress filter is given.
#include "nodeagent/egress_rules.h"

#include <capnp/message.h>
#include <capnp/orphan.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "nodeagent/api_error.h"

namespace nodeagent {
namespace {

IpAddress addr(const char* text) {
  KJ_IF_MAYBE (a, IpAddress::parse(text)) {
    return *a;
  }
  ADD_FAILURE() << "address did not parse: " << text;
  return IpAddress();
}

IpPrefix prefix(const char* text) {
  KJ_IF_MAYBE (p, IpPrefix::parse(text)) {
    return *p;
  }
  ADD_FAILURE() << "prefix did not parse: " << text;
  return IpPrefix();
}

// Entries as the RPC layer hands them over. Built from std::string so an
// entry may hold any byte, NUL included.
class Entries {
 public:
  explicit Entries(const std::vector<std::string>& entries)
      : list_(message_.getOrphanage().newOrphan<capnp::List<capnp::Text>>(
            static_cast<unsigned>(entries.size()))) {
    auto builder = list_.get();
    for (unsigned i = 0; i < entries.size(); ++i) {
      // capnp::Text::Reader needs a NUL after its content: std::string has one.
      builder.set(i, capnp::Text::Reader(entries[i].data(), entries[i].size()));
    }
  }
  capnp::List<capnp::Text>::Reader reader() const { return list_.getReader(); }

 private:
  capnp::MallocMessageBuilder message_;
  capnp::Orphan<capnp::List<capnp::Text>> list_;
};

Allowlist parse(const std::vector<std::string>& entries) {
  Entries e(entries);
  return parseAllowlist(e.reader());
}

// The exception parseAllowlist throws, or null if it accepted the list.
kj::Maybe<kj::Exception> parseError(const std::vector<std::string>& entries) {
  Entries e(entries);
  return kj::runCatchingExceptions([&]() { parseAllowlist(e.reader()); });
}

// Asserts the entries are refused with invalidArgument; returns the message.
std::string expectInvalid(const std::vector<std::string>& entries, const std::string& what) {
  KJ_IF_MAYBE (e, parseError(entries)) {
    auto code = apiErrorCode(*e);
    EXPECT_TRUE(code != nullptr) << what
                                 << ": not a typed API error: " << e->getDescription().cStr();
    KJ_IF_MAYBE (c, code) {
      EXPECT_EQ(*c, api::ErrorCode::INVALID_ARGUMENT) << what;
    }
    return apiErrorMessage(*e).cStr();
  }
  ADD_FAILURE() << "accepted " << what;
  return "";
}

std::string escaped(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f) {
      out += char(c);
    } else {
      char hex[8];
      snprintf(hex, sizeof(hex), "\\x%02x", c);
      out += hex;
    }
  }
  return out;
}

const ebpf::AllowRule* findRule(const Allowlist& list, const char* prefixText) {
  IpPrefix p = prefix(prefixText);
  for (const auto& r : list.prefixes) {
    if (r.prefix.address == p.address().bytes() && r.prefix.length == p.length()) return &r;
  }
  return nullptr;
}

std::vector<uint16_t> ports(const ebpf::AllowRule& rule) {
  std::vector<uint16_t> out(rule.ports.begin(), rule.ports.end());
  std::sort(out.begin(), out.end());
  return out;
}

// ---------------------------------------------------------------------------
// Entry forms

TEST(ParseAllowlist, EmptyListIsEmpty) {
  Allowlist list = parse({});
  EXPECT_EQ(list.prefixes.size(), 0u);
  EXPECT_TRUE(list.names.empty());
  EXPECT_FALSE(list.allowsName("example.com"));
}

TEST(ParseAllowlist, Ipv4Cidr) {
  Allowlist list = parse({"198.51.100.0/24"});
  ASSERT_EQ(list.prefixes.size(), 1u);
  EXPECT_EQ(list.prefixes[0].prefix.address, addr("198.51.100.0").bytes());
  EXPECT_EQ(list.prefixes[0].prefix.length, 96 + 24);
  EXPECT_EQ(list.prefixes[0].ports.size(), 0u);  // every port
  EXPECT_TRUE(list.names.empty());
}

TEST(ParseAllowlist, Ipv6Cidr) {
  Allowlist list = parse({"2001:db8::/32"});
  ASSERT_EQ(list.prefixes.size(), 1u);
  EXPECT_EQ(list.prefixes[0].prefix.address, addr("2001:db8::").bytes());
  EXPECT_EQ(list.prefixes[0].prefix.length, 32);
  EXPECT_EQ(list.prefixes[0].ports.size(), 0u);
}

TEST(ParseAllowlist, BareAddressesAreHosts) {
  Allowlist list = parse({"198.51.100.7", "2001:db8::7"});
  ASSERT_EQ(list.prefixes.size(), 2u);
  EXPECT_EQ(list.prefixes[0].prefix.address, addr("198.51.100.7").bytes());
  EXPECT_EQ(list.prefixes[0].prefix.length, 128);
  EXPECT_EQ(list.prefixes[1].prefix.address, addr("2001:db8::7").bytes());
  EXPECT_EQ(list.prefixes[1].prefix.length, 128);
}

TEST(ParseAllowlist, Ipv4WithPort) {
  Allowlist list =
      parse({"198.51.100.7:443", "203.0.113.0/24:8080", "192.0.2.1:1", "192.0.2.2:65535"});
  ASSERT_EQ(list.prefixes.size(), 4u);
  EXPECT_EQ(list.prefixes[0].prefix.address, addr("198.51.100.7").bytes());
  EXPECT_EQ(list.prefixes[0].prefix.length, 128);
  EXPECT_EQ(ports(list.prefixes[0]), std::vector<uint16_t>{443});
  EXPECT_EQ(list.prefixes[1].prefix.address, addr("203.0.113.0").bytes());
  EXPECT_EQ(list.prefixes[1].prefix.length, 96 + 24);
  EXPECT_EQ(ports(list.prefixes[1]), std::vector<uint16_t>{8080});
  EXPECT_EQ(ports(list.prefixes[2]), std::vector<uint16_t>{1});
  EXPECT_EQ(ports(list.prefixes[3]), std::vector<uint16_t>{65535});
}

TEST(ParseAllowlist, BracketedIpv6WithPort) {
  Allowlist list = parse({"[2001:db8::1]:443", "[2001:db8:1::/48]:53"});
  ASSERT_EQ(list.prefixes.size(), 2u);
  EXPECT_EQ(list.prefixes[0].prefix.address, addr("2001:db8::1").bytes());
  EXPECT_EQ(list.prefixes[0].prefix.length, 128);
  EXPECT_EQ(ports(list.prefixes[0]), std::vector<uint16_t>{443});
  EXPECT_EQ(list.prefixes[1].prefix.address, addr("2001:db8:1::").bytes());
  EXPECT_EQ(list.prefixes[1].prefix.length, 48);
  EXPECT_EQ(ports(list.prefixes[1]), std::vector<uint16_t>{53});
}

TEST(ParseAllowlist, HostnamesAndDomains) {
  Allowlist list =
      parse({"api.example.com", "*.example.org", "Mixed.Case.NET.", "_srv.x-y.io", "localhost"});
  EXPECT_EQ(list.prefixes.size(), 0u);
  ASSERT_EQ(list.names.size(), 5u);
  EXPECT_EQ(list.names[0].name, "api.example.com");
  EXPECT_FALSE(list.names[0].subdomains);
  EXPECT_EQ(list.names[1].name, "example.org");
  EXPECT_TRUE(list.names[1].subdomains);
  EXPECT_EQ(list.names[2].name, "mixed.case.net");  // lower case, final dot gone
  EXPECT_FALSE(list.names[2].subdomains);
  EXPECT_EQ(list.names[3].name, "_srv.x-y.io");
  EXPECT_EQ(list.names[4].name, "localhost");
}

TEST(ParseAllowlist, MixedEntriesKeepTheirKinds) {
  Allowlist list = parse({"10.0.0.0/8", "example.com", "[::1]:22", "*.corp.example"});
  EXPECT_EQ(list.prefixes.size(), 2u);
  EXPECT_EQ(list.names.size(), 2u);
  EXPECT_TRUE(list.allowsName("example.com"));
  EXPECT_TRUE(list.allowsName("x.corp.example"));
  EXPECT_FALSE(list.allowsName("corp.example"));
}

// ---------------------------------------------------------------------------
// Merging

TEST(ParseAllowlist, PortsOfTheSamePrefixAreMerged) {
  Allowlist list = parse({"198.51.100.7:443", "198.51.100.7:80", "198.51.100.7:443",
                          "::ffff:198.51.100.7", "203.0.113.1:22"});
  // "::ffff:198.51.100.7" is the same host and has no port: every port.
  ASSERT_EQ(list.prefixes.size(), 2u);
  const ebpf::AllowRule* seven = findRule(list, "198.51.100.7");
  ASSERT_NE(seven, nullptr);
  EXPECT_EQ(seven->ports.size(), 0u);

  Allowlist merged = parse({"198.51.100.7:443", "198.51.100.7:80", "198.51.100.7:443"});
  ASSERT_EQ(merged.prefixes.size(), 1u);
  EXPECT_EQ(ports(merged.prefixes[0]), (std::vector<uint16_t>{80, 443}));
}

TEST(ParseAllowlist, SameIpv6PrefixSpelledDifferentlyIsMerged) {
  Allowlist list = parse({"[2001:db8::/32]:443", "[2001:0DB8:0000::/32]:80"});
  ASSERT_EQ(list.prefixes.size(), 1u);
  EXPECT_EQ(ports(list.prefixes[0]), (std::vector<uint16_t>{80, 443}));
}

TEST(ParseAllowlist, DifferentLengthsAreDifferentRules) {
  Allowlist list = parse({"10.0.0.0/8:443", "10.0.0.0/16:80", "10.0.0.0:22"});
  ASSERT_EQ(list.prefixes.size(), 3u);
  EXPECT_EQ(ports(*findRule(list, "10.0.0.0/8")), std::vector<uint16_t>{443});
  EXPECT_EQ(ports(*findRule(list, "10.0.0.0/16")), std::vector<uint16_t>{80});
  EXPECT_EQ(ports(*findRule(list, "10.0.0.0/32")), std::vector<uint16_t>{22});
}

TEST(ParseAllowlist, BarePrefixAfterPortsWidensToEveryPort) {
  Allowlist list = parse({"198.51.100.0/24:443", "198.51.100.0/24:80", "198.51.100.0/24"});
  ASSERT_EQ(list.prefixes.size(), 1u);
  EXPECT_EQ(list.prefixes[0].ports.size(), 0u);

  Allowlist v6 = parse({"[2001:db8::/32]:443", "2001:db8::/32"});
  ASSERT_EQ(v6.prefixes.size(), 1u);
  EXPECT_EQ(v6.prefixes[0].ports.size(), 0u);
}

TEST(ParseAllowlist, PortAfterBarePrefixStaysEveryPort) {
  Allowlist list = parse({"198.51.100.0/24", "198.51.100.0/24:443", "198.51.100.0/24:80"});
  ASSERT_EQ(list.prefixes.size(), 1u);
  EXPECT_EQ(list.prefixes[0].ports.size(), 0u);
}

TEST(ParseAllowlist, AtMostMaxPortsPerPrefix) {
  std::vector<std::string> entries;
  for (unsigned i = 0; i < NA_MAX_PORTS; ++i)
    entries.push_back("192.0.2.1:" + std::to_string(1000 + i));
  entries.push_back("192.0.2.1:1000");  // a repeat does not count
  Allowlist list = parse(entries);
  ASSERT_EQ(list.prefixes.size(), 1u);
  EXPECT_EQ(list.prefixes[0].ports.size(), size_t(NA_MAX_PORTS));

  // Another prefix has its own budget.
  entries.push_back("192.0.2.2:1");
  EXPECT_EQ(parse(entries).prefixes.size(), 2u);

  entries.push_back("192.0.2.1:2000");
  std::string message = expectInvalid(entries, "one port too many");
  EXPECT_NE(message.find("192.0.2.1:2000"), std::string::npos) << message;

  // Widening to every port is still possible with a full port set.
  entries.pop_back();
  entries.push_back("192.0.2.1");
  Allowlist widened = parse(entries);
  EXPECT_EQ(findRule(widened, "192.0.2.1")->ports.size(), 0u);
}

TEST(ParseAllowlist, AtMostMaxEntries) {
  std::vector<std::string> entries;
  for (unsigned i = 0; i < kMaxAllowEntries; ++i) {
    entries.push_back("10." + std::to_string(i / 256) + "." + std::to_string(i % 256) + ".1");
  }
  EXPECT_EQ(parse(entries).prefixes.size(), kMaxAllowEntries);
  entries.push_back("example.com");
  expectInvalid(entries, "257 entries");
  // The same (even a repeated) entry counts each time.
  std::vector<std::string> repeated(kMaxAllowEntries + 1, "example.com");
  expectInvalid(repeated, "257 copies");
}

// ---------------------------------------------------------------------------
// Hostile entries

TEST(ParseAllowlist, RefusesMalformedEntries) {
  std::string longLabel(64, 'a');
  std::string label63(63, 'b');
  // 4 labels of 63 and dots: 255 characters; 254 with one label shorter.
  std::string name254 = label63 + "." + label63 + "." + label63 + "." + std::string(62, 'c');
  ASSERT_EQ(name254.size(), 254u);
  const std::vector<std::string> bad = {
      "",
      "*",
      "*.",
      "**",
      "*.*.a",
      "*.a.*",
      "a.*.com",
      "*example.com",
      ".example.com",
      ".",
      "..",
      "a..b",
      "-a.com",
      "a-.com",
      "a.-b.com",
      "a.b-.com",
      longLabel + ".com",
      "*." + longLabel,
      name254,
      "exa mple.com",
      " example.com",
      "example.com ",
      "ex\nample.com",
      "ex\tample",
      "example.com\r",
      "ex/ample.com",
      "ex@mple.com",
      "example.com/24",
      "http://example.com",
      "example.com:443",
      "b\xc3\xbc"
      "cher.de",
      "\xff\xfe",
      "xn--bcher-kva.de\x80",
      "1.2.3.4:0",
      "1.2.3.4:00",
      ":80",
      ":",
      "1.2.3.4:",
      "1.2.3.4:65536",
      "1.2.3.4:99999",
      "1.2.3.4:100000",
      "1.2.3.4:-1",
      "1.2.3.4:+80",
      "1.2.3.4:8a",
      "1.2.3.4:80:80",
      "1.2.3.4::80",
      "1.2.3",
      "1.2.3.4.5",
      "256.1.1.1",
      "123",
      "1.2.3.4/33",
      "1.2.3.4/24",
      "1.2.3.0/24/24",
      "1.2.3.4/",
      "1.2.3.4/abc",
      "10.0.0.1/8:443",
      "[::1",
      "[::1]80",
      "[::1]",
      "[::1]:",
      "[::1]:0",
      "[::1]:65536",
      "[::1]:http",
      "[::1]:80:80",
      "[]:80",
      "[:80",
      "]:80",
      "[[::1]]:80",
      "[::1/129]:80",
      "[2001:db8::1/32]:443",
      "[fe80::1%eth0]:80",
      "fe80::1%eth0",
      "2001:db8::/129",
      "2001:db8::1/64",
      "2001:db8:::1",
      ":::",
      "::g",
  };
  for (const std::string& entry : bad) expectInvalid({entry}, "\"" + escaped(entry) + "\"");
}

TEST(ParseAllowlist, LongestValidNamesAreAccepted) {
  std::string label63(63, 'b');
  std::string name253 = label63 + "." + label63 + "." + label63 + "." + std::string(61, 'c');
  ASSERT_EQ(name253.size(), 253u);
  Allowlist list = parse({label63 + ".com", name253, name253 + ".", "*." + label63});
  ASSERT_EQ(list.names.size(), 4u);
  EXPECT_EQ(list.names[1].name, name253);
  EXPECT_EQ(list.names[2].name, name253);
}

TEST(ParseAllowlist, ErrorNamesTheFirstBadEntry) {
  std::string message = expectInvalid({"example.com", "bad..name", "also bad"}, "two bad entries");
  EXPECT_NE(message.find("bad..name"), std::string::npos) << message;
  EXPECT_EQ(message.find("also bad"), std::string::npos) << message;
}

TEST(ParseAllowlist, ErrorIsTypedInvalidArgument) {
  KJ_IF_MAYBE (e, parseError({"a..b"})) {
    auto code = KJ_ASSERT_NONNULL(apiErrorCode(*e));
    EXPECT_EQ(code, api::ErrorCode::INVALID_ARGUMENT);
    EXPECT_EQ(kj::StringPtr(errorCodeName(code)), "invalidArgument");
  } else {
    FAIL() << "accepted a..b";
  }
}

TEST(ParseAllowlist, EmbeddedNulIsRefused) {
  // An entry is a capnp Text that may hold NUL bytes; what follows a NUL must
  // not be silently dropped (the tenant asked for something else).
  const std::vector<std::string> withNul = {
      std::string("example.com\0.evil.net", 21),
      std::string("198.51.100.7\0/8", 15),
      std::string("*.example.com\0x", 15),
      std::string("\0", 1),
  };
  for (const std::string& entry : withNul) expectInvalid({entry}, escaped(entry));
}

// ---------------------------------------------------------------------------
// Names

TEST(Allowlist, ExactNameMatchesOnlyItself) {
  Allowlist list = parse({"api.example.com"});
  EXPECT_TRUE(list.allowsName("api.example.com"));
  EXPECT_FALSE(list.allowsName("example.com"));
  EXPECT_FALSE(list.allowsName("x.api.example.com"));
  EXPECT_FALSE(list.allowsName("xapi.example.com"));
  EXPECT_FALSE(list.allowsName("api.example.co"));
  EXPECT_FALSE(list.allowsName("api.example.com.evil.net"));
  EXPECT_FALSE(list.allowsName(""));
}

TEST(Allowlist, WildcardMatchesSubdomainsOnly) {
  Allowlist list = parse({"*.example.com"});
  EXPECT_TRUE(list.allowsName("a.example.com"));
  EXPECT_TRUE(list.allowsName("a.b.example.com"));
  EXPECT_TRUE(list.allowsName("x-1.y_2.example.com"));
  EXPECT_FALSE(list.allowsName("example.com"));
  EXPECT_FALSE(list.allowsName("badexample.com"));
  EXPECT_FALSE(list.allowsName("a.badexample.com"));
  EXPECT_FALSE(list.allowsName(".example.com"));  // nothing before the dot
  EXPECT_FALSE(list.allowsName("example.com.evil.net"));
  EXPECT_FALSE(list.allowsName("a.example.co"));
  EXPECT_FALSE(list.allowsName("a.example.org"));
  EXPECT_FALSE(list.allowsName("xample.com"));
  EXPECT_FALSE(list.allowsName("com"));
  EXPECT_FALSE(list.allowsName(""));
}

TEST(Allowlist, ExactAndWildcardTogether) {
  Allowlist list = parse({"example.com", "*.example.com"});
  EXPECT_TRUE(list.allowsName("example.com"));
  EXPECT_TRUE(list.allowsName("www.example.com"));
  EXPECT_FALSE(list.allowsName("wwwexample.com"));
}

TEST(Allowlist, PatternsAreStoredLowerCase) {
  Allowlist list = parse({"API.Example.COM", "*.CDN.Example.NET."});
  EXPECT_TRUE(list.allowsName("api.example.com"));
  EXPECT_TRUE(list.allowsName("edge.cdn.example.net"));
  // allowsName takes a normalized name: the caller lower-cases first.
  KJ_IF_MAYBE (n, normalizeHostname("EDGE.Cdn.Example.Net.")) {
    EXPECT_TRUE(list.allowsName(*n));
  } else {
    ADD_FAILURE() << "normalizeHostname refused a valid name";
  }
}

TEST(NormalizeHostname, LowercasesAndStripsOneTrailingDot) {
  auto n = [](const char* text) -> std::string {
    KJ_IF_MAYBE (s, normalizeHostname(text)) {
      return *s;
    }
    return "<null>";
  };
  EXPECT_EQ(n("Example.COM"), "example.com");
  EXPECT_EQ(n("example.com."), "example.com");
  EXPECT_EQ(n("example.com.."), "<null>");  // only one dot is stripped
  EXPECT_EQ(n("A"), "a");
  EXPECT_EQ(n("a-b_c.d0"), "a-b_c.d0");
  EXPECT_EQ(n("0.1"), "0.1");
  EXPECT_EQ(n(""), "<null>");
  EXPECT_EQ(n("."), "<null>");
  EXPECT_EQ(n(".a"), "<null>");
  EXPECT_EQ(n("a..b"), "<null>");
  EXPECT_EQ(n("-a"), "<null>");
  EXPECT_EQ(n("a-"), "<null>");
  EXPECT_EQ(n("a.-b"), "<null>");
  EXPECT_EQ(n("*.a"), "<null>");
  EXPECT_EQ(n("a b"), "<null>");
  EXPECT_EQ(n("\xc3\x84.de"), "<null>");
  EXPECT_EQ(n(std::string(63, 'x').c_str()), std::string(63, 'x'));
  EXPECT_EQ(n(std::string(64, 'x').c_str()), "<null>");
  std::string name253 = std::string(63, 'a') + "." + std::string(63, 'a') + "." +
                        std::string(63, 'a') + "." + std::string(61, 'a');
  EXPECT_EQ(n(name253.c_str()), name253);
  EXPECT_EQ(n((name253 + ".").c_str()), name253);
  EXPECT_EQ(n((name253 + "a").c_str()), "<null>");
}

// ---------------------------------------------------------------------------
// Always denied

TEST(BuiltinDeniedPrefixes, AllParseAndCoverTheUsualSuspects) {
  auto builtin = builtinDeniedPrefixes();
  ASSERT_GT(builtin.size(), 0u);
  std::vector<IpPrefix> parsed;
  for (kj::StringPtr text : builtin) {
    KJ_IF_MAYBE (p, IpPrefix::parse(text)) {
      parsed.push_back(*p);
      EXPECT_EQ(p->toString(), text.cStr()) << "not canonical";
    } else {
      ADD_FAILURE() << "does not parse: " << text.cStr();
    }
  }
  auto denied = [&](const char* a) {
    IpAddress address = addr(a);
    return std::any_of(parsed.begin(), parsed.end(),
                       [&](const IpPrefix& p) { return p.contains(address); });
  };
  for (const char* a : {"0.0.0.0",
                        "10.1.2.3",
                        "100.64.0.1",
                        "127.0.0.1",
                        "169.254.169.254",
                        "172.16.0.1",
                        "172.31.255.255",
                        "192.168.1.1",
                        "192.0.0.1",
                        "198.18.0.1",
                        "224.0.0.1",
                        "239.255.255.250",
                        "240.0.0.1",
                        "255.255.255.255",
                        "::ffff:169.254.169.254",
                        "::",
                        "::1",
                        "::a9fe:a9fe",
                        "fe80::1",
                        "fd00:ec2::254",
                        "fc00::1",
                        "ff02::1",
                        "fec0::1",
                        "2002:a9fe:a9fe::1",
                        "2001::1",
                        "64:ff9b:1::a9fe:a9fe"}) {
    EXPECT_TRUE(denied(a)) << a;
  }
  for (const char* a : {"8.8.8.8", "1.1.1.1", "198.51.100.7", "172.32.0.1", "100.128.0.1",
                        "2001:db8::1", "2606:4700::1111", "2a00:1450::1"}) {
    EXPECT_FALSE(denied(a)) << a;
  }
}

TEST(AlwaysDeniedRules, BuiltinsOnlyByDefault) {
  auto rules = alwaysDeniedRules({});
  auto builtin = builtinDeniedPrefixes();
  ASSERT_EQ(rules.size(), builtin.size());
  for (size_t i = 0; i < builtin.size(); ++i) {
    IpPrefix p = prefix(builtin[i].cStr());
    EXPECT_EQ(rules[i].prefix.address, p.address().bytes()) << builtin[i].cStr();
    EXPECT_EQ(rules[i].prefix.length, p.length()) << builtin[i].cStr();
    EXPECT_FALSE(rules[i].allow) << builtin[i].cStr();
  }
}

TEST(AlwaysDeniedRules, AddsExtrasPoolsHostsThenExceptions) {
  AlwaysDeniedInputs inputs;
  inputs.extraDenied = {prefix("203.0.113.0/24"), prefix("2001:db8:dead::/48")};
  inputs.pools = {prefix("10.88.0.0/16"), prefix("fd88::/64")};
  inputs.hostAddresses = {addr("192.0.2.10"), addr("2001:db8::10")};
  inputs.operatorAllowed = {prefix("10.0.5.0/24"), prefix("169.254.169.254")};
  auto rules = alwaysDeniedRules(inputs);
  size_t builtins = builtinDeniedPrefixes().size();
  ASSERT_EQ(rules.size(), builtins + 2 + 2 + 2 + 2);

  auto expectRule = [&](size_t i, const IpPrefix& p, bool allow) {
    SCOPED_TRACE(p.toString());
    ASSERT_LT(i, rules.size());
    EXPECT_EQ(rules[i].prefix.address, p.address().bytes());
    EXPECT_EQ(rules[i].prefix.length, p.length());
    EXPECT_EQ(rules[i].allow, allow);
  };
  size_t i = builtins;
  expectRule(i++, prefix("203.0.113.0/24"), false);
  expectRule(i++, prefix("2001:db8:dead::/48"), false);
  expectRule(i++, prefix("10.88.0.0/16"), false);
  expectRule(i++, prefix("fd88::/64"), false);
  // Host addresses as /128 rules (an IPv4 host is 96 + 32).
  expectRule(i, prefix("192.0.2.10"), false);
  EXPECT_EQ(rules[i].prefix.length, 128);
  ++i;
  expectRule(i, prefix("2001:db8::10"), false);
  EXPECT_EQ(rules[i].prefix.length, 128);
  ++i;
  // The operator's exceptions last, as allow rules.
  expectRule(i++, prefix("10.0.5.0/24"), true);
  expectRule(i++, prefix("169.254.169.254/32"), true);
  EXPECT_EQ(i, rules.size());

  // Nothing but the operator's exceptions is an allow rule.
  size_t allows = 0;
  for (const auto& r : rules) allows += r.allow ? 1 : 0;
  EXPECT_EQ(allows, 2u);
}

}  // namespace
}  // namespace nodeagent
