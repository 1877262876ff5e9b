// The node's signing key: Ed25519 (libsodium crypto_sign), made on the first
// start and kept in the state directory. It authenticates what the node
// reports to others, e.g. each usage ledger record, so a billing pipeline can
// check a record came from this node unchanged.
//
//   auto key = NodeKey::loadOrCreate(kj::str(stateDir, "/node.key"));
//   auto signature = key->sign(bytes);
//   bool ok = NodeKey::verify(key->publicKey(), bytes, signature);
//
// The file holds the 64-byte libsodium secret key (seed and public key), mode
// 0600, written whole (temp file, fsync, rename) so a crash never leaves half
// a key. Keep it with the store: a new key means records signed by the old
// one verify only with the old public key.
#pragma once

#include <kj/array.h>
#include <kj/memory.h>
#include <kj/string.h>

namespace nodeagent {

class NodeKey {
 public:
  static constexpr size_t kPublicKeyBytes = 32;
  static constexpr size_t kSecretKeyBytes = 64;
  static constexpr size_t kSignatureBytes = 64;

  // Loads the key at `path`, or creates it there if the file does not exist.
  // Throws if the file is not a key (wrong size, public half not matching).
  static kj::Own<NodeKey> loadOrCreate(kj::StringPtr path);
  // A fresh key held only in memory (tests).
  static kj::Own<NodeKey> generate();

  NodeKey();  // use loadOrCreate() or generate()
  ~NodeKey();
  KJ_DISALLOW_COPY(NodeKey);

  kj::ArrayPtr<const kj::byte> publicKey() const { return publicKey_; }
  // Detached signature over `message`. Thread-safe (the key is read-only).
  kj::Array<kj::byte> sign(kj::ArrayPtr<const kj::byte> message) const;

  // Whether `signature` is `publicKey`'s over exactly `message`.
  static bool verify(kj::ArrayPtr<const kj::byte> publicKey, kj::ArrayPtr<const kj::byte> message,
                     kj::ArrayPtr<const kj::byte> signature);

 private:
  kj::byte secretKey_[kSecretKeyBytes];
  kj::byte publicKey_[kPublicKeyBytes];
};

}  // namespace nodeagent
