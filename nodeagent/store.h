// The agent's durable state: one LMDB environment in the state directory.
//
//   auto store = Store::open("/var/lib/nodeagent");
//   store->update([&](Store::WriteTxn& txn) {   // one atomic, durable commit
//     txn.putSandbox(record);
//     txn.appendAudit(entry);
//   });
//   KJ_IF_MAYBE(r, store->getSandbox("sbx-1")) { use((*r)->get()); }
//
// Named databases inside the environment:
//   "sandboxes"  sandbox id -> state::SandboxRecord (flat-array capnp message)
//   "audit"      big-endian uint64 seq -> state::AuditEntry; append-only, seq
//                assigned here, strictly increasing, never reused, first is 1
//   "ledger"     big-endian uint64 seq -> api::SignedUsageRecord; append-only
//                like "audit" (seq assigned here, first is 1, no gaps)
//   "billed"     sandbox id -> state::BilledTotals: how far the ledger billed it,
//                written in the same transaction as its records
//   "meta"       small named values: schema version, node id, ...
//
// Every write is exactly one LMDB transaction, so a crash at any instant leaves
// the store as it was after the last successful commit (see Durability for
// what "crash" may mean).
//
// Threading: reads may run on any thread, concurrently (the environment is
// opened with MDB_NOTLS, so a read transaction is not tied to its thread).
// Writes belong to one thread (in the agent, the StoreWriter's); a write that starts
// while another write of this Store is in progress is a bug and throws rather
// than blocking on LMDB's writer lock. Don't fork() with a Store open; open it
// again in the child.
#pragma once

#include <capnp/serialize.h>
#include <kj/common.h>
#include <kj/function.h>
#include <kj/memory.h>
#include <kj/string.h>
#include <kj/vector.h>

#include <atomic>
#include <cstdint>

#include "schema/state.capnp.h"

extern "C" {
typedef struct MDB_txn MDB_txn;
typedef unsigned int MDB_dbi;
}

namespace nodeagent {

enum class Durability {
  // fsync data and meta page on every commit (LMDB default). A committed
  // transaction survives a process crash, a kernel panic and a power loss
  // (given a disk that honours flushes). Costs one or two fsyncs per commit.
  kFull,
  // MDB_NOMETASYNC: data pages are flushed on commit, the meta page is left to
  // the next commit or the kernel. Survives a process crash with nothing lost;
  // after a kernel panic or power loss the store is still consistent but the
  // last committed transaction may be rolled back.
  kNoMetaSync,
};

struct StoreOptions {
  // Upper bound of the data file. Writes beyond it fail with an OVERLOADED
  // exception naming MDB_MAP_FULL; the store stays usable (read, delete).
  uint64_t mapSizeBytes = uint64_t(1) << 30;
  Durability durability = Durability::kFull;
  // Concurrent read transactions across all processes using the store.
  unsigned maxReaders = 126;
};

// A message read from the store. Owns an aligned copy of the value, so it
// outlives the read transaction it came from.
template <typename T>
class StoredMessage {
 public:
  explicit StoredMessage(kj::Array<capnp::word> words) : words_(kj::mv(words)), reader_(words_) {}
  KJ_DISALLOW_COPY(StoredMessage);

  typename T::Reader get() { return reader_.getRoot<T>(); }

 private:
  kj::Array<capnp::word> words_;
  capnp::FlatArrayMessageReader reader_;  // points into words_
};

using StoredSandbox = StoredMessage<state::SandboxRecord>;
using StoredAudit = StoredMessage<state::AuditEntry>;
using StoredUsageRecord = StoredMessage<api::SignedUsageRecord>;
using StoredBilled = StoredMessage<state::BilledTotals>;

// True for the exception a write throws when the map size is exhausted.
bool isStoreFull(const kj::Exception& e);

class Store {
  class Env;  // the open MDB_env; private, so that only open() makes a Store

 public:
  // Opens (creating if needed) the store in `dir`. A missing `dir` is created
  // with mode 0700; the data and lock files are 0600. Clears reader slots left
  // by dead processes. Throws if the store was written by a newer schema.
  static kj::Own<Store> open(kj::StringPtr dir, StoreOptions options = {});

  // Use open().
  Store(kj::Own<Env> env, StoreOptions options);
  ~Store();
  KJ_DISALLOW_COPY(Store);

  // The changes of one update() commit together or not at all. Valid only
  // inside the update() callback; reads see the transaction's own writes.
  class WriteTxn {
   public:
    // Inserts or replaces the record keyed by record.getId() (non-empty).
    void putSandbox(state::SandboxRecord::Reader record);
    // Returns false if there was no such sandbox.
    bool deleteSandbox(kj::StringPtr id);
    // Appends a copy of `entry` with seq set to the next number (and timeNs
    // set to now if it is 0); returns that seq.
    uint64_t appendAudit(state::AuditEntry::Reader entry);
    void putMeta(kj::StringPtr key, kj::ArrayPtr<const kj::byte> value);
    // Appends what `encode(seq)` returns (a serialized api::SignedUsageRecord
    // made for that seq) at the next ledger seq, and returns the seq.
    uint64_t appendLedger(kj::FunctionParam<kj::Array<capnp::word>(uint64_t seq)> encode);
    // Inserts or replaces the totals keyed by totals.getSandboxId().
    void putBilled(state::BilledTotals::Reader totals);

    kj::Maybe<kj::Own<StoredSandbox>> getSandbox(kj::StringPtr id);
    kj::Maybe<kj::Array<kj::byte>> getMeta(kj::StringPtr key);
    kj::Maybe<kj::Own<StoredBilled>> getBilled(kj::StringPtr sandboxId);

   private:
    friend class Store;
    WriteTxn(Store& store, MDB_txn* txn) : store_(store), txn_(txn) {}
    KJ_DISALLOW_COPY(WriteTxn);

    // Throws if an earlier operation of this transaction failed: LMDB leaves
    // the transaction unusable then, so it can only be aborted.
    void requireUsable();
    [[noreturn]] void fail(int rc, kj::StringPtr call, kj::StringPtr what);

    // Names the first change and counts the rest, for commit errors.
    void note(kj::String what);

    Store& store_;
    MDB_txn* txn_;
    bool failed_ = false;
    kj::String firstChange_;
    unsigned changes_ = 0;
  };

  // Runs `fn` in one write transaction and commits it (durably, per
  // StoreOptions::durability). If `fn` or the commit throws, nothing is written.
  void update(kj::FunctionParam<void(WriteTxn&)> fn);

  // Single-change shorthands: each is its own update().
  void putSandbox(state::SandboxRecord::Reader record);
  bool deleteSandbox(kj::StringPtr id);
  uint64_t appendAudit(state::AuditEntry::Reader entry);
  void putMeta(kj::StringPtr key, kj::ArrayPtr<const kj::byte> value);

  kj::Maybe<kj::Own<StoredSandbox>> getSandbox(kj::StringPtr id);
  // All sandboxes, ordered by id.
  kj::Vector<kj::Own<StoredSandbox>> listSandboxes();
  // Up to `limit` entries with seq > afterSeq, in seq order. Pass the last seq
  // seen to page through the log; 0 starts at the beginning.
  kj::Vector<kj::Own<StoredAudit>> readAudit(uint64_t afterSeq, size_t limit);
  // Seq of the newest audit entry, 0 if the log is empty.
  uint64_t lastAuditSeq();
  // The usage ledger, paged like readAudit().
  kj::Vector<kj::Own<StoredUsageRecord>> readLedger(uint64_t afterSeq, size_t limit);
  uint64_t lastLedgerSeq();
  kj::Maybe<kj::Own<StoredBilled>> getBilled(kj::StringPtr sandboxId);
  // Every sandbox's billed totals, ordered by id.
  kj::Vector<kj::Own<StoredBilled>> listBilled();
  kj::Maybe<kj::Array<kj::byte>> getMeta(kj::StringPtr key);

  // Random id given to this node when the store was created; never changes.
  kj::StringPtr nodeId() const { return nodeId_; }

  // Meta keys the store owns, and the on-disk layout version this code writes
  // (stored as 8 bytes, big-endian).
  static constexpr kj::StringPtr kSchemaVersionKey = "schemaVersion"_kj;
  static constexpr kj::StringPtr kNodeIdKey = "nodeId"_kj;
  static constexpr uint64_t kSchemaVersion = 1;

 private:
  // Opens the named databases and writes the meta of a new store.
  void initialize();

  kj::Own<Env> env_;
  StoreOptions options_;
  MDB_dbi sandboxes_ = 0;
  MDB_dbi audit_ = 0;
  MDB_dbi meta_ = 0;
  MDB_dbi ledger_ = 0;
  MDB_dbi billed_ = 0;
  kj::String nodeId_;
  std::atomic<bool> writing_{false};
};

}  // namespace nodeagent
