// Unit tests of util/ip_prefix: the 16-byte address form every network
// table of the agent is keyed by.
#include "util/ip_prefix.h"

#include <gtest/gtest.h>

#include <string>

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

bool parses(const char* text) {
  return IpAddress::parse(text) != nullptr;
}
bool prefixParses(const std::string& text) {
  return IpPrefix::parse(text.c_str()) != nullptr;
}

TEST(IpAddress, ParsesIpv4AsMapped) {
  IpAddress a = addr("10.1.2.3");
  EXPECT_TRUE(a.isV4());
  EXPECT_EQ(a.v4(), 0x0a010203u);
  std::array<uint8_t, 16> expected{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3};
  EXPECT_EQ(a.bytes(), expected);
  EXPECT_EQ(a.toString(), "10.1.2.3");
  EXPECT_EQ(a, IpAddress::fromV4(0x0a010203u));
}

TEST(IpAddress, ParsesIpv6) {
  IpAddress a = addr("2001:db8::1");
  EXPECT_FALSE(a.isV4());
  std::array<uint8_t, 16> expected{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  EXPECT_EQ(a.bytes(), expected);
  EXPECT_EQ(a.toString(), "2001:db8::1");
  EXPECT_EQ(a, IpAddress::fromV6(expected.data()));
}

TEST(IpAddress, MappedIpv6IsTheIpv4Address) {
  IpAddress mapped = addr("::ffff:1.2.3.4");
  EXPECT_TRUE(mapped.isV4());
  EXPECT_EQ(mapped, addr("1.2.3.4"));
  EXPECT_EQ(mapped.toString(), "1.2.3.4");
  EXPECT_EQ(addr("::FFFF:0102:0304"), addr("1.2.3.4"));
}

TEST(IpAddress, NotMappedIsNotIpv4) {
  // IPv4-compatible (::1.2.3.4), NAT64 and near-misses of the mapped prefix.
  EXPECT_FALSE(addr("::1.2.3.4").isV4());
  EXPECT_FALSE(addr("64:ff9b::1.2.3.4").isV4());
  EXPECT_FALSE(addr("::fffe:1.2.3.4").isV4());
  EXPECT_FALSE(addr("::ff:1.2.3.4").isV4());
  EXPECT_FALSE(addr("::ff00:1.2.3.4").isV4());
  EXPECT_FALSE(addr("1::ffff:1.2.3.4").isV4());
  EXPECT_FALSE(addr("::").isV4());
  EXPECT_FALSE(addr("::1").isV4());
  EXPECT_FALSE(IpAddress().isV4());
}

TEST(IpAddress, RejectsGarbage) {
  for (const char* bad : {"",
                          " ",
                          "1.2.3",
                          "1.2.3.4.5",
                          "1.2.3.256",
                          "256.0.0.0",
                          "1.2.3.-1",
                          " 1.2.3.4",
                          "1.2.3.4 ",
                          "1.2.3.4\n",
                          "1.2.3.4/32",
                          "a.b.c.d",
                          "0x01.2.3.4",
                          "localhost",
                          ":",
                          ":::",
                          "1:2:3:4:5:6:7:8:9",
                          "2001:db8::1::2",
                          "2001:db8:::1",
                          "[::1]",
                          "[2001:db8::1]",
                          "fe80::1%eth0",
                          "fe80::1%1",
                          "::1%lo",
                          "12345::",
                          "g::1",
                          "::ffff:1.2.3.256",
                          "1.2.3.4:80",
                          "\xff\xfe",
                          "1.2.3.\xc3\xa4"}) {
    EXPECT_FALSE(parses(bad)) << "accepted \"" << bad << "\"";
  }
}

TEST(IpAddress, ToStringRoundTrips) {
  for (const char* text :
       {"0.0.0.0", "255.255.255.255", "10.0.0.1", "192.168.100.200", "::", "::1", "2001:db8::1",
        "fe80::1:2:3:4", "2001:db8:0:1:2:3:4:5", "ff02::fb", "64:ff9b::102:304", "fd00:ec2::254",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"}) {
    IpAddress a = addr(text);
    EXPECT_EQ(a.toString(), text);
    EXPECT_EQ(addr(a.toString().c_str()), a) << text;
  }
  // Non-canonical spellings come back canonical and parse to the same bytes.
  EXPECT_EQ(addr("2001:0DB8:0000:0000:0000:0000:0000:0001").toString(), "2001:db8::1");
  EXPECT_EQ(addr("::ffff:10.0.0.1").toString(), "10.0.0.1");
}

TEST(IpAddress, OrderingIsByBytes) {
  EXPECT_LT(addr("10.0.0.1"), addr("10.0.0.2"));
  EXPECT_LT(addr("10.0.0.255"), addr("10.0.1.0"));
  EXPECT_LT(addr("::1"), addr("1.2.3.4"));  // ::ffff:... sorts after ::1
  EXPECT_LT(addr("1.2.3.4"), addr("2001:db8::"));
  EXPECT_NE(addr("10.0.0.1"), addr("10.0.0.2"));
  EXPECT_FALSE(addr("10.0.0.1") < addr("10.0.0.1"));
}

TEST(IpAddress, PlusCarriesAcrossBytes) {
  EXPECT_EQ(addr("10.0.0.1").plus(0), addr("10.0.0.1"));
  EXPECT_EQ(addr("10.0.0.1").plus(1), addr("10.0.0.2"));
  EXPECT_EQ(addr("10.0.0.255").plus(1), addr("10.0.1.0"));
  EXPECT_EQ(addr("10.0.255.255").plus(1), addr("10.1.0.0"));
  EXPECT_EQ(addr("10.255.255.255").plus(1), addr("11.0.0.0"));
  EXPECT_EQ(addr("10.0.0.0").plus(256), addr("10.0.1.0"));
  EXPECT_EQ(addr("10.0.0.200").plus(100), addr("10.0.1.44"));
  EXPECT_EQ(addr("10.0.0.0").plus(0x010203), addr("10.1.2.3"));
  EXPECT_EQ(addr("0.0.0.0").plus(0xffffffffu), addr("255.255.255.255"));
  EXPECT_EQ(addr("10.0.0.1").plus(65535).toString(), "10.1.0.0");

  EXPECT_EQ(addr("2001:db8::ffff").plus(1), addr("2001:db8::1:0"));
  EXPECT_EQ(addr("2001:db8::ffff:ffff:ffff:ffff").plus(1), addr("2001:db8:0:1::"));
  EXPECT_EQ(addr("::").plus(0x0102030405060708ull), addr("::102:304:506:708"));
  EXPECT_EQ(addr("::ff").plus(UINT64_MAX), addr("::1:0:0:0:fe"));
  // The full 128 bits carry (and wrap).
  EXPECT_EQ(addr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").plus(1), addr("::"));
  EXPECT_EQ(addr("0:0:0:0:ffff:ffff:ffff:ffff").plus(1), addr("0:0:0:1::"));
}

TEST(IpPrefix, ParsesIpv4Cidr) {
  IpPrefix p = prefix("10.0.0.0/8");
  EXPECT_TRUE(p.isV4());
  EXPECT_EQ(p.length(), 104);
  EXPECT_EQ(p.familyLength(), 8);
  EXPECT_EQ(p.address(), addr("10.0.0.0"));
  EXPECT_EQ(p.toString(), "10.0.0.0/8");
  EXPECT_EQ(p.size(), 1ull << 24);

  IpPrefix q = prefix("198.51.100.0/24");
  EXPECT_EQ(q.familyLength(), 24);
  EXPECT_EQ(q.size(), 256u);
  EXPECT_EQ(q.toString(), "198.51.100.0/24");
}

TEST(IpPrefix, ParsesIpv6Cidr) {
  IpPrefix p = prefix("2001:db8::/32");
  EXPECT_FALSE(p.isV4());
  EXPECT_EQ(p.length(), 32);
  EXPECT_EQ(p.familyLength(), 32);
  EXPECT_EQ(p.toString(), "2001:db8::/32");
  EXPECT_EQ(prefix("fe80::/10").toString(), "fe80::/10");
  EXPECT_EQ(prefix("2001:db8::1/128").familyLength(), 128);
}

TEST(IpPrefix, BareAddressIsAHostPrefix) {
  IpPrefix v4 = prefix("1.2.3.4");
  EXPECT_TRUE(v4.isV4());
  EXPECT_EQ(v4.familyLength(), 32);
  EXPECT_EQ(v4.length(), 128);
  EXPECT_EQ(v4.size(), 1u);
  EXPECT_EQ(v4.toString(), "1.2.3.4/32");

  IpPrefix v6 = prefix("2001:db8::1");
  EXPECT_FALSE(v6.isV4());
  EXPECT_EQ(v6.familyLength(), 128);
  EXPECT_EQ(v6.size(), 1u);
  EXPECT_EQ(v6.toString(), "2001:db8::1/128");

  // A mapped address is the IPv4 host.
  IpPrefix mapped = prefix("::ffff:1.2.3.4");
  EXPECT_TRUE(mapped.isV4());
  EXPECT_EQ(mapped.familyLength(), 32);
  EXPECT_EQ(mapped.toString(), "1.2.3.4/32");
}

TEST(IpPrefix, DefaultRoutes) {
  IpPrefix all6 = prefix("::/0");
  EXPECT_FALSE(all6.isV4());
  EXPECT_EQ(all6.length(), 0);
  EXPECT_EQ(all6.familyLength(), 0);
  EXPECT_EQ(all6.toString(), "::/0");
  EXPECT_EQ(all6.size(), 1ull << 63);  // saturated
  EXPECT_TRUE(all6.contains(addr("2001:db8::1")));
  EXPECT_TRUE(all6.contains(addr("1.2.3.4")));  // everything, mapped too

  IpPrefix all4 = prefix("0.0.0.0/0");
  EXPECT_TRUE(all4.isV4());
  EXPECT_EQ(all4.length(), 96);
  EXPECT_EQ(all4.familyLength(), 0);
  EXPECT_EQ(all4.toString(), "0.0.0.0/0");
  EXPECT_EQ(all4.size(), 1ull << 32);
  EXPECT_TRUE(all4.contains(addr("1.2.3.4")));
  EXPECT_TRUE(all4.contains(addr("255.255.255.255")));
  EXPECT_TRUE(all4.contains(addr("::ffff:8.8.8.8")));
  EXPECT_FALSE(all4.contains(addr("2001:db8::1")));
  EXPECT_FALSE(all4.contains(addr("::1")));
  EXPECT_FALSE(all4.contains(addr("::1.2.3.4")));  // IPv4-compatible is not IPv4
}

TEST(IpPrefix, RejectsHostBits) {
  EXPECT_FALSE(prefixParses("10.0.0.1/8"));
  EXPECT_TRUE(prefixParses("10.128.0.0/9"));
  EXPECT_FALSE(prefixParses("10.128.0.0/8"));
  EXPECT_FALSE(prefixParses("192.168.1.1/24"));
  EXPECT_FALSE(prefixParses("0.0.0.1/0"));
  EXPECT_FALSE(prefixParses("2001:db8::1/64"));
  EXPECT_FALSE(prefixParses("2001:db8::/16"));
  EXPECT_FALSE(prefixParses("::1/0"));
  EXPECT_TRUE(prefixParses("2001:db8::/29"));
  EXPECT_FALSE(prefixParses("2001:db8::/28"));
}

TEST(IpPrefix, RejectsMalformedLengths) {
  for (const char* bad : {"1.2.3.4/33",
                          "0.0.0.0/33",
                          "10.0.0.0/99",
                          "10.0.0.0/255",
                          "10.0.0.0/256",
                          "10.0.0.0/1000",
                          "10.0.0.0/4294967304",
                          "::/129",
                          "::/200",
                          "1.2.3.4/",
                          "::/",
                          "1.2.3.4/abc",
                          "10.0.0.0/8a",
                          "10.0.0.0/a8",
                          "10.0.0.0/-8",
                          "10.0.0.0/+8",
                          "10.0.0.0/ 8",
                          "10.0.0.0/8 ",
                          "10.0.0.0//8",
                          "10.0.0.0/8/8",
                          "10.0.0.0/0x8",
                          "10.0.0.0/0008",
                          "/8",
                          "/",
                          "",
                          "10.0.0.0 /8",
                          "10.0.0/8",
                          "[::]/0",
                          "[::/0]",
                          "fe80::%eth0/64",
                          "fe80::/10%eth0",
                          "10.0.0.0/８"}) {
    EXPECT_FALSE(prefixParses(bad)) << "accepted \"" << bad << "\"";
  }
  EXPECT_TRUE(prefixParses("1.2.3.4/32"));
  EXPECT_TRUE(prefixParses("::/128"));
  EXPECT_TRUE(prefixParses("::1/128"));
}

TEST(IpPrefix, ToStringRoundTrips) {
  for (const char* text :
       {"0.0.0.0/0", "10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "192.0.2.0/24",
        "203.0.113.7/32", "::/0", "::/96", "::1/128", "2001:db8::/32", "fc00::/7", "fe80::/10",
        "ff00::/8", "64:ff9b:1::/48", "2001:db8:1:2:3:4:5:6/128"}) {
    IpPrefix p = prefix(text);
    EXPECT_EQ(p.toString(), text);
    IpPrefix again = prefix(p.toString().c_str());
    EXPECT_EQ(again.address(), p.address());
    EXPECT_EQ(again.length(), p.length());
  }
}

TEST(IpPrefix, ContainsMappedIpv6InsideIpv4Prefix) {
  IpPrefix ten = prefix("10.0.0.0/8");
  EXPECT_TRUE(ten.contains(addr("10.0.0.0")));
  EXPECT_TRUE(ten.contains(addr("10.255.255.255")));
  EXPECT_TRUE(ten.contains(addr("::ffff:10.1.2.3")));
  EXPECT_TRUE(ten.contains(addr("::ffff:a01:203")));
  EXPECT_FALSE(ten.contains(addr("11.0.0.0")));
  EXPECT_FALSE(ten.contains(addr("9.255.255.255")));
  EXPECT_FALSE(ten.contains(addr("::a01:203")));  // IPv4-compatible, not mapped
  EXPECT_FALSE(ten.contains(addr("::ffff:11.0.0.1")));

  IpPrefix host = prefix("192.0.2.7");
  EXPECT_TRUE(host.contains(addr("192.0.2.7")));
  EXPECT_FALSE(host.contains(addr("192.0.2.6")));
  EXPECT_FALSE(host.contains(addr("192.0.2.8")));

  IpPrefix doc = prefix("2001:db8::/32");
  EXPECT_TRUE(doc.contains(addr("2001:db8::1")));
  EXPECT_TRUE(doc.contains(addr("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")));
  EXPECT_FALSE(doc.contains(addr("2001:db9::")));
  EXPECT_FALSE(doc.contains(addr("10.0.0.1")));

  IpPrefix odd = prefix("172.16.0.0/12");
  EXPECT_TRUE(odd.contains(addr("172.31.255.255")));
  EXPECT_FALSE(odd.contains(addr("172.32.0.0")));
  EXPECT_FALSE(odd.contains(addr("172.15.255.255")));
}

TEST(IpPrefix, ConstructorClearsHostBitsAndClampsLength) {
  IpPrefix p(addr("10.1.2.3"), 96 + 16);
  EXPECT_EQ(p.address(), addr("10.1.0.0"));
  EXPECT_EQ(p.familyLength(), 16);
  EXPECT_EQ(p.toString(), "10.1.0.0/16");

  IpPrefix q(addr("2001:db8::ff"), 126);
  EXPECT_EQ(q.address(), addr("2001:db8::fc"));

  IpPrefix clamped(addr("2001:db8::1"), 200);
  EXPECT_EQ(clamped.length(), 128);
  EXPECT_EQ(clamped.address(), addr("2001:db8::1"));

  IpPrefix zero(addr("10.1.2.3"), 0);
  EXPECT_EQ(zero.address(), IpAddress());
  EXPECT_FALSE(zero.isV4());
  EXPECT_EQ(zero.toString(), "::/0");
}

TEST(IpPrefix, SizeAndSaturation) {
  EXPECT_EQ(prefix("10.0.0.0/31").size(), 2u);
  EXPECT_EQ(prefix("10.0.0.0/30").size(), 4u);
  EXPECT_EQ(prefix("100.64.0.0/10").size(), 1ull << 22);
  EXPECT_EQ(prefix("2001:db8::/120").size(), 256u);
  EXPECT_EQ(prefix("2001:db8::/66").size(), 1ull << 62);
  EXPECT_EQ(prefix("2001:db8::/65").size(), 1ull << 63);
  EXPECT_EQ(prefix("2001:db8::/64").size(), 1ull << 63);  // 2^64: saturated
  EXPECT_EQ(prefix("2001:db8::/32").size(), 1ull << 63);
}

TEST(IpPrefix, FamilyLengthOfEveryIpv4Length) {
  for (unsigned length = 0; length <= 32; ++length) {
    std::string text = "0.0.0.0/" + std::to_string(length);
    IpPrefix p = prefix(text.c_str());
    EXPECT_TRUE(p.isV4()) << text;
    EXPECT_EQ(p.familyLength(), length) << text;
    EXPECT_EQ(p.length(), 96 + length) << text;
    EXPECT_EQ(p.size(), 1ull << (32 - length)) << text;
    EXPECT_EQ(p.toString(), text);
  }
  for (unsigned length = 0; length <= 128; ++length) {
    std::string text = "::/" + std::to_string(length);
    IpPrefix p = prefix(text.c_str());
    EXPECT_EQ(p.familyLength(), length) << text;
    EXPECT_EQ(p.toString(), text);
  }
}

}  // namespace
}  // namespace nodeagent
