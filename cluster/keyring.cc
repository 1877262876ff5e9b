#include "cluster/keyring.h"

#include <sodium.h>
#include <string.h>

#include <kj/debug.h>

namespace nodeagent::cluster {
namespace {

void requireSodium() {
  static const bool ready = sodium_init() >= 0;
  KJ_REQUIRE(ready, "libsodium failed to initialise");
}

static_assert(Keyring::kKeyBytes == crypto_aead_xchacha20poly1305_ietf_KEYBYTES);
static_assert(Keyring::kNonceBytes == crypto_aead_xchacha20poly1305_ietf_NPUBBYTES);
static_assert(Keyring::kTagBytes == crypto_aead_xchacha20poly1305_ietf_ABYTES);

constexpr size_t kHeaderBytes = 1 + Keyring::kKeyIdBytes;

}  // namespace

Keyring::Keyring(const Key& primary) {
  requireSodium();
  add(primary);
  primary_ = idOf(primary);
}

Keyring::~Keyring() {
  for (auto& entry : keys_) sodium_memzero(entry.key.data(), entry.key.size());
}

Keyring::Key Keyring::generateKey() {
  requireSodium();
  Key key;
  crypto_aead_xchacha20poly1305_ietf_keygen(key.data());
  return key;
}

Keyring::KeyId Keyring::idOf(const Key& key) {
  requireSodium();
  // Keyed by a fixed label, so the id is not a plain hash someone else uses.
  static const char kLabel[] = "nodeagent gossip key id";
  KeyId id;
  crypto_generichash(id.data(), id.size(), key.data(), key.size(),
                     reinterpret_cast<const unsigned char*>(kLabel), sizeof(kLabel) - 1);
  return id;
}

kj::Maybe<Keyring::Key> Keyring::parseKey(kj::StringPtr hex) {
  requireSodium();
  if (hex.size() != kKeyBytes * 2) return nullptr;
  Key key;
  size_t length = 0;
  if (sodium_hex2bin(key.data(), key.size(), hex.cStr(), hex.size(), nullptr, &length, nullptr) !=
          0 ||
      length != kKeyBytes) {
    return nullptr;
  }
  return key;
}

kj::String Keyring::keyIdHex(const KeyId& id) {
  char text[kKeyIdBytes * 2 + 1];
  sodium_bin2hex(text, sizeof(text), id.data(), id.size());
  return kj::str(text);
}

const Keyring::Entry* Keyring::find(const KeyId& id) const {
  for (auto& entry : keys_) {
    if (entry.id == id) return &entry;
  }
  return nullptr;
}

bool Keyring::has(const KeyId& id) const {
  return find(id) != nullptr;
}

void Keyring::add(const Key& key) {
  KeyId id = idOf(key);
  if (has(id)) return;
  KJ_REQUIRE(keys_.size() < kMaxKeys, "the gossip keyring is full; remove a retired key first");
  keys_.add(Entry{id, key});
}

void Keyring::use(const KeyId& id) {
  KJ_REQUIRE(has(id), "no such key in the gossip keyring", keyIdHex(id));
  primary_ = id;
}

void Keyring::remove(const KeyId& id) {
  KJ_REQUIRE(id != primary_, "the primary key cannot be removed; use() another first",
             keyIdHex(id));
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (keys_[i].id == id) {
      sodium_memzero(keys_[i].key.data(), keys_[i].key.size());
      // Order does not matter: move the last entry into the hole.
      if (i + 1 != keys_.size()) keys_[i] = keys_.back();
      keys_.removeLast();
      return;
    }
  }
  KJ_FAIL_REQUIRE("no such key in the gossip keyring", keyIdHex(id));
}

kj::Array<Keyring::KeyId> Keyring::keyIds() const {
  auto ids = kj::heapArray<KeyId>(keys_.size());
  for (size_t i = 0; i < keys_.size(); ++i) ids[i] = keys_[i].id;
  return ids;
}

kj::Array<kj::byte> Keyring::seal(kj::ArrayPtr<const kj::byte> plaintext) const {
  const Entry* entry = find(primary_);
  KJ_ASSERT(entry != nullptr);
  auto out = kj::heapArray<kj::byte>(kOverheadBytes + plaintext.size());
  out[0] = kVersion;
  memcpy(out.begin() + 1, entry->id.data(), kKeyIdBytes);
  kj::byte* nonce = out.begin() + kHeaderBytes;
  randombytes_buf(nonce, kNonceBytes);  // 192 bits: random nonces never collide in practice
  unsigned long long written = 0;
  crypto_aead_xchacha20poly1305_ietf_encrypt(out.begin() + kHeaderBytes + kNonceBytes, &written,
                                             plaintext.begin(), plaintext.size(), out.begin(),
                                             kHeaderBytes, nullptr, nonce, entry->key.data());
  KJ_ASSERT(written == plaintext.size() + kTagBytes);
  return out;
}

kj::Maybe<kj::Array<kj::byte>> Keyring::open(kj::ArrayPtr<const kj::byte> sealed) const {
  if (sealed.size() < kOverheadBytes || sealed[0] != kVersion) return nullptr;
  KeyId id;
  memcpy(id.data(), sealed.begin() + 1, kKeyIdBytes);
  const Entry* entry = find(id);
  if (entry == nullptr) return nullptr;
  const kj::byte* nonce = sealed.begin() + kHeaderBytes;
  const kj::byte* ciphertext = nonce + kNonceBytes;
  size_t ciphertextBytes = sealed.size() - kHeaderBytes - kNonceBytes;
  auto plaintext = kj::heapArray<kj::byte>(ciphertextBytes - kTagBytes);
  unsigned long long length = 0;
  if (crypto_aead_xchacha20poly1305_ietf_decrypt(plaintext.begin(), &length, nullptr, ciphertext,
                                                 ciphertextBytes, sealed.begin(), kHeaderBytes,
                                                 nonce, entry->key.data()) != 0) {
    return nullptr;
  }
  return kj::mv(plaintext);
}

}  // namespace nodeagent::cluster
