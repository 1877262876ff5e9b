// The gossip keyring: every UDP datagram between nodes is sealed with an AEAD
// (libsodium XChaCha20-Poly1305-IETF) under the keyring's primary key, and
// opened with whichever key of the ring sealed it.
//
// Rotation without a flag day, as an operator runs it node by node:
//   1. add(k2) everywhere      nodes still seal with k1, and can open k2
//   2. use(k2) everywhere      nodes seal with k2; k1 packets still open
//   3. remove(k1) everywhere   only k2 is left
// Nodes on either side of any step interoperate throughout.
//
// Wire format of a sealed datagram:
//   version (1 byte, 1) | key id (8 bytes) | nonce (24 bytes) | ciphertext + tag
// The version and key id are authenticated (additional data). The key id is
// a hash of the key, so it says which key to try without revealing it.
#pragma once

#include <kj/array.h>
#include <kj/common.h>
#include <kj/string.h>
#include <kj/vector.h>

#include <array>
#include <cstdint>

namespace nodeagent::cluster {

class Keyring {
 public:
  static constexpr size_t kKeyBytes = 32;
  static constexpr size_t kKeyIdBytes = 8;
  static constexpr size_t kNonceBytes = 24;
  static constexpr size_t kTagBytes = 16;
  static constexpr size_t kOverheadBytes = 1 + kKeyIdBytes + kNonceBytes + kTagBytes;
  static constexpr uint8_t kVersion = 1;
  static constexpr size_t kMaxKeys = 8;

  using Key = std::array<uint8_t, kKeyBytes>;
  using KeyId = std::array<uint8_t, kKeyIdBytes>;

  // The first key becomes the primary.
  explicit Keyring(const Key& primary);
  ~Keyring();  // wipes the keys
  KJ_DISALLOW_COPY(Keyring);

  static Key generateKey();
  static KeyId idOf(const Key& key);
  // A key as operators pass it around: 64 hex digits. Null if malformed.
  static kj::Maybe<Key> parseKey(kj::StringPtr hex);
  static kj::String keyIdHex(const KeyId& id);

  // Adds a key that opens packets (not used to seal until use()). Adding one
  // already there does nothing. Throws beyond kMaxKeys.
  void add(const Key& key);
  // Makes a key of the ring the one that seals. Throws if it is not in the ring.
  void use(const KeyId& id);
  // Drops a key. Throws for the primary (use() another first) or an unknown id.
  void remove(const KeyId& id);

  const KeyId& primary() const { return primary_; }
  kj::Array<KeyId> keyIds() const;
  bool has(const KeyId& id) const;

  kj::Array<kj::byte> seal(kj::ArrayPtr<const kj::byte> plaintext) const;
  // The plaintext, or null if no key of the ring opens it (unknown key,
  // tampered, truncated, wrong version).
  kj::Maybe<kj::Array<kj::byte>> open(kj::ArrayPtr<const kj::byte> sealed) const;

 private:
  struct Entry {
    KeyId id;
    Key key;
  };
  const Entry* find(const KeyId& id) const;

  kj::Vector<Entry> keys_;
  KeyId primary_;
};

}  // namespace nodeagent::cluster
