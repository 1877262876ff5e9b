// The node's gossip keyring and the file that keeps it across restarts:
// hex keys, one per line, the first one seals. Changes made through the API
// (Node.gossipKeys) are written back before they take effect, so a restart
// never goes back to a key the operator retired.
#pragma once

#include <kj/array.h>
#include <kj/string.h>
#include <kj/vector.h>

#include <vector>

#include "cluster/keyring.h"

namespace nodeagent::fleet {

class GossipKeys {
 public:
  // Reads `path`. A missing file gets a new random key (a first node; the
  // others must be given the same file). Throws naming the file and line if
  // it is malformed.
  explicit GossipKeys(kj::String path);
  ~GossipKeys();
  KJ_DISALLOW_COPY(GossipKeys);

  const cluster::Keyring& keyring() const { return *ring_; }

  // The operator's rotation steps. Each throws an API error
  // (invalidArgument / notFound) for bad input and then changes nothing.
  void add(kj::StringPtr keyHex);
  void use(kj::StringPtr keyIdHex);
  void remove(kj::StringPtr keyIdHex);

  // Key ids, primary first (16 hex digits each).
  kj::Array<kj::String> ids() const;
  kj::String primaryId() const;
  kj::StringPtr path() const { return path_; }

 private:
  cluster::Keyring::KeyId requireKnownId(kj::StringPtr keyIdHex) const;
  void save() const;
  void rebuild();

  kj::String path_;
  std::vector<cluster::Keyring::Key> keys_;  // [0] seals
  kj::Own<cluster::Keyring> ring_;
};

}  // namespace nodeagent::fleet
