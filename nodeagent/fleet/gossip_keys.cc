#include "nodeagent/fleet/gossip_keys.h"

#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <unistd.h>

#include <kj/debug.h>
#include <kj/io.h>

#include "nodeagent/api_error.h"
#include "util/log.h"

namespace nodeagent::fleet {
namespace {

using Key = cluster::Keyring::Key;
using KeyId = cluster::Keyring::KeyId;

kj::String toHex(const Key& key) {
  char hex[cluster::Keyring::kKeyBytes * 2 + 1];
  sodium_bin2hex(hex, sizeof(hex), key.data(), key.size());
  return kj::str(hex);
}

kj::Maybe<kj::String> readFile(kj::StringPtr path) {
  int fd = open(path.cStr(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return nullptr;
    KJ_FAIL_SYSCALL("open", errno, path);
  }
  kj::AutoCloseFd owned(fd);
  kj::Vector<char> text;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) text.addAll(buf, buf + n);
  KJ_REQUIRE(n == 0, "cannot read the gossip key file", path);
  text.add('\0');
  return kj::String(text.releaseAsArray());
}

}  // namespace

GossipKeys::GossipKeys(kj::String path) : path_(kj::mv(path)) {
  KJ_IF_MAYBE (text, readFile(path_)) {
    size_t lineNo = 0;
    kj::StringPtr rest = *text;
    while (rest.size() > 0) {
      ++lineNo;
      size_t end = 0;
      while (end < rest.size() && rest[end] != '\n') ++end;
      size_t len = end;
      while (len > 0 && (rest[len - 1] == '\r' || rest[len - 1] == ' ')) --len;
      kj::String line = kj::heapString(rest.begin(), len);
      rest = end < rest.size() ? rest.slice(end + 1) : kj::StringPtr();
      if (line.size() == 0 || line[0] == '#') continue;
      KJ_IF_MAYBE (key, cluster::Keyring::parseKey(line)) {
        keys_.push_back(*key);
      } else {
        KJ_FAIL_REQUIRE("gossip key file: a line is not a 64-hex-digit key", path_, lineNo);
      }
    }
    KJ_REQUIRE(keys_.size() > 0, "gossip key file holds no key", path_);
    KJ_REQUIRE(keys_.size() <= cluster::Keyring::kMaxKeys, "gossip key file holds too many keys",
               path_);
  } else {
    keys_.push_back(cluster::Keyring::generateKey());
    save();
    log::warn("fleet.new_gossip_key",
              {{"file", path_.cStr()},
               {"hint", "a new fleet key was made; every other member needs this file"}});
  }
  rebuild();
}

GossipKeys::~GossipKeys() {
  for (auto& key : keys_) sodium_memzero(key.data(), key.size());
}

void GossipKeys::rebuild() {
  auto ring = kj::heap<cluster::Keyring>(keys_[0]);
  for (size_t i = 1; i < keys_.size(); ++i) ring->add(keys_[i]);
  ring_ = kj::mv(ring);
}

void GossipKeys::save() const {
  kj::Vector<char> text;
  for (auto& key : keys_) {
    auto hex = toHex(key);
    text.addAll(hex);
    text.add('\n');
  }
  // Written whole and renamed into place: a crash leaves the old ring or the
  // new one, never half of either.
  kj::String tmp = kj::str(path_, ".tmp");
  int fd = open(tmp.cStr(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) KJ_FAIL_SYSCALL("open", errno, tmp);
  kj::AutoCloseFd owned(fd);
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = write(fd, text.begin() + done, text.size() - done);
    if (n < 0) KJ_FAIL_SYSCALL("write", errno, tmp);
    done += size_t(n);
  }
  KJ_SYSCALL(fsync(fd), tmp);
  KJ_SYSCALL(rename(tmp.cStr(), path_.cStr()), path_);
}

KeyId GossipKeys::requireKnownId(kj::StringPtr keyIdHex) const {
  for (auto& key : keys_) {
    auto id = cluster::Keyring::idOf(key);
    if (cluster::Keyring::keyIdHex(id) == keyIdHex) return id;
  }
  throwApiError(api::ErrorCode::NOT_FOUND, kj::str("no gossip key with id ", keyIdHex));
}

void GossipKeys::add(kj::StringPtr keyHex) {
  KJ_IF_MAYBE (key, cluster::Keyring::parseKey(keyHex)) {
    auto id = cluster::Keyring::idOf(*key);
    if (ring_->has(id)) return;
    if (keys_.size() >= cluster::Keyring::kMaxKeys) {
      throwApiError(api::ErrorCode::LIMIT_EXCEEDED,
                    kj::str("the gossip keyring holds at most ", cluster::Keyring::kMaxKeys,
                            " keys; remove one first"));
    }
    keys_.push_back(*key);
    save();
    rebuild();
  } else {
    throwApiError(api::ErrorCode::INVALID_ARGUMENT, "a gossip key is 64 hex digits (32 bytes)");
  }
}

void GossipKeys::use(kj::StringPtr keyIdHex) {
  auto id = requireKnownId(keyIdHex);
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (cluster::Keyring::idOf(keys_[i]) == id) {
      std::swap(keys_[0], keys_[i]);
      break;
    }
  }
  save();
  rebuild();
}

void GossipKeys::remove(kj::StringPtr keyIdHex) {
  auto id = requireKnownId(keyIdHex);
  if (cluster::Keyring::idOf(keys_[0]) == id) {
    throwApiError(api::ErrorCode::INVALID_ARGUMENT,
                  "that key seals this node's gossip: use another one first");
  }
  for (size_t i = 1; i < keys_.size(); ++i) {
    if (cluster::Keyring::idOf(keys_[i]) == id) {
      sodium_memzero(keys_[i].data(), keys_[i].size());
      keys_.erase(keys_.begin() + i);
      break;
    }
  }
  save();
  rebuild();
}

kj::Array<kj::String> GossipKeys::ids() const {
  auto out = kj::heapArrayBuilder<kj::String>(keys_.size());
  for (auto& key : keys_) out.add(cluster::Keyring::keyIdHex(cluster::Keyring::idOf(key)));
  return out.finish();
}

kj::String GossipKeys::primaryId() const {
  return cluster::Keyring::keyIdHex(cluster::Keyring::idOf(keys_[0]));
}

}  // namespace nodeagent::fleet
