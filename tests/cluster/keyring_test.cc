// The gossip keyring: sealing, opening, tampering, and a rotation run node by
// node with the nodes on either side of each step still talking.
#include "cluster/keyring.h"

#include <gtest/gtest.h>

#include <kj/debug.h>

#include <string>

namespace nodeagent::cluster {
namespace {

kj::ArrayPtr<const kj::byte> bytes(const std::string& s) {
  return kj::arrayPtr(reinterpret_cast<const kj::byte*>(s.data()), s.size());
}

std::string text(kj::ArrayPtr<const kj::byte> b) {
  return std::string(reinterpret_cast<const char*>(b.begin()), b.size());
}

// Whether `to` opens what `from` seals.
bool talks(const Keyring& from, const Keyring& to) {
  auto sealed = from.seal(bytes("ping"));
  KJ_IF_MAYBE (opened, to.open(sealed)) {
    return text(*opened) == "ping";
  }
  return false;
}

TEST(Keyring, SealsAndOpens) {
  Keyring ring(Keyring::generateKey());
  auto sealed = ring.seal(bytes("capacity: 3 slots"));
  EXPECT_EQ(sealed.size(), Keyring::kOverheadBytes + 17);
  EXPECT_EQ(text(KJ_ASSERT_NONNULL(ring.open(sealed))), "capacity: 3 slots");
  // Fresh nonce every time: the same message never seals the same way.
  EXPECT_NE(text(ring.seal(bytes("x"))), text(ring.seal(bytes("x"))));
  EXPECT_EQ(text(KJ_ASSERT_NONNULL(ring.open(ring.seal(nullptr)))), "");
}

TEST(Keyring, RefusesTamperedTruncatedAndForeignPackets) {
  Keyring ring(Keyring::generateKey());
  auto sealed = ring.seal(bytes("join"));
  for (size_t i = 0; i < sealed.size(); ++i) {
    auto copy = kj::heapArray<kj::byte>(sealed.asPtr());
    copy[i] ^= 0x01;
    EXPECT_TRUE(ring.open(copy) == nullptr) << "flipped byte " << i;
  }
  for (size_t n = 0; n < sealed.size(); ++n) {
    EXPECT_TRUE(ring.open(sealed.slice(0, n)) == nullptr) << "first " << n << " bytes";
  }
  Keyring stranger(Keyring::generateKey());
  EXPECT_TRUE(stranger.open(sealed) == nullptr);
  EXPECT_FALSE(talks(ring, stranger));
}

TEST(Keyring, RotationKeepsEveryPairTalkingAtEveryStep) {
  Keyring::Key k1 = Keyring::generateKey(), k2 = Keyring::generateKey();
  Keyring a(k1), b(k1), c(k1);
  auto all = [&]() {
    return talks(a, b) && talks(b, a) && talks(a, c) && talks(c, a) && talks(b, c) && talks(c, b);
  };
  ASSERT_TRUE(all());
  // 1. add k2, node by node.
  a.add(k2);
  EXPECT_TRUE(all());
  b.add(k2);
  c.add(k2);
  EXPECT_TRUE(all());
  // 2. make it primary, node by node: new sealers, old openers still agree.
  a.use(Keyring::idOf(k2));
  EXPECT_TRUE(all());
  EXPECT_EQ(a.primary(), Keyring::idOf(k2));
  b.use(Keyring::idOf(k2));
  c.use(Keyring::idOf(k2));
  EXPECT_TRUE(all());
  // 3. retire k1.
  a.remove(Keyring::idOf(k1));
  b.remove(Keyring::idOf(k1));
  c.remove(Keyring::idOf(k1));
  EXPECT_TRUE(all());
  EXPECT_EQ(a.keyIds().size(), 1u);
}

TEST(Keyring, ANodeThatMissedARotationRejoinsOnceGivenTheNewKey) {
  Keyring::Key k1 = Keyring::generateKey(), k2 = Keyring::generateKey();
  Keyring a(k1), late(k1);
  a.add(k2);
  a.use(Keyring::idOf(k2));
  a.remove(Keyring::idOf(k1));
  EXPECT_FALSE(talks(a, late));
  EXPECT_FALSE(talks(late, a));
  late.add(k2);  // what the operator (or a TLS-authenticated peer) hands it
  EXPECT_TRUE(talks(a, late));
  EXPECT_FALSE(talks(late, a));  // still sealing with the retired key
  late.use(Keyring::idOf(k2));
  EXPECT_TRUE(talks(late, a));
}

TEST(Keyring, GuardsItsInvariants) {
  Keyring::Key k1 = Keyring::generateKey();
  Keyring ring(k1);
  EXPECT_THROW(ring.remove(Keyring::idOf(k1)), kj::Exception);  // the primary
  EXPECT_THROW(ring.remove(Keyring::idOf(Keyring::generateKey())), kj::Exception);
  EXPECT_THROW(ring.use(Keyring::idOf(Keyring::generateKey())), kj::Exception);
  ring.add(k1);  // already there: nothing changes
  EXPECT_EQ(ring.keyIds().size(), 1u);
  for (size_t i = 1; i < Keyring::kMaxKeys; ++i) ring.add(Keyring::generateKey());
  EXPECT_THROW(ring.add(Keyring::generateKey()), kj::Exception);
}

TEST(Keyring, KeysAreExchangedAsHex) {
  Keyring::Key key = Keyring::generateKey();
  char hex[65];
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < key.size(); ++i) {
    hex[2 * i] = digits[key[i] >> 4];
    hex[2 * i + 1] = digits[key[i] & 15];
  }
  hex[64] = 0;
  EXPECT_EQ(KJ_ASSERT_NONNULL(Keyring::parseKey(hex)), key);
  EXPECT_TRUE(Keyring::parseKey("abcd") == nullptr);
  EXPECT_TRUE(Keyring::parseKey(std::string(64, 'g').c_str()) == nullptr);
  EXPECT_TRUE(Keyring::parseKey(std::string(66, 'a').c_str()) == nullptr);
  EXPECT_EQ(Keyring::keyIdHex(Keyring::idOf(key)).size(), 16u);
}

}  // namespace
}  // namespace nodeagent::cluster
