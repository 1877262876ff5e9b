#include "nodeagent/store.h"

#include <capnp/message.h>
#include <errno.h>
#include <fcntl.h>
#include <kj/debug.h>
#include <kj/encoding.h>
#include <lmdb.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "util/clock.h"
#include "util/log.h"

namespace nodeagent {
namespace {

constexpr unsigned kMaxDbs = 8;  // five today
constexpr mode_t kFileMode = 0600;
constexpr mode_t kDirMode = 0700;

// Resource exhaustion is OVERLOADED (the caller may free space or retry);
// everything else is a plain failure.
kj::Exception::Type typeOf(int rc) {
  switch (rc) {
    case MDB_MAP_FULL:
    case MDB_READERS_FULL:
    case MDB_TXN_FULL:
    case ENOSPC:
      return kj::Exception::Type::OVERLOADED;
    default:
      return kj::Exception::Type::FAILED;
  }
}

// `what` names the store operation and its key; `call` the LMDB function.
[[noreturn]] void throwMdb(int rc, kj::StringPtr call, kj::StringPtr what,
                           const StoreOptions& options) {
  kj::String hint;
  if (rc == MDB_MAP_FULL) {
    hint = kj::str(" (store map size limit is ", options.mapSizeBytes,
                   " bytes; free space or raise StoreOptions::mapSizeBytes)");
  } else if (rc == MDB_READERS_FULL) {
    hint = kj::str(" (", options.maxReaders, " concurrent readers)");
  }
  kj::throwFatalException(
      kj::Exception(typeOf(rc), __FILE__, __LINE__,
                    kj::str("store: ", what, ": ", call, ": ", mdb_strerror(rc), hint)));
}

MDB_val bytesVal(kj::ArrayPtr<const kj::byte> bytes) {
  return MDB_val{bytes.size(), const_cast<kj::byte*>(bytes.begin())};
}

MDB_val textVal(kj::StringPtr text) {
  return bytesVal(text.asBytes());
}

// Audit keys are big-endian so that LMDB's byte order is numeric order.
void encodeSeq(uint64_t seq, kj::byte out[8]) {
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<kj::byte>(seq);
    seq >>= 8;
  }
}

uint64_t decodeSeq(const MDB_val& val, kj::StringPtr what) {
  KJ_REQUIRE(val.mv_size == 8, "store: corrupt big-endian uint64", what, val.mv_size);
  auto bytes = static_cast<const kj::byte*>(val.mv_data);
  uint64_t seq = 0;
  for (int i = 0; i < 8; ++i) seq = (seq << 8) | bytes[i];
  return seq;
}

kj::String keyText(const MDB_val& key) {
  return kj::heapString(static_cast<const char*>(key.mv_data), key.mv_size);
}

// LMDB hands out values at 2-byte alignment inside its map, and only for the
// life of the transaction; capnp needs 8-byte alignment. So: copy.
template <typename T>
kj::Own<StoredMessage<T>> copyMessage(const MDB_val& value, kj::StringPtr what) {
  KJ_REQUIRE(value.mv_size > 0 && value.mv_size % sizeof(capnp::word) == 0,
             "store: corrupt value: not a capnp message", what, value.mv_size);
  auto words = kj::heapArray<capnp::word>(value.mv_size / sizeof(capnp::word));
  memcpy(words.begin(), value.mv_data, value.mv_size);
  return kj::heap<StoredMessage<T>>(kj::mv(words));
}

template <typename T>
kj::Array<capnp::word> serialize(typename T::Reader root,
                                 kj::FunctionParam<void(typename T::Builder)> edit) {
  capnp::MallocMessageBuilder message(root.totalSize().wordCount + 1);
  message.setRoot(root);
  edit(message.getRoot<T>());
  return capnp::messageToFlatArray(message);
}

// One LMDB transaction; aborted on destruction unless committed.
class Txn {
 public:
  Txn(MDB_env* env, unsigned flags, const StoreOptions& options) : options_(options) {
    int rc = mdb_txn_begin(env, nullptr, flags, &txn_);
    if (rc == MDB_READERS_FULL) {
      // Slots of crashed readers are only reclaimed on demand.
      int dead = 0;
      mdb_reader_check(env, &dead);
      if (dead > 0) rc = mdb_txn_begin(env, nullptr, flags, &txn_);
    }
    if (rc != MDB_SUCCESS) {
      txn_ = nullptr;
      throwMdb(rc, "mdb_txn_begin", (flags & MDB_RDONLY) ? "read" : "write", options_);
    }
  }
  ~Txn() {
    if (txn_ != nullptr) mdb_txn_abort(txn_);
  }
  KJ_DISALLOW_COPY(Txn);

  MDB_txn* get() { return txn_; }

  void commit(kj::StringPtr what) {
    // mdb_txn_commit frees the transaction even when it fails.
    MDB_txn* txn = txn_;
    txn_ = nullptr;
    int rc = mdb_txn_commit(txn);
    if (rc != MDB_SUCCESS) throwMdb(rc, "mdb_txn_commit", what, options_);
  }

 private:
  MDB_txn* txn_ = nullptr;
  const StoreOptions& options_;
};

// Must not outlive its transaction (write cursors die with it).
class Cursor {
 public:
  Cursor(MDB_txn* txn, MDB_dbi dbi, kj::StringPtr what, const StoreOptions& options) {
    int rc = mdb_cursor_open(txn, dbi, &cursor_);
    if (rc != MDB_SUCCESS) throwMdb(rc, "mdb_cursor_open", what, options);
  }
  ~Cursor() { mdb_cursor_close(cursor_); }
  KJ_DISALLOW_COPY(Cursor);

  // False at the end of the database.
  bool get(MDB_val* key, MDB_val* value, MDB_cursor_op op, kj::StringPtr what,
           const StoreOptions& options) {
    int rc = mdb_cursor_get(cursor_, key, value, op);
    if (rc == MDB_NOTFOUND) return false;
    if (rc != MDB_SUCCESS) throwMdb(rc, "mdb_cursor_get", what, options);
    return true;
  }

 private:
  MDB_cursor* cursor_ = nullptr;
};

kj::Maybe<MDB_val> getValue(MDB_txn* txn, MDB_dbi dbi, MDB_val key, kj::StringPtr what,
                            const StoreOptions& options) {
  MDB_val value;
  int rc = mdb_get(txn, dbi, &key, &value);
  if (rc == MDB_NOTFOUND) return nullptr;
  if (rc != MDB_SUCCESS) throwMdb(rc, "mdb_get", what, options);
  return value;
}

// The newest key of a seq-keyed database ("audit", "ledger"); 0 when empty.
uint64_t lastSeq(MDB_txn* txn, MDB_dbi dbi, kj::StringPtr what, const StoreOptions& options) {
  Cursor cursor(txn, dbi, what, options);
  MDB_val key, value;
  if (!cursor.get(&key, &value, MDB_LAST, what, options)) return 0;
  return decodeSeq(key, what);
}

// Up to `limit` values of a seq-keyed database with seq > afterSeq.
template <typename T>
kj::Vector<kj::Own<StoredMessage<T>>> readAfter(MDB_txn* txn, MDB_dbi dbi, uint64_t afterSeq,
                                                size_t limit, kj::StringPtr what,
                                                const StoreOptions& options) {
  kj::Vector<kj::Own<StoredMessage<T>>> result;
  if (limit == 0 || afterSeq == UINT64_MAX) return result;
  Cursor cursor(txn, dbi, what, options);
  kj::byte start[8];
  encodeSeq(afterSeq + 1, start);
  MDB_val key = bytesVal(start), value;
  for (auto op = MDB_SET_RANGE;
       result.size() < limit && cursor.get(&key, &value, op, what, options); op = MDB_NEXT) {
    result.add(copyMessage<T>(value, kj::str(what, " seq ", decodeSeq(key, what))));
  }
  return result;
}

void requireKey(MDB_env* env, kj::StringPtr what, kj::StringPtr key) {
  KJ_REQUIRE(key.size() > 0, "store: empty key", what);
  KJ_REQUIRE(key.size() <= size_t(mdb_env_get_maxkeysize(env)), "store: key too long", what,
             key.size());
}

kj::String newNodeId() {
  kj::byte bytes[16];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n < 0 && errno == EINTR) continue;
    KJ_REQUIRE(n > 0, "getrandom failed", strerror(errno));
    got += n;
  }
  return kj::encodeHex(bytes);
}

// Creates a missing `dir` with mode 0700 (missing parents 0755). The mode is
// set explicitly so that no umask changes it; an existing dir is left alone.
void makeStateDir(kj::StringPtr dir) {
  KJ_REQUIRE(dir.size() > 0, "store: empty state directory");
  struct stat st;
  if (stat(dir.cStr(), &st) == 0) {
    KJ_REQUIRE(S_ISDIR(st.st_mode), "store: state path exists but is not a directory", dir);
    return;
  }
  KJ_REQUIRE(errno == ENOENT, "store: cannot stat state directory", dir, strerror(errno));
  for (size_t i = 1; i < dir.size(); ++i) {
    if (dir[i] != '/') continue;
    auto parent = kj::heapString(dir.slice(0, i));
    if (mkdir(parent.cStr(), 0755) == 0) {
      chmod(parent.cStr(), 0755);
    } else if (errno != EEXIST) {
      KJ_FAIL_REQUIRE("store: cannot create directory", parent, strerror(errno));
    }
  }
  if (mkdir(dir.cStr(), kDirMode) != 0 && errno != EEXIST) {
    KJ_FAIL_REQUIRE("store: cannot create state directory", dir, strerror(errno));
  }
  KJ_REQUIRE(chmod(dir.cStr(), kDirMode) == 0, "store: chmod state directory", dir,
             strerror(errno));
}

// LMDB creates its files with the mode we pass, minus the umask; a file made
// earlier by someone else may be looser. Tighten, never loosen.
void restrictMode(kj::StringPtr path) {
  struct stat st;
  if (stat(path.cStr(), &st) != 0) return;
  if ((st.st_mode & 077) != 0) {
    KJ_REQUIRE(chmod(path.cStr(), st.st_mode & kFileMode) == 0, "store: chmod", path,
               strerror(errno));
    log::warn("store.mode_tightened", {{"path", path.cStr()}});
  }
}

}  // namespace

bool isStoreFull(const kj::Exception& e) {
  return e.getType() == kj::Exception::Type::OVERLOADED &&
         strstr(e.getDescription().cStr(), "MDB_MAP_FULL") != nullptr;
}

// ---------------------------------------------------------------------------
// Env

class Store::Env {
 public:
  explicit Env(const StoreOptions& options) {
    int rc = mdb_env_create(&env_);
    if (rc != MDB_SUCCESS) throwMdb(rc, "mdb_env_create", "open", options);
  }
  ~Env() { mdb_env_close(env_); }
  KJ_DISALLOW_COPY(Env);

  MDB_env* get() { return env_; }

 private:
  MDB_env* env_ = nullptr;
};

// ---------------------------------------------------------------------------
// Store

kj::Own<Store> Store::open(kj::StringPtr dir, StoreOptions options) {
  makeStateDir(dir);
  auto env = kj::heap<Env>(options);
  auto what = kj::str("open ", dir);
  int rc = mdb_env_set_mapsize(env->get(), options.mapSizeBytes);
  if (rc != MDB_SUCCESS) throwMdb(rc, "mdb_env_set_mapsize", what, options);
  rc = mdb_env_set_maxreaders(env->get(), options.maxReaders);
  if (rc != MDB_SUCCESS) throwMdb(rc, "mdb_env_set_maxreaders", what, options);
  rc = mdb_env_set_maxdbs(env->get(), kMaxDbs);
  if (rc != MDB_SUCCESS) throwMdb(rc, "mdb_env_set_maxdbs", what, options);

  // MDB_NOTLS: a reader slot belongs to the transaction, not the thread, so
  // one thread may hold several read transactions (KJ interleaves callers on
  // the loop thread) and worker threads may read too.
  unsigned flags = MDB_NOTLS;
  if (options.durability == Durability::kNoMetaSync) flags |= MDB_NOMETASYNC;
  rc = mdb_env_open(env->get(), dir.cStr(), flags, kFileMode);
  if (rc != MDB_SUCCESS) throwMdb(rc, "mdb_env_open", what, options);
  restrictMode(kj::str(dir, "/data.mdb"));
  restrictMode(kj::str(dir, "/lock.mdb"));

  // A process killed mid-read leaves its reader slot behind, pinning old
  // pages until the slot is cleared.
  int dead = 0;
  rc = mdb_reader_check(env->get(), &dead);
  if (rc != MDB_SUCCESS) throwMdb(rc, "mdb_reader_check", what, options);
  if (dead > 0) log::info("store.stale_readers_cleared", {{"dir", dir.cStr()}, {"count", dead}});

  auto store = kj::heap<Store>(kj::mv(env), options);
  store->initialize();
  return store;
}

Store::Store(kj::Own<Env> env, StoreOptions options) : env_(kj::mv(env)), options_(options) {}

Store::~Store() = default;

void Store::initialize() {
  Txn txn(env_->get(), 0, options_);
  auto openDb = [&](const char* name) {
    MDB_dbi dbi;
    int rc = mdb_dbi_open(txn.get(), name, MDB_CREATE, &dbi);
    if (rc != MDB_SUCCESS) throwMdb(rc, "mdb_dbi_open", kj::str("open database ", name), options_);
    return dbi;
  };
  sandboxes_ = openDb("sandboxes");
  audit_ = openDb("audit");
  meta_ = openDb("meta");
  ledger_ = openDb("ledger");
  billed_ = openDb("billed");

  WriteTxn writer(*this, txn.get());
  KJ_IF_MAYBE (version, writer.getMeta(kSchemaVersionKey)) {
    uint64_t found = decodeSeq(bytesVal(*version), kSchemaVersionKey);
    KJ_REQUIRE(found <= kSchemaVersion, "store: written by a newer agent; refusing to open", found,
               kSchemaVersion);
  } else {
    kj::byte bytes[8];
    encodeSeq(kSchemaVersion, bytes);
    writer.putMeta(kSchemaVersionKey, bytes);
    auto id = newNodeId();
    writer.putMeta(kNodeIdKey, id.asBytes());
  }
  KJ_IF_MAYBE (id, writer.getMeta(kNodeIdKey)) {
    nodeId_ = kj::heapString(id->asChars());
  } else {
    KJ_FAIL_REQUIRE("store: meta has a schema version but no node id");
  }
  // The database handles become visible to other transactions on commit.
  txn.commit("open");
}

void Store::update(kj::FunctionParam<void(WriteTxn&)> fn) {
  if (writing_.exchange(true)) {
    KJ_FAIL_REQUIRE("store: writes must not nest or run concurrently (one writer thread)");
  }
  KJ_DEFER(writing_.store(false));
  Txn txn(env_->get(), 0, options_);
  WriteTxn writer(*this, txn.get());
  fn(writer);
  // The callback caught a failed operation's exception and carried on.
  KJ_REQUIRE(!writer.failed_, "store: update() body ignored a failed write; nothing committed");
  if (writer.changes_ == 0) return;  // nothing to make durable; the abort is free
  txn.commit(kj::str("update of ", writer.changes_, " change(s), first ", writer.firstChange_));
}

void Store::putSandbox(state::SandboxRecord::Reader record) {
  update([&](WriteTxn& txn) { txn.putSandbox(record); });
}

bool Store::deleteSandbox(kj::StringPtr id) {
  bool deleted = false;
  update([&](WriteTxn& txn) { deleted = txn.deleteSandbox(id); });
  return deleted;
}

uint64_t Store::appendAudit(state::AuditEntry::Reader entry) {
  uint64_t seq = 0;
  update([&](WriteTxn& txn) { seq = txn.appendAudit(entry); });
  return seq;
}

void Store::putMeta(kj::StringPtr key, kj::ArrayPtr<const kj::byte> value) {
  update([&](WriteTxn& txn) { txn.putMeta(key, value); });
}

kj::Maybe<kj::Own<StoredSandbox>> Store::getSandbox(kj::StringPtr id) {
  auto what = kj::str("getSandbox ", id);
  requireKey(env_->get(), what, id);
  Txn txn(env_->get(), MDB_RDONLY, options_);
  KJ_IF_MAYBE (value, getValue(txn.get(), sandboxes_, textVal(id), what, options_)) {
    return copyMessage<state::SandboxRecord>(*value, what);
  }
  return nullptr;
}

kj::Vector<kj::Own<StoredSandbox>> Store::listSandboxes() {
  kj::Vector<kj::Own<StoredSandbox>> result;
  Txn txn(env_->get(), MDB_RDONLY, options_);
  Cursor cursor(txn.get(), sandboxes_, "listSandboxes", options_);
  MDB_val key, value;
  for (auto op = MDB_FIRST; cursor.get(&key, &value, op, "listSandboxes", options_);
       op = MDB_NEXT) {
    result.add(copyMessage<state::SandboxRecord>(value, kj::str("listSandboxes ", keyText(key))));
  }
  return result;
}

kj::Vector<kj::Own<StoredAudit>> Store::readAudit(uint64_t afterSeq, size_t limit) {
  Txn txn(env_->get(), MDB_RDONLY, options_);
  return readAfter<state::AuditEntry>(txn.get(), audit_, afterSeq, limit, "readAudit", options_);
}

uint64_t Store::lastAuditSeq() {
  Txn txn(env_->get(), MDB_RDONLY, options_);
  return lastSeq(txn.get(), audit_, "lastAuditSeq", options_);
}

kj::Vector<kj::Own<StoredUsageRecord>> Store::readLedger(uint64_t afterSeq, size_t limit) {
  Txn txn(env_->get(), MDB_RDONLY, options_);
  return readAfter<api::SignedUsageRecord>(txn.get(), ledger_, afterSeq, limit, "readLedger",
                                           options_);
}

uint64_t Store::lastLedgerSeq() {
  Txn txn(env_->get(), MDB_RDONLY, options_);
  return lastSeq(txn.get(), ledger_, "lastLedgerSeq", options_);
}

kj::Maybe<kj::Own<StoredBilled>> Store::getBilled(kj::StringPtr sandboxId) {
  auto what = kj::str("getBilled ", sandboxId);
  requireKey(env_->get(), what, sandboxId);
  Txn txn(env_->get(), MDB_RDONLY, options_);
  KJ_IF_MAYBE (value, getValue(txn.get(), billed_, textVal(sandboxId), what, options_)) {
    return copyMessage<state::BilledTotals>(*value, what);
  }
  return nullptr;
}

kj::Vector<kj::Own<StoredBilled>> Store::listBilled() {
  kj::Vector<kj::Own<StoredBilled>> result;
  Txn txn(env_->get(), MDB_RDONLY, options_);
  Cursor cursor(txn.get(), billed_, "listBilled", options_);
  MDB_val key, value;
  for (auto op = MDB_FIRST; cursor.get(&key, &value, op, "listBilled", options_); op = MDB_NEXT) {
    result.add(copyMessage<state::BilledTotals>(value, kj::str("listBilled ", keyText(key))));
  }
  return result;
}

kj::Maybe<kj::Array<kj::byte>> Store::getMeta(kj::StringPtr key) {
  auto what = kj::str("getMeta ", key);
  requireKey(env_->get(), what, key);
  Txn txn(env_->get(), MDB_RDONLY, options_);
  KJ_IF_MAYBE (value, getValue(txn.get(), meta_, textVal(key), what, options_)) {
    return kj::heapArray(static_cast<const kj::byte*>(value->mv_data), value->mv_size);
  }
  return nullptr;
}

// ---------------------------------------------------------------------------
// WriteTxn

void Store::WriteTxn::requireUsable() {
  KJ_REQUIRE(!failed_, "store: an earlier write of this transaction failed");
}

void Store::WriteTxn::note(kj::String what) {
  if (changes_++ == 0) firstChange_ = kj::mv(what);
}

void Store::WriteTxn::fail(int rc, kj::StringPtr call, kj::StringPtr what) {
  throwMdb(rc, call, what, store_.options_);
}

void Store::WriteTxn::putSandbox(state::SandboxRecord::Reader record) {
  requireUsable();
  kj::StringPtr id = record.getId();
  auto what = kj::str("putSandbox ", id);
  requireKey(store_.env_->get(), what, id);
  KJ_ON_SCOPE_FAILURE(failed_ = true);
  auto words = serialize<state::SandboxRecord>(record, [](auto) {});
  MDB_val key = textVal(id), value = bytesVal(words.asBytes());
  int rc = mdb_put(txn_, store_.sandboxes_, &key, &value, 0);
  if (rc != MDB_SUCCESS) fail(rc, "mdb_put", what);
  note(kj::mv(what));
}

bool Store::WriteTxn::deleteSandbox(kj::StringPtr id) {
  requireUsable();
  auto what = kj::str("deleteSandbox ", id);
  requireKey(store_.env_->get(), what, id);
  KJ_ON_SCOPE_FAILURE(failed_ = true);
  MDB_val key = textVal(id);
  int rc = mdb_del(txn_, store_.sandboxes_, &key, nullptr);
  if (rc == MDB_NOTFOUND) return false;
  if (rc != MDB_SUCCESS) fail(rc, "mdb_del", what);
  note(kj::mv(what));
  return true;
}

uint64_t Store::WriteTxn::appendAudit(state::AuditEntry::Reader entry) {
  requireUsable();
  KJ_ON_SCOPE_FAILURE(failed_ = true);
  uint64_t seq = lastSeq(txn_, store_.audit_, "audit", store_.options_) + 1;
  auto what = kj::str("appendAudit seq ", seq, " action ", entry.getAction());
  int64_t now = entry.getTimeNs() == 0 ? unixNowNs() : entry.getTimeNs();
  auto words = serialize<state::AuditEntry>(entry, [&](state::AuditEntry::Builder b) {
    b.setSeq(seq);
    b.setTimeNs(now);
  });
  kj::byte keyBytes[8];
  encodeSeq(seq, keyBytes);
  MDB_val key = bytesVal(keyBytes), value = bytesVal(words.asBytes());
  // MDB_APPEND: the key must sort after every existing one, which is exactly
  // the append-only rule; LMDB checks it and skips the tree search.
  int rc = mdb_put(txn_, store_.audit_, &key, &value, MDB_APPEND | MDB_NOOVERWRITE);
  if (rc != MDB_SUCCESS) fail(rc, "mdb_put", what);
  note(kj::mv(what));
  return seq;
}

void Store::WriteTxn::putMeta(kj::StringPtr key, kj::ArrayPtr<const kj::byte> value) {
  requireUsable();
  auto what = kj::str("putMeta ", key);
  requireKey(store_.env_->get(), what, key);
  KJ_ON_SCOPE_FAILURE(failed_ = true);
  MDB_val k = textVal(key), v = bytesVal(value);
  int rc = mdb_put(txn_, store_.meta_, &k, &v, 0);
  if (rc != MDB_SUCCESS) fail(rc, "mdb_put", what);
  note(kj::mv(what));
}

uint64_t Store::WriteTxn::appendLedger(
    kj::FunctionParam<kj::Array<capnp::word>(uint64_t seq)> encode) {
  requireUsable();
  KJ_ON_SCOPE_FAILURE(failed_ = true);
  uint64_t seq = lastSeq(txn_, store_.ledger_, "ledger", store_.options_) + 1;
  auto what = kj::str("appendLedger seq ", seq);
  auto words = encode(seq);
  KJ_REQUIRE(words.size() > 0, "store: empty ledger value", what);
  kj::byte keyBytes[8];
  encodeSeq(seq, keyBytes);
  MDB_val key = bytesVal(keyBytes), value = bytesVal(words.asBytes());
  int rc = mdb_put(txn_, store_.ledger_, &key, &value, MDB_APPEND | MDB_NOOVERWRITE);
  if (rc != MDB_SUCCESS) fail(rc, "mdb_put", what);
  note(kj::mv(what));
  return seq;
}

void Store::WriteTxn::putBilled(state::BilledTotals::Reader totals) {
  requireUsable();
  kj::StringPtr id = totals.getSandboxId();
  auto what = kj::str("putBilled ", id);
  requireKey(store_.env_->get(), what, id);
  KJ_ON_SCOPE_FAILURE(failed_ = true);
  auto words = serialize<state::BilledTotals>(totals, [](auto) {});
  MDB_val key = textVal(id), value = bytesVal(words.asBytes());
  int rc = mdb_put(txn_, store_.billed_, &key, &value, 0);
  if (rc != MDB_SUCCESS) fail(rc, "mdb_put", what);
  note(kj::mv(what));
}

kj::Maybe<kj::Own<StoredBilled>> Store::WriteTxn::getBilled(kj::StringPtr sandboxId) {
  requireUsable();
  auto what = kj::str("getBilled ", sandboxId);
  requireKey(store_.env_->get(), what, sandboxId);
  KJ_ON_SCOPE_FAILURE(failed_ = true);
  KJ_IF_MAYBE (value, getValue(txn_, store_.billed_, textVal(sandboxId), what, store_.options_)) {
    return copyMessage<state::BilledTotals>(*value, what);
  }
  return nullptr;
}

kj::Maybe<kj::Own<StoredSandbox>> Store::WriteTxn::getSandbox(kj::StringPtr id) {
  requireUsable();
  auto what = kj::str("getSandbox ", id);
  requireKey(store_.env_->get(), what, id);
  KJ_ON_SCOPE_FAILURE(failed_ = true);
  KJ_IF_MAYBE (value, getValue(txn_, store_.sandboxes_, textVal(id), what, store_.options_)) {
    return copyMessage<state::SandboxRecord>(*value, what);
  }
  return nullptr;
}

kj::Maybe<kj::Array<kj::byte>> Store::WriteTxn::getMeta(kj::StringPtr key) {
  requireUsable();
  auto what = kj::str("getMeta ", key);
  requireKey(store_.env_->get(), what, key);
  KJ_ON_SCOPE_FAILURE(failed_ = true);
  KJ_IF_MAYBE (value, getValue(txn_, store_.meta_, textVal(key), what, store_.options_)) {
    return kj::heapArray(static_cast<const kj::byte*>(value->mv_data), value->mv_size);
  }
  return nullptr;
}

}  // namespace nodeagent
