#include "nodeagent/node_key.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include <kj/debug.h>
#include <kj/io.h>

#include "util/log.h"

namespace nodeagent {
namespace {

static_assert(NodeKey::kPublicKeyBytes == crypto_sign_PUBLICKEYBYTES);
static_assert(NodeKey::kSecretKeyBytes == crypto_sign_SECRETKEYBYTES);
static_assert(NodeKey::kSignatureBytes == crypto_sign_BYTES);

void initSodium() {
  // Idempotent and thread-safe; < 0 only if no randomness source works.
  KJ_REQUIRE(sodium_init() >= 0, "libsodium failed to initialize");
}

kj::String parentOf(kj::StringPtr path) {
  KJ_IF_MAYBE (slash, path.findLast('/')) {
    return kj::str(*slash == 0 ? kj::StringPtr("/") : path.slice(0, *slash));
  }
  return kj::str(".");
}

void writeWhole(int fd, const kj::byte* data, size_t size, kj::StringPtr path) {
  while (size > 0) {
    ssize_t n = write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) KJ_FAIL_SYSCALL("write", errno, path);
    data += n;
    size -= size_t(n);
  }
}

}  // namespace

NodeKey::NodeKey() {}

NodeKey::~NodeKey() {
  sodium_memzero(secretKey_, sizeof(secretKey_));
}

kj::Own<NodeKey> NodeKey::generate() {
  initSodium();
  auto key = kj::heap<NodeKey>();
  crypto_sign_keypair(key->publicKey_, key->secretKey_);
  return key;
}

kj::Own<NodeKey> NodeKey::loadOrCreate(kj::StringPtr path) {
  initSodium();
  int fd = open(path.cStr(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    KJ_REQUIRE(errno == ENOENT, "node key: cannot open", path, strerror(errno));
    auto key = generate();
    // Whole or not at all: a temp file, synced, renamed over, directory synced.
    auto temp = kj::str(path, ".tmp");
    unlink(temp.cStr());
    int out;
    KJ_SYSCALL(out = open(temp.cStr(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600), temp);
    kj::AutoCloseFd file(out);
    KJ_SYSCALL(fchmod(file, 0600), temp);  // no umask games
    writeWhole(file, key->secretKey_, sizeof(key->secretKey_), temp);
    KJ_SYSCALL(fsync(file), temp);
    KJ_SYSCALL(rename(temp.cStr(), path.cStr()), path);
    auto dir = parentOf(path);
    int dirFd;
    KJ_SYSCALL(dirFd = open(dir.cStr(), O_RDONLY | O_DIRECTORY | O_CLOEXEC), dir);
    kj::AutoCloseFd dirFile(dirFd);
    KJ_SYSCALL(fsync(dirFile), dir);
    log::info("node_key.created", {{"path", path.cStr()}});
    return key;
  }
  kj::AutoCloseFd file(fd);
  struct stat st;
  KJ_SYSCALL(fstat(file, &st), path);
  if ((st.st_mode & 077) != 0) {
    KJ_SYSCALL(fchmod(file, st.st_mode & 0600), path);
    log::warn("node_key.mode_tightened", {{"path", path.cStr()}});
  }
  KJ_REQUIRE(st.st_size == off_t(kSecretKeyBytes), "node key: wrong size; not a key file", path,
             st.st_size);
  auto key = kj::heap<NodeKey>();
  size_t got = 0;
  while (got < kSecretKeyBytes) {
    ssize_t n = read(file, key->secretKey_ + got, kSecretKeyBytes - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) KJ_FAIL_SYSCALL("read", errno, path);
    KJ_REQUIRE(n > 0, "node key: short read", path);
    got += size_t(n);
  }
  // The secret key carries its public half; derive it again to catch damage.
  kj::byte derived[kPublicKeyBytes];
  crypto_sign_ed25519_sk_to_pk(key->publicKey_, key->secretKey_);
  kj::byte seed[crypto_sign_SEEDBYTES];
  crypto_sign_ed25519_sk_to_seed(seed, key->secretKey_);
  kj::byte rebuilt[kSecretKeyBytes];
  crypto_sign_seed_keypair(derived, rebuilt, seed);
  sodium_memzero(seed, sizeof(seed));
  sodium_memzero(rebuilt, sizeof(rebuilt));
  KJ_REQUIRE(sodium_memcmp(derived, key->publicKey_, kPublicKeyBytes) == 0,
             "node key: damaged (public half does not match the seed)", path);
  return key;
}

kj::Array<kj::byte> NodeKey::sign(kj::ArrayPtr<const kj::byte> message) const {
  auto signature = kj::heapArray<kj::byte>(kSignatureBytes);
  crypto_sign_detached(signature.begin(), nullptr, message.begin(), message.size(), secretKey_);
  return signature;
}

bool NodeKey::verify(kj::ArrayPtr<const kj::byte> publicKey, kj::ArrayPtr<const kj::byte> message,
                     kj::ArrayPtr<const kj::byte> signature) {
  initSodium();
  if (publicKey.size() != kPublicKeyBytes || signature.size() != kSignatureBytes) return false;
  return crypto_sign_verify_detached(signature.begin(), message.begin(), message.size(),
                                     publicKey.begin()) == 0;
}

}  // namespace nodeagent
