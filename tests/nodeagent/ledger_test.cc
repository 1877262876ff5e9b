// The usage ledger's storage: the node key, signed records appended with
// their billed totals in one transaction, reading after a cursor, and
// verification of what a gateway receives.
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <ftw.h>
#include <gtest/gtest.h>
#include <kj/debug.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "nodeagent/ledger_entry.h"
#include "nodeagent/node_key.h"
#include "nodeagent/store.h"

namespace nodeagent {
namespace {

class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base != nullptr ? base : "/tmp") + "/ledger_test.XXXXXX";
    KJ_REQUIRE(mkdtemp(pattern.data()) != nullptr, strerror(errno));
    path_ = pattern;
  }
  ~TempDir() {
    nftw(
        path_.c_str(), [](const char* p, const struct stat*, int, FTW*) { return ::remove(p); }, 16,
        FTW_DEPTH | FTW_PHYS);
  }
  std::string sub(const char* name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

UsageSnapshot snapshot(kj::StringPtr id, int64_t atNs, uint64_t cpuNs, uint64_t requests = 0) {
  UsageSnapshot s;
  s.sandboxId = kj::str(id);
  s.tenant = kj::str("tenant-a");
  s.startedAtNs = 1'000;
  s.atNs = atNs;
  s.counters.cpuNs = cpuNs;
  s.counters.wallRunningNs = uint64_t(atNs - 1'000);
  s.counters.memoryByteSeconds = uint64_t(atNs) / 10;
  s.counters.egressBytes = cpuNs / 2;
  s.counters.rpcRequests = requests;
  s.counters.memoryBytes = 4096;
  s.cause = kj::str("interval");
  return s;
}

uint64_t append(Store& store, const NodeKey& key, const UsageSnapshot& s) {
  uint64_t seq = 0;
  store.update([&](Store::WriteTxn& txn) { seq = appendUsageRecord(txn, key, "node-1", s); });
  return seq;
}

kj::Own<StoredMessage<api::UsageRecord>> verified(const NodeKey& key, StoredUsageRecord& stored) {
  auto record = verifyUsageRecord(key.publicKey(), stored.get());
  KJ_REQUIRE(record != nullptr, "record did not verify");
  return kj::mv(KJ_ASSERT_NONNULL(record));
}

TEST(NodeKey, CreatedOnceWithMode0600ThenLoaded) {
  TempDir dir;
  auto path = dir.sub("node.key");
  auto first = NodeKey::loadOrCreate(path.c_str());
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(st.st_size, off_t(NodeKey::kSecretKeyBytes));
  auto again = NodeKey::loadOrCreate(path.c_str());
  EXPECT_EQ(again->publicKey(), first->publicKey());

  kj::StringPtr message = "usage";
  auto signature = first->sign(message.asBytes());
  EXPECT_TRUE(NodeKey::verify(again->publicKey(), message.asBytes(), signature));
  EXPECT_FALSE(NodeKey::verify(again->publicKey(), kj::StringPtr("usagE").asBytes(), signature));
  EXPECT_FALSE(NodeKey::verify(NodeKey::generate()->publicKey(), message.asBytes(), signature));
  EXPECT_FALSE(NodeKey::verify(first->publicKey(), message.asBytes(), signature.slice(0, 10)));
}

TEST(NodeKey, ADamagedKeyFileIsRefused) {
  TempDir dir;
  auto path = dir.sub("node.key");
  NodeKey::loadOrCreate(path.c_str());
  ASSERT_EQ(truncate(path.c_str(), 32), 0);
  EXPECT_TRUE(kj::runCatchingExceptions([&]() { NodeKey::loadOrCreate(path.c_str()); }) != nullptr);
}

TEST(Ledger, RecordsAreDeltasReadAfterACursorAndSigned) {
  TempDir dir;
  auto store = Store::open(dir.sub("state").c_str());
  auto key = NodeKey::generate();
  EXPECT_EQ(append(*store, *key, snapshot("sbx-a", 2'000, 100, 1)), 1u);
  EXPECT_EQ(append(*store, *key, snapshot("sbx-b", 2'500, 40)), 2u);
  EXPECT_EQ(append(*store, *key, snapshot("sbx-a", 3'000, 250, 4)), 3u);
  EXPECT_EQ(store->lastLedgerSeq(), 3u);

  auto all = store->readLedger(0, 10);
  ASSERT_EQ(all.size(), 3u);
  auto first = verified(*key, *all[0]);
  auto second = verified(*key, *all[2]);
  auto a1 = first->get(), a2 = second->get();
  EXPECT_EQ(a1.getSeq(), 1u);
  EXPECT_EQ(a1.getNodeId(), "node-1");
  EXPECT_EQ(a1.getSandboxId(), "sbx-a");
  EXPECT_EQ(a1.getTenant(), "tenant-a");
  EXPECT_EQ(a1.getPeriodStartNs(), 1'000);  // the sandbox's start
  EXPECT_EQ(a1.getPeriodEndNs(), 2'000);
  EXPECT_EQ(a1.getCpuNs(), 100u);
  EXPECT_EQ(a1.getRpcRequests(), 1u);
  EXPECT_EQ(a2.getSeq(), 3u);
  EXPECT_EQ(a2.getPeriodStartNs(), 2'000);  // where the last one ended
  EXPECT_EQ(a2.getPeriodEndNs(), 3'000);
  EXPECT_EQ(a2.getCpuNs(), 150u);
  EXPECT_EQ(a2.getWallRunningNs(), 1'000u);
  EXPECT_EQ(a2.getMemoryByteSeconds(), 100u);
  EXPECT_EQ(a2.getEgressBytes(), 75u);
  EXPECT_EQ(a2.getRpcRequests(), 3u);
  EXPECT_FALSE(a2.getFinal());

  auto after = store->readLedger(1, 10);
  ASSERT_EQ(after.size(), 2u);
  EXPECT_EQ(verified(*key, *after[0])->get().getSeq(), 2u);
  EXPECT_EQ(store->readLedger(1, 1).size(), 1u);
  EXPECT_EQ(store->readLedger(3, 10).size(), 0u);

  auto totals = KJ_ASSERT_NONNULL(store->getBilled("sbx-a"));
  EXPECT_EQ(totals->get().getCpuNs(), 250u);
  EXPECT_EQ(totals->get().getBilledToNs(), 3'000);
  EXPECT_EQ(totals->get().getRpcRequests(), 4u);
  EXPECT_EQ(totals->get().getLastMemoryBytes(), 4096u);
  EXPECT_EQ(store->listBilled().size(), 2u);
}

TEST(Ledger, TotalsCommitWithTheirRecordOrNeither) {
  TempDir dir;
  auto key = NodeKey::generate();
  {
    auto store = Store::open(dir.sub("state").c_str());
    append(*store, *key, snapshot("sbx-a", 2'000, 100));
    // A transaction that fails after the record: neither record nor totals.
    auto failure = kj::runCatchingExceptions([&]() {
      store->update([&](Store::WriteTxn& txn) {
        appendUsageRecord(txn, *key, "node-1", snapshot("sbx-a", 3'000, 300));
        KJ_FAIL_REQUIRE("crash before commit");
      });
    });
    ASSERT_TRUE(failure != nullptr);
    EXPECT_EQ(store->lastLedgerSeq(), 1u);
    EXPECT_EQ(KJ_ASSERT_NONNULL(store->getBilled("sbx-a"))->get().getCpuNs(), 100u);
  }
  // A new agent on the same store: the next record covers the lost one's
  // period too, and starts where the last committed record ended.
  auto store = Store::open(dir.sub("state").c_str());
  EXPECT_EQ(append(*store, *key, snapshot("sbx-a", 4'000, 400)), 2u);
  auto records = store->readLedger(0, 10);
  ASSERT_EQ(records.size(), 2u);
  auto record = verified(*key, *records[1]);
  EXPECT_EQ(record->get().getPeriodStartNs(), 2'000);
  EXPECT_EQ(record->get().getCpuNs(), 300u);
}

TEST(Ledger, TheFinalRecordIsTheLastAndBackwardCountersBillNothing) {
  TempDir dir;
  auto store = Store::open(dir.sub("state").c_str());
  auto key = NodeKey::generate();
  append(*store, *key, snapshot("sbx-a", 2'000, 500));
  // A meter that restarted below the billed figure: 0 now, the total stays.
  append(*store, *key, snapshot("sbx-a", 3'000, 200));
  auto end = snapshot("sbx-a", 4'000, 700);
  end.final = true;
  end.cause = kj::str("end");
  end.endReason = kj::str("killed");
  EXPECT_EQ(append(*store, *key, end), 3u);
  EXPECT_EQ(append(*store, *key, snapshot("sbx-a", 5'000, 900)), 0u);  // nothing after the end
  auto records = store->readLedger(0, 10);
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(verified(*key, *records[1])->get().getCpuNs(), 0u);
  auto last = verified(*key, *records[2]);
  EXPECT_EQ(last->get().getCpuNs(), 200u);
  EXPECT_TRUE(last->get().getFinal());
  EXPECT_EQ(last->get().getEndReason(), "killed");
  EXPECT_TRUE(KJ_ASSERT_NONNULL(store->getBilled("sbx-a"))->get().getFinal());

  // Ended while no agent ran: a final record with nothing more billed.
  append(*store, *key, snapshot("sbx-b", 2'000, 500, 3));
  auto unseen = snapshot("sbx-b", 9'000, 0);
  unseen.final = true;
  unseen.countersUnknown = true;
  unseen.endReason = kj::str("lost-on-restart");
  EXPECT_EQ(append(*store, *key, unseen), 5u);
  auto lost = verified(*key, *store->readLedger(4, 1)[0]);
  EXPECT_EQ(lost->get().getCpuNs(), 0u);
  EXPECT_EQ(lost->get().getRpcRequests(), 0u);
  EXPECT_EQ(lost->get().getMemoryByteSeconds(), 0u);
  EXPECT_EQ(lost->get().getPeriodEndNs(), 9'000);
  EXPECT_EQ(KJ_ASSERT_NONNULL(store->getBilled("sbx-b"))->get().getRpcRequests(), 3u);
}

TEST(Ledger, AModifiedRecordOrSignatureFailsVerification) {
  TempDir dir;
  auto store = Store::open(dir.sub("state").c_str());
  auto key = NodeKey::generate();
  append(*store, *key, snapshot("sbx-a", 2'000, 100));
  auto stored = kj::mv(store->readLedger(0, 1)[0]);
  ASSERT_TRUE(verifyUsageRecord(key->publicKey(), stored->get()) != nullptr);

  // Rebuilt with one figure changed, the original signature kept.
  auto original = parseUsageRecord(stored->get());
  capnp::MallocMessageBuilder edited;
  edited.setRoot(original->get());
  edited.getRoot<api::UsageRecord>().setCpuNs(1);
  capnp::MallocMessageBuilder forged;
  auto forgery = forged.initRoot<api::SignedUsageRecord>();
  forgery.setRecord(capnp::messageToFlatArray(edited).asBytes());
  forgery.setSignature(stored->get().getSignature());
  EXPECT_TRUE(verifyUsageRecord(key->publicKey(), forgery.asReader()) == nullptr);

  // Any flipped bit of the record bytes or the signature.
  for (bool inSignature : {false, true}) {
    capnp::MallocMessageBuilder copy;
    copy.setRoot(stored->get());
    auto root = copy.getRoot<api::SignedUsageRecord>();
    auto bytes = inSignature ? root.getSignature() : root.getRecord();
    bytes[bytes.size() / 2] ^= 0x01;
    EXPECT_TRUE(verifyUsageRecord(key->publicKey(), root.asReader()) == nullptr) << inSignature;
  }
  // Another node's key.
  EXPECT_TRUE(verifyUsageRecord(NodeKey::generate()->publicKey(), stored->get()) == nullptr);
}

}  // namespace
}  // namespace nodeagent
