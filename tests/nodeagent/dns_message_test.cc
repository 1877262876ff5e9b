// Unit tests of nodeagent/dns_message: the DNS wire format the agent's
// resolver reads from sandboxes (queries) and from upstream (answers). Every
// packet is built by hand here; every malformed one must be null, never a
// crash (the ASan build runs these too).
#include "nodeagent/dns_message.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace nodeagent::dns {
namespace {

using Bytes = std::vector<uint8_t>;

// Writes DNS wire format.
class Wire {
 public:
  Wire& u8(uint8_t v) {
    b_.push_back(v);
    return *this;
  }
  Wire& u16(uint16_t v) { return u8(uint8_t(v >> 8)).u8(uint8_t(v)); }
  Wire& u32(uint32_t v) { return u16(uint16_t(v >> 16)).u16(uint16_t(v)); }
  Wire& raw(const Bytes& bytes) {
    b_.insert(b_.end(), bytes.begin(), bytes.end());
    return *this;
  }
  // One label, any bytes.
  Wire& label(const std::string& l) {
    u8(uint8_t(l.size()));
    b_.insert(b_.end(), l.begin(), l.end());
    return *this;
  }
  // A dotted name, uncompressed, with its root label.
  Wire& name(const std::string& dotted) {
    size_t start = 0;
    while (start < dotted.size()) {
      size_t dot = dotted.find('.', start);
      if (dot == std::string::npos) dot = dotted.size();
      label(dotted.substr(start, dot - start));
      start = dot + 1;
    }
    return u8(0);
  }
  Wire& pointer(uint16_t offset) { return u8(uint8_t(0xc0 | (offset >> 8))).u8(uint8_t(offset)); }
  Wire& header(uint16_t id, uint16_t flags, uint16_t qd, uint16_t an, uint16_t ns = 0,
               uint16_t ar = 0) {
    return u16(id).u16(flags).u16(qd).u16(an).u16(ns).u16(ar);
  }
  // A resource record: owner already written by the caller.
  Wire& record(uint16_t type, uint16_t klass, uint32_t ttl, const Bytes& rdata) {
    u16(type).u16(klass).u32(ttl).u16(uint16_t(rdata.size()));
    return raw(rdata);
  }
  size_t size() const { return b_.size(); }
  Bytes bytes() const { return b_; }

 private:
  Bytes b_;
};

constexpr uint16_t kRd = 0x0100;
constexpr uint16_t kQr = 0x8000;
constexpr uint16_t kRa = 0x0080;
constexpr uint16_t kTc = 0x0200;
constexpr uint16_t kClassIn = 1;

Bytes makeQuery(uint16_t id, const std::string& name, uint16_t type, uint16_t flags = kRd) {
  return Wire().header(id, flags, 1, 0).name(name).u16(type).u16(kClassIn).bytes();
}

// Exactly `size` bytes on the heap, so ASan sees a read past the end.
kj::Array<kj::byte> exact(const Bytes& b, size_t size) {
  auto out = kj::heapArray<kj::byte>(size);
  if (size > 0) memcpy(out.begin(), b.data(), size);
  return out;
}

kj::Maybe<Question> query(const Bytes& b) {
  auto m = exact(b, b.size());
  return parseQuery(m);
}

kj::Maybe<Answer> answer(const Bytes& b) {
  auto m = exact(b, b.size());
  return parseAnswer(m);
}

Question mustQuery(const Bytes& b) {
  KJ_IF_MAYBE (q, query(b)) {
    return *q;
  }
  ADD_FAILURE() << "query refused";
  return Question();
}

Answer mustAnswer(const Bytes& b) {
  KJ_IF_MAYBE (a, answer(b)) {
    return *a;
  }
  ADD_FAILURE() << "answer refused";
  return Answer();
}

IpAddress addr(const char* text) {
  KJ_IF_MAYBE (a, IpAddress::parse(text)) {
    return *a;
  }
  ADD_FAILURE() << "address did not parse: " << text;
  return IpAddress();
}

Bytes v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  return {a, b, c, d};
}
Bytes v6(const char* text) {
  auto bytes = addr(text).bytes();
  return Bytes(bytes.begin(), bytes.end());
}

// A response for "example.com" A with two addresses, owners compressed.
Bytes twoAddressAnswer() {
  return Wire()
      .header(0x4242, kQr | kRd | kRa, 1, 2)
      .name("example.com")
      .u16(kTypeA)
      .u16(kClassIn)
      .pointer(12)
      .record(kTypeA, kClassIn, 300, v4(93, 184, 216, 34))
      .pointer(12)
      .record(kTypeA, kClassIn, 60, v4(192, 0, 2, 1))
      .bytes();
}

// ---------------------------------------------------------------------------
// parseQuery

TEST(DnsParseQuery, ReadsAStandardQuery) {
  Bytes q = makeQuery(0xbeef, "www.Example.com", kTypeAaaa);
  Question parsed = mustQuery(q);
  EXPECT_EQ(parsed.id, 0xbeef);
  EXPECT_EQ(parsed.name, "www.Example.com");  // case kept
  EXPECT_EQ(parsed.type, kTypeAaaa);
  EXPECT_EQ(parsed.klass, kClassIn);
  EXPECT_EQ(parsed.end, q.size());
  EXPECT_EQ(parsed.end, kHeaderBytes + 17 + 4);
}

TEST(DnsParseQuery, EndStopsBeforeAnEdnsRecord) {
  Wire w;
  w.header(7, kRd, 1, 0, 0, 1).name("example.com").u16(kTypeA).u16(kClassIn);
  size_t questionEnd = w.size();
  w.u8(0).u16(41).u16(1232).u32(0).u16(0);  // OPT
  Question parsed = mustQuery(w.bytes());
  EXPECT_EQ(parsed.name, "example.com");
  EXPECT_EQ(parsed.end, questionEnd);
}

TEST(DnsParseQuery, KeepsTypeAndClassAsSent) {
  Question parsed = mustQuery(Wire().header(1, 0, 1, 0).name("a.b").u16(0xffff).u16(3).bytes());
  EXPECT_EQ(parsed.type, 0xffff);
  EXPECT_EQ(parsed.klass, 3);
  EXPECT_EQ(parsed.id, 1);
}

TEST(DnsParseQuery, RootNameIsEmpty) {
  Question parsed = mustQuery(Wire().header(1, kRd, 1, 0).u8(0).u16(2).u16(kClassIn).bytes());
  EXPECT_EQ(parsed.name, "");
  EXPECT_EQ(parsed.end, kHeaderBytes + 1 + 4);
}

TEST(DnsParseQuery, RefusesResponses) {
  EXPECT_TRUE(query(makeQuery(1, "example.com", kTypeA, kQr)) == nullptr);
  EXPECT_TRUE(query(makeQuery(1, "example.com", kTypeA, kQr | kRd | kRa)) == nullptr);
}

TEST(DnsParseQuery, RefusesOtherOpcodes) {
  for (uint16_t opcode = 1; opcode < 16; ++opcode) {
    EXPECT_TRUE(query(makeQuery(1, "example.com", kTypeA, uint16_t(kRd | opcode << 11))) == nullptr)
        << "opcode " << opcode;
  }
  // Other flag bits do not matter.
  EXPECT_TRUE(query(makeQuery(1, "example.com", kTypeA, 0x0030 | kRd)) != nullptr);  // AD, CD
}

TEST(DnsParseQuery, RefusesOtherSectionCounts) {
  auto q = [](uint16_t qd, uint16_t an, uint16_t ns, uint16_t ar) {
    return Wire()
        .header(1, kRd, qd, an, ns, ar)
        .name("example.com")
        .u16(kTypeA)
        .u16(kClassIn)
        .name("example.com")
        .u16(kTypeA)
        .u16(kClassIn)
        .bytes();
  };
  EXPECT_TRUE(query(q(0, 0, 0, 0)) == nullptr);
  EXPECT_TRUE(query(q(2, 0, 0, 0)) == nullptr);
  EXPECT_TRUE(query(q(0xffff, 0, 0, 0)) == nullptr);
  EXPECT_TRUE(query(q(1, 1, 0, 0)) == nullptr);
  EXPECT_TRUE(query(q(1, 0xffff, 0, 0)) == nullptr);
  EXPECT_TRUE(query(q(1, 0, 1, 0)) == nullptr);
  EXPECT_TRUE(query(q(1, 0, 0, 0)) != nullptr);
}

TEST(DnsParseQuery, EveryTruncationIsRefused) {
  Bytes q = makeQuery(0x1111, "a.bc.example.com", kTypeA);
  for (size_t n = 0; n < q.size(); ++n) {
    auto m = exact(q, n);
    EXPECT_TRUE(parseQuery(m) == nullptr) << "accepted the first " << n << " bytes";
  }
  auto full = exact(q, q.size());
  EXPECT_TRUE(parseQuery(full) != nullptr);
}

TEST(DnsParseQuery, RefusesOversizedMessages) {
  Bytes q = makeQuery(1, "example.com", kTypeA);
  q.resize(kMaxMessageBytes + 1, 0);
  EXPECT_TRUE(query(q) == nullptr);
  q.resize(kMaxMessageBytes);
  EXPECT_TRUE(query(q) != nullptr);  // trailing bytes are allowed
}

TEST(DnsParseQuery, RefusesForwardAndSelfPointers) {
  // A pointer at the start of the question to later in the message.
  Bytes forward =
      Wire().header(1, kRd, 1, 0).pointer(16).u16(kTypeA).u16(kClassIn).name("example.com").bytes();
  EXPECT_TRUE(query(forward) == nullptr);
  Bytes self = Wire().header(1, kRd, 1, 0).pointer(12).u16(kTypeA).u16(kClassIn).bytes();
  EXPECT_TRUE(query(self) == nullptr);
  // A pointer to itself after a label.
  Bytes selfAfterLabel =
      Wire().header(1, kRd, 1, 0).label("www").pointer(16).u16(kTypeA).u16(kClassIn).bytes();
  EXPECT_TRUE(query(selfAfterLabel) == nullptr);
  // Beyond the end of the message.
  Bytes outside = Wire().header(1, kRd, 1, 0).pointer(0x3fff).u16(kTypeA).u16(kClassIn).bytes();
  EXPECT_TRUE(query(outside) == nullptr);
}

TEST(DnsParseQuery, RefusesPointerLoops) {
  // "ab" then a pointer back to "ab": ab.ab.ab... forever.
  Bytes loop =
      Wire().header(1, kRd, 1, 0).label("ab").pointer(12).u16(kTypeA).u16(kClassIn).bytes();
  EXPECT_TRUE(query(loop) == nullptr);
  // Two labels and a pointer to the second.
  Bytes inner = Wire()
                    .header(1, kRd, 1, 0)
                    .label("a")
                    .label("b")
                    .pointer(14)
                    .u16(kTypeA)
                    .u16(kClassIn)
                    .bytes();
  EXPECT_TRUE(query(inner) == nullptr);
  // A pointer split by the end of the message.
  Bytes half = Wire().header(1, kRd, 1, 0).u8(0xc0).bytes();
  EXPECT_TRUE(query(half) == nullptr);
}

TEST(DnsParseQuery, RefusesReservedLabelTypes) {
  // A length byte with 01 or 10 in its top bits, followed by exactly that
  // many bytes and a root label: read as a plain length it would parse.
  for (uint8_t high :
       {uint8_t(0x40), uint8_t(0x41), uint8_t(0x7f), uint8_t(0x80), uint8_t(0x83), uint8_t(0xbf)}) {
    Bytes first =
        Wire().header(1, kRd, 1, 0).u8(high).raw(Bytes(high, 'a')).u8(0).u16(1).u16(1).bytes();
    EXPECT_TRUE(query(first) == nullptr) << int(high);
    Bytes later = Wire()
                      .header(1, kRd, 1, 0)
                      .label("www")
                      .u8(high)
                      .raw(Bytes(high, 'a'))
                      .u8(0)
                      .u16(1)
                      .u16(1)
                      .bytes();
    EXPECT_TRUE(query(later) == nullptr) << int(high);
  }
  // The same layout with a 63-byte label is fine.
  Bytes ok = Wire().header(1, kRd, 1, 0).u8(63).raw(Bytes(63, 'a')).u8(0).u16(1).u16(1).bytes();
  EXPECT_TRUE(query(ok) != nullptr);
}

TEST(DnsParseQuery, NamesUpTo253Characters) {
  std::string l63(63, 'a');
  std::string name253 = l63 + "." + l63 + "." + l63 + "." + std::string(61, 'b');
  ASSERT_EQ(name253.size(), 253u);
  Question parsed = mustQuery(makeQuery(1, name253, kTypeA));
  EXPECT_EQ(parsed.name, name253);

  std::string name254 = l63 + "." + l63 + "." + l63 + "." + std::string(62, 'b');
  EXPECT_TRUE(query(makeQuery(1, name254, kTypeA)) == nullptr);
  std::string longer = name253 + ".c.d.e";
  EXPECT_TRUE(query(makeQuery(1, longer, kTypeA)) == nullptr);
  // Many one-character labels.
  std::string many;
  for (int i = 0; i < 200; ++i) many += "a.";
  many += "com";
  EXPECT_TRUE(query(makeQuery(1, many, kTypeA)) == nullptr);
}

TEST(DnsParseQuery, MissingTypeOrClass) {
  EXPECT_TRUE(query(Wire().header(1, kRd, 1, 0).name("example.com").bytes()) == nullptr);
  EXPECT_TRUE(query(Wire().header(1, kRd, 1, 0).name("example.com").u16(1).bytes()) == nullptr);
  EXPECT_TRUE(query(Wire().header(1, kRd, 1, 0).name("example.com").u16(1).u8(0).bytes()) ==
              nullptr);
  // The name's root label missing.
  EXPECT_TRUE(query(Wire().header(1, kRd, 1, 0).label("example").bytes()) == nullptr);
  // A label running past the end.
  EXPECT_TRUE(query(Wire().header(1, kRd, 1, 0).u8(20).raw(Bytes(10, 'a')).bytes()) == nullptr);
}

TEST(DnsParseQuery, NulInsideALabelDoesNotHideTheRealName) {
  // Wire name: api . example . "com\0" . attacker . net. A policy that reads
  // the text form up to its first NUL would see "api.example.com".
  Bytes q = Wire()
                .header(1, kRd, 1, 0)
                .label("api")
                .label("example")
                .label(std::string("com\0", 4))
                .label("attacker")
                .label("net")
                .u8(0)
                .u16(kTypeA)
                .u16(kClassIn)
                .bytes();
  // Refused outright: judged on its text, it would pass for api.example.com.
  EXPECT_TRUE(query(q) == nullptr);
}

TEST(DnsParseQuery, DotInsideALabelIsNotAnotherName) {
  Bytes oneLabel = Wire()
                       .header(1, kRd, 1, 0)
                       .label("www.example")
                       .label("com")
                       .u8(0)
                       .u16(kTypeA)
                       .u16(kClassIn)
                       .bytes();
  Bytes threeLabels = makeQuery(1, "www.example.com", kTypeA);
  Question three = mustQuery(threeLabels);
  EXPECT_TRUE(query(oneLabel) == nullptr);  // else it reads as www.example.com
  EXPECT_EQ(three.name, "www.example.com");
}

// ---------------------------------------------------------------------------
// parseAnswer

TEST(DnsParseAnswer, ReadsARecordsAndTtls) {
  Answer a = mustAnswer(twoAddressAnswer());
  EXPECT_EQ(a.id, 0x4242);
  EXPECT_EQ(a.rcode, 0);
  EXPECT_FALSE(a.truncated);
  EXPECT_EQ(a.questionName, "example.com");
  EXPECT_EQ(a.questionType, kTypeA);
  ASSERT_EQ(a.addresses.size(), 2u);
  EXPECT_EQ(a.addresses[0].address, addr("93.184.216.34"));
  EXPECT_EQ(a.addresses[0].ttl, 300u);
  EXPECT_EQ(a.addresses[1].address, addr("192.0.2.1"));
  EXPECT_EQ(a.addresses[1].ttl, 60u);
  EXPECT_TRUE(a.addresses[0].address.isV4());
}

TEST(DnsParseAnswer, ReadsAaaaRecords) {
  Bytes m = Wire()
                .header(9, kQr | kRd | kRa, 1, 2)
                .name("v6.example")
                .u16(kTypeAaaa)
                .u16(kClassIn)
                .pointer(12)
                .record(kTypeAaaa, kClassIn, 0xffffffffu, v6("2001:db8::1"))
                .name("v6.example")  // owner uncompressed
                .record(kTypeAaaa, kClassIn, 0, v6("2001:db8::2"))
                .bytes();
  Answer a = mustAnswer(m);
  EXPECT_EQ(a.questionType, kTypeAaaa);
  ASSERT_EQ(a.addresses.size(), 2u);
  EXPECT_EQ(a.addresses[0].address, addr("2001:db8::1"));
  EXPECT_EQ(a.addresses[0].ttl, 0xffffffffu);
  EXPECT_EQ(a.addresses[1].address, addr("2001:db8::2"));
  EXPECT_EQ(a.addresses[1].ttl, 0u);
  EXPECT_FALSE(a.addresses[0].address.isV4());
}

TEST(DnsParseAnswer, SkipsCnamesKeepsTheAddresses) {
  Wire w;
  w.header(5, kQr | kRd | kRa, 1, 3).name("www.example.com").u16(kTypeA).u16(kClassIn);
  // www.example.com CNAME edge.cdn.example.net
  w.pointer(12);
  Bytes cname = Wire().name("edge.cdn.example.net").bytes();
  w.u16(kTypeCname).u16(kClassIn).u32(3600).u16(uint16_t(cname.size()));
  size_t cnameTarget = w.size();
  w.raw(cname);
  // edge.cdn.example.net A 198.51.100.1, owner pointing into the CNAME's data
  w.pointer(uint16_t(cnameTarget)).record(kTypeA, kClassIn, 20, v4(198, 51, 100, 1));
  // and a second address, owner compressed as "edge." + pointer to "cdn.example.net"
  w.label("edge")
      .pointer(uint16_t(cnameTarget + 5))
      .record(kTypeA, kClassIn, 30, v4(198, 51, 100, 2));
  Answer a = mustAnswer(w.bytes());
  EXPECT_EQ(a.questionName, "www.example.com");
  ASSERT_EQ(a.addresses.size(), 2u);
  EXPECT_EQ(a.addresses[0].address, addr("198.51.100.1"));
  EXPECT_EQ(a.addresses[0].ttl, 20u);
  EXPECT_EQ(a.addresses[1].address, addr("198.51.100.2"));
  EXPECT_EQ(a.addresses[1].ttl, 30u);
}

TEST(DnsParseAnswer, IgnoresOtherTypesClassesAndMisSizedRecords) {
  Bytes m = Wire()
                .header(5, kQr | kRa, 1, 6)
                .name("example.com")
                .u16(kTypeA)
                .u16(kClassIn)
                .pointer(12)
                .record(kTypeA, 3, 10, v4(1, 1, 1, 1))  // class CH
                .pointer(12)
                .record(kTypeA, kClassIn, 10, {1, 2, 3, 4, 5})  // A of 5 bytes
                .pointer(12)
                .record(kTypeAaaa, kClassIn, 10, v4(2, 2, 2, 2))  // AAAA of 4 bytes
                .pointer(12)
                .record(16, kClassIn, 10, {3, 'a', 'b', 'c'})  // TXT
                .pointer(12)
                .record(kTypeA, kClassIn, 10, {})  // empty A
                .pointer(12)
                .record(kTypeA, kClassIn, 11, v4(203, 0, 113, 9))
                .bytes();
  Answer a = mustAnswer(m);
  ASSERT_EQ(a.addresses.size(), 1u);
  EXPECT_EQ(a.addresses[0].address, addr("203.0.113.9"));
  EXPECT_EQ(a.addresses[0].ttl, 11u);
}

TEST(DnsParseAnswer, OnlyTheAnswerSectionCounts) {
  Bytes m = Wire()
                .header(5, kQr | kRa, 1, 1, 0, 1)
                .name("example.com")
                .u16(kTypeA)
                .u16(kClassIn)
                .pointer(12)
                .record(kTypeA, kClassIn, 10, v4(192, 0, 2, 1))
                .name("ns.evil.net")  // additional
                .record(kTypeA, kClassIn, 10, v4(10, 0, 0, 1))
                .bytes();
  Answer a = mustAnswer(m);
  ASSERT_EQ(a.addresses.size(), 1u);
  EXPECT_EQ(a.addresses[0].address, addr("192.0.2.1"));
}

TEST(DnsParseAnswer, RcodeAndTruncation) {
  Bytes nx = Wire()
                 .header(3, kQr | kRd | kRa | 3, 1, 0)
                 .name("nope.example")
                 .u16(kTypeA)
                 .u16(kClassIn)
                 .bytes();
  Answer a = mustAnswer(nx);
  EXPECT_EQ(a.rcode, 3);
  EXPECT_FALSE(a.truncated);
  EXPECT_TRUE(a.addresses.empty());
  EXPECT_EQ(a.questionName, "nope.example");

  Bytes tc = Wire()
                 .header(3, kQr | kTc | kRd | kRa | kRcodeServfail, 1, 0)
                 .name("big.example")
                 .u16(kTypeAaaa)
                 .u16(kClassIn)
                 .bytes();
  Answer b = mustAnswer(tc);
  EXPECT_TRUE(b.truncated);
  EXPECT_EQ(b.rcode, kRcodeServfail);
  EXPECT_EQ(b.questionType, kTypeAaaa);
}

TEST(DnsParseAnswer, RefusesNonResponses) {
  Bytes m = twoAddressAnswer();
  m[2] &= 0x7f;  // QR off
  EXPECT_TRUE(answer(m) == nullptr);
  EXPECT_TRUE(answer(makeQuery(1, "example.com", kTypeA)) == nullptr);
}

TEST(DnsParseAnswer, RefusesOtherQuestionCounts) {
  Bytes m = twoAddressAnswer();
  m[5] = 0;  // qdcount 0
  EXPECT_TRUE(answer(m) == nullptr);
  m[5] = 2;
  EXPECT_TRUE(answer(m) == nullptr);
}

TEST(DnsParseAnswer, RefusesMoreAnswersThanPresent) {
  Bytes m = twoAddressAnswer();
  m[7] = 3;
  EXPECT_TRUE(answer(m) == nullptr);
  m[6] = 0xff;
  m[7] = 0xff;
  EXPECT_TRUE(answer(m) == nullptr);
  m[6] = 0;
  m[7] = 1;  // fewer is fine: the rest is ignored
  Answer a = mustAnswer(m);
  EXPECT_EQ(a.addresses.size(), 1u);
}

TEST(DnsParseAnswer, RefusesRdataBeyondTheEnd) {
  Bytes m = twoAddressAnswer();
  // The last record's rdlength (2 bytes before its 4 bytes of data).
  size_t rdlength = m.size() - 4 - 2;
  ASSERT_EQ(m[rdlength + 1], 4);
  m[rdlength + 1] = 5;
  EXPECT_TRUE(answer(m) == nullptr);
  m[rdlength] = 0xff;
  m[rdlength + 1] = 0xff;
  EXPECT_TRUE(answer(m) == nullptr);
}

TEST(DnsParseAnswer, RefusesPointerLoopsAndForwardPointers) {
  auto withOwner = [](const Bytes& owner) {
    return Wire()
        .header(1, kQr, 1, 1)
        .name("example.com")
        .u16(kTypeA)
        .u16(kClassIn)
        .raw(owner)
        .record(kTypeA, kClassIn, 1, v4(192, 0, 2, 1))
        .bytes();
  };
  size_t ownerAt = kHeaderBytes + 13 + 4;
  // Sanity: a pointer to the question is fine.
  EXPECT_TRUE(answer(withOwner({0xc0, 12})) != nullptr);
  // To itself.
  EXPECT_TRUE(answer(withOwner({0xc0, uint8_t(ownerAt)})) == nullptr);
  // Forward, into its own record.
  EXPECT_TRUE(answer(withOwner({0xc0, uint8_t(ownerAt + 4)})) == nullptr);
  // A label, then back to that label.
  EXPECT_TRUE(answer(withOwner({1, 'x', 0xc0, uint8_t(ownerAt)})) == nullptr);
  // Into the middle of the question's type/class (00 01 00 01): bytes that
  // happen to read as a root name are a name; what matters is no crash.
  (void)answer(withOwner({0xc0, uint8_t(ownerAt - 3)}));

  // A loop in the question name itself.
  Bytes loop =
      Wire().header(1, kQr, 1, 0).label("ab").pointer(12).u16(kTypeA).u16(kClassIn).bytes();
  EXPECT_TRUE(answer(loop) == nullptr);
}

// An owner name reached through a chain of pointers, each to the one before,
// kept in the data of a TXT record (which the parser skips).
Bytes chainedOwner(int hops) {
  Wire w;
  w.header(1, kQr, 1, 2).name("a").u16(kTypeA).u16(kClassIn);
  w.pointer(12);
  w.u16(16).u16(kClassIn).u32(1).u16(uint16_t(2 * hops));
  size_t previous = kHeaderBytes;
  for (int i = 0; i < hops; ++i) {
    size_t here = w.size();
    w.pointer(uint16_t(previous));
    previous = here;
  }
  w.pointer(uint16_t(previous)).record(kTypeA, kClassIn, 1, v4(192, 0, 2, 1));
  return w.bytes();
}

TEST(DnsParseAnswer, FollowsPointerChains) {
  Answer a = mustAnswer(chainedOwner(8));
  ASSERT_EQ(a.addresses.size(), 1u);
  EXPECT_EQ(a.addresses[0].address, addr("192.0.2.1"));
  // A chain far longer than any real message needs: refused or read, never a crash.
  (void)answer(chainedOwner(200));
}

TEST(DnsParseAnswer, RefusesReservedLabelTypesInRecords) {
  for (uint8_t high : {uint8_t(0x40), uint8_t(0x44), uint8_t(0x80), uint8_t(0x84)}) {
    Bytes m = Wire()
                  .header(1, kQr, 1, 1)
                  .name("example.com")
                  .u16(kTypeA)
                  .u16(kClassIn)
                  .u8(high)
                  .raw(Bytes(high, 'x'))
                  .u8(0)
                  .record(kTypeA, kClassIn, 1, v4(192, 0, 2, 1))
                  .bytes();
    EXPECT_TRUE(answer(m) == nullptr) << int(high);
    Bytes inQuestion = Wire()
                           .header(1, kQr, 1, 0)
                           .u8(high)
                           .raw(Bytes(high, 'x'))
                           .u8(0)
                           .u16(kTypeA)
                           .u16(kClassIn)
                           .bytes();
    EXPECT_TRUE(answer(inQuestion) == nullptr) << int(high);
  }
}

TEST(DnsParseAnswer, EveryTruncationIsRefused) {
  std::vector<Bytes> messages = {twoAddressAnswer()};
  Wire cname;
  cname.header(5, kQr | kRd | kRa, 1, 2).name("www.example.com").u16(kTypeAaaa).u16(kClassIn);
  cname.pointer(12);
  Bytes target = Wire().label("edge").pointer(16).bytes();
  cname.u16(kTypeCname).u16(kClassIn).u32(60).u16(uint16_t(target.size()));
  size_t targetAt = cname.size();
  cname.raw(target);
  cname.pointer(uint16_t(targetAt)).record(kTypeAaaa, kClassIn, 60, v6("2001:db8::5"));
  messages.push_back(cname.bytes());
  for (const Bytes& full : messages) {
    ASSERT_TRUE(answer(full) != nullptr);
    for (size_t n = 0; n < full.size(); ++n) {
      auto m = exact(full, n);
      EXPECT_TRUE(parseAnswer(m) == nullptr) << "accepted the first " << n << " bytes";
    }
  }
  Answer a = mustAnswer(messages[1]);
  ASSERT_EQ(a.addresses.size(), 1u);
  EXPECT_EQ(a.addresses[0].address, addr("2001:db8::5"));
}

TEST(DnsParseAnswer, RefusesOversizedMessages) {
  Bytes m = twoAddressAnswer();
  m.resize(kMaxMessageBytes + 1, 0);
  EXPECT_TRUE(answer(m) == nullptr);
}

// Random damage to valid messages: whatever the parsers say, they must not
// read outside the message (ASan) or crash.
TEST(DnsParsers, SurviveRandomCorruption) {
  std::mt19937 random(12345);
  std::vector<Bytes> seeds = {twoAddressAnswer(), makeQuery(77, "a.b.example.com", kTypeA)};
  for (const Bytes& seed : seeds) {
    for (int round = 0; round < 3000; ++round) {
      Bytes m = seed;
      int flips = 1 + int(random() % 6);
      for (int i = 0; i < flips; ++i) {
        size_t at = random() % m.size();
        switch (random() % 4) {
          case 0:
            m[at] = uint8_t(random());
            break;
          case 1:
            m[at] = uint8_t(0xc0 | (random() & 0x3f));
            break;
          case 2:
            m[at] = uint8_t(random() % 64);
            break;
          default:
            m.resize(at + 1);
            break;
        }
      }
      (void)answer(m);
      (void)query(m);
    }
  }
  // Fully random bytes too.
  for (int round = 0; round < 2000; ++round) {
    Bytes m(random() % 80);
    for (auto& b : m) b = uint8_t(random());
    (void)answer(m);
    (void)query(m);
  }
}

// ---------------------------------------------------------------------------
// makeErrorReply

TEST(DnsErrorReply, RefusedEchoesTheQuestion) {
  Wire w;
  w.header(0xabcd, kRd | 0x0010 /* CD */, 1, 0, 0, 1)
      .name("Blocked.Example")
      .u16(kTypeA)
      .u16(kClassIn);
  w.u8(0).u16(41).u16(1232).u32(0).u16(0);  // OPT
  Bytes q = w.bytes();
  Question question = mustQuery(q);
  auto qm = exact(q, q.size());
  auto reply = makeErrorReply(qm, question, kRcodeRefused);
  ASSERT_EQ(reply.size(), question.end);
  EXPECT_EQ(reply[0], 0xab);
  EXPECT_EQ(reply[1], 0xcd);
  EXPECT_TRUE(reply[2] & 0x80);          // QR
  EXPECT_EQ((reply[2] >> 3) & 0x0f, 0);  // opcode 0
  EXPECT_FALSE(reply[2] & 0x04);         // not authoritative
  EXPECT_FALSE(reply[2] & 0x02);         // not truncated
  EXPECT_TRUE(reply[2] & 0x01);          // RD echoed
  EXPECT_TRUE(reply[3] & 0x80);          // RA
  EXPECT_EQ(reply[3] & 0x0f, kRcodeRefused);
  EXPECT_EQ(reply[4], 0);
  EXPECT_EQ(reply[5], 1);  // the question stays
  for (size_t i = 6; i < 12; ++i) EXPECT_EQ(reply[i], 0) << "count byte " << i;
  EXPECT_EQ(memcmp(reply.begin() + 12, q.data() + 12, question.end - 12), 0);

  Answer a = mustAnswer(Bytes(reply.begin(), reply.end()));
  EXPECT_EQ(a.id, 0xabcd);
  EXPECT_EQ(a.rcode, kRcodeRefused);
  EXPECT_FALSE(a.truncated);
  EXPECT_TRUE(a.addresses.empty());
  EXPECT_EQ(a.questionName, "Blocked.Example");
  EXPECT_EQ(a.questionType, kTypeA);
  // A reply is not a query.
  EXPECT_TRUE(query(Bytes(reply.begin(), reply.end())) == nullptr);
}

TEST(DnsErrorReply, ServfailWithoutRecursionDesired) {
  Bytes q = makeQuery(0x0102, "x.example", kTypeAaaa, 0);
  Question question = mustQuery(q);
  auto qm = exact(q, q.size());
  auto reply = makeErrorReply(qm, question, kRcodeServfail);
  ASSERT_EQ(reply.size(), q.size());
  EXPECT_EQ(reply[2], 0x80);  // QR only: RD was not set
  EXPECT_EQ(reply[3], 0x80 | kRcodeServfail);
  Answer a = mustAnswer(Bytes(reply.begin(), reply.end()));
  EXPECT_EQ(a.id, 0x0102);
  EXPECT_EQ(a.rcode, kRcodeServfail);
  EXPECT_EQ(a.questionType, kTypeAaaa);
  EXPECT_TRUE(a.addresses.empty());
}

TEST(DnsErrorReply, RcodeIsMaskedToFourBits) {
  Bytes q = makeQuery(1, "x", kTypeA);
  Question question = mustQuery(q);
  auto qm = exact(q, q.size());
  auto reply = makeErrorReply(qm, question, 0xf5);
  EXPECT_EQ(reply[3], 0x80 | 5);
  EXPECT_TRUE(reply[2] & 0x80);
}

// ---------------------------------------------------------------------------
// sameName

TEST(DnsSameName, AsciiCaseInsensitive) {
  EXPECT_TRUE(sameName("example.com", "example.com"));
  EXPECT_TRUE(sameName("Example.COM", "eXAMPLE.com"));
  EXPECT_TRUE(sameName("", ""));
  EXPECT_FALSE(sameName("example.com", "example.co"));
  EXPECT_FALSE(sameName("example.com", "example.com."));
  EXPECT_FALSE(sameName("example.com", "exbmple.com"));
  EXPECT_FALSE(sameName("a", ""));
  EXPECT_FALSE(sameName("a-b", "a_b"));
  // Only ASCII letters fold: '@' (0x40) and '`' (0x60) are not 'A'/'a' cases.
  EXPECT_FALSE(sameName("@", "`"));
  EXPECT_FALSE(sameName("[", "{"));
}

TEST(DnsSameName, ComparesPastNulBytes) {
  std::string a("a\0b", 3), b("a\0c", 3);
  EXPECT_FALSE(sameName(a, b));
  EXPECT_TRUE(sameName(std::string("A\0b", 3), std::string("a\0B", 3)));
}

}  // namespace
}  // namespace nodeagent::dns
