#include "nodeagent/store.h"

#include <capnp/message.h>
#include <ftw.h>
#include <gtest/gtest.h>
#include <kj/debug.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace nodeagent {
namespace {

// A fresh directory under $TMPDIR, removed with its contents at the end.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base != nullptr ? base : "/tmp") + "/store_test.XXXXXX";
    KJ_REQUIRE(mkdtemp(pattern.data()) != nullptr, strerror(errno));
    path_ = pattern;
  }
  ~TempDir() {
    nftw(
        path_.c_str(), [](const char* p, const struct stat*, int, FTW*) { return ::remove(p); }, 16,
        FTW_DEPTH | FTW_PHYS);
  }
  const std::string& path() const { return path_; }
  std::string sub(const char* name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

mode_t modeOf(const std::string& path) {
  struct stat st;
  KJ_REQUIRE(stat(path.c_str(), &st) == 0, path, strerror(errno));
  return st.st_mode & 07777;
}

void fillRecord(state::SandboxRecord::Builder record, kj::StringPtr id, size_t padding = 0) {
  record.setId(id);
  auto spec = record.initSpec();
  spec.setTenant("tenant-a");
  spec.setTemplate("python");
  spec.setMemoryBytes(512 << 20);
  auto meta = spec.initMetadata(1);
  meta[0].setKey("pad");
  meta[0].setValue(std::string(padding, 'x'));
  record.setState(api::SandboxState::RUNNING);
  record.setCreatedAtNs(1000);
  record.setExpiresAtNs(2000);
  record.setInitPid(4242);
  record.setUidBase(200065536);
  record.setCgroupPath(kj::str("sandboxes/tenant-a/", id));
}

void putRecord(Store& store, kj::StringPtr id, size_t padding = 0) {
  capnp::MallocMessageBuilder message;
  fillRecord(message.initRoot<state::SandboxRecord>(), id, padding);
  store.putSandbox(message.getRoot<state::SandboxRecord>());
}

uint64_t appendEntry(Store::WriteTxn& txn, kj::StringPtr action, kj::StringPtr id) {
  capnp::MallocMessageBuilder message;
  auto entry = message.initRoot<state::AuditEntry>();
  entry.setActor("agent");
  entry.setAction(action);
  entry.setSandboxId(id);
  return txn.appendAudit(entry);
}

uint64_t appendEntry(Store& store, kj::StringPtr action, kj::StringPtr id) {
  uint64_t seq = 0;
  store.update([&](Store::WriteTxn& txn) { seq = appendEntry(txn, action, id); });
  return seq;
}

std::vector<std::string> listIds(Store& store) {
  std::vector<std::string> ids;
  for (auto& record : store.listSandboxes()) ids.push_back(record->get().getId().cStr());
  return ids;
}

TEST(StoreTest, SandboxRoundTrip) {
  TempDir dir;
  auto store = Store::open(dir.path());
  capnp::MallocMessageBuilder message;
  fillRecord(message.initRoot<state::SandboxRecord>(), "sbx-1", 100);
  auto written = message.getRoot<state::SandboxRecord>().asReader();
  store->putSandbox(written);

  KJ_IF_MAYBE (read, store->getSandbox("sbx-1")) {
    EXPECT_EQ(kj::str((*read)->get()), kj::str(written));
    EXPECT_EQ((*read)->get().getSpec().getMetadata()[0].getValue().size(), 100u);
  } else {
    FAIL() << "sbx-1 missing";
  }
  EXPECT_TRUE(store->getSandbox("sbx-2") == nullptr);
}

TEST(StoreTest, PutReplacesListIsOrderedDeleteReports) {
  TempDir dir;
  auto store = Store::open(dir.path());
  putRecord(*store, "sbx-c");
  putRecord(*store, "sbx-a");
  putRecord(*store, "sbx-b");
  putRecord(*store, "sbx-a", 10);  // replaces
  EXPECT_EQ(listIds(*store), (std::vector<std::string>{"sbx-a", "sbx-b", "sbx-c"}));
  KJ_IF_MAYBE (a, store->getSandbox("sbx-a")) {
    EXPECT_EQ((*a)->get().getSpec().getMetadata()[0].getValue().size(), 10u);
  } else {
    FAIL();
  }

  EXPECT_TRUE(store->deleteSandbox("sbx-b"));
  EXPECT_FALSE(store->deleteSandbox("sbx-b"));
  EXPECT_EQ(listIds(*store), (std::vector<std::string>{"sbx-a", "sbx-c"}));
  EXPECT_TRUE(store->getSandbox("sbx-b") == nullptr);
}

TEST(StoreTest, RejectsEmptyAndOverlongIds) {
  TempDir dir;
  auto store = Store::open(dir.path());
  EXPECT_ANY_THROW(putRecord(*store, ""));
  EXPECT_ANY_THROW(putRecord(*store, kj::str(std::string(600, 'x'))));
  EXPECT_ANY_THROW(store->getSandbox(""));
  EXPECT_EQ(store->listSandboxes().size(), 0u);
}

TEST(StoreTest, AuditSeqIsAssignedContiguousAndSurvivesReopen) {
  TempDir dir;
  {
    auto store = Store::open(dir.path());
    EXPECT_EQ(store->lastAuditSeq(), 0u);
    EXPECT_EQ(appendEntry(*store, "create", "sbx-1"), 1u);
    EXPECT_EQ(appendEntry(*store, "kill", "sbx-1"), 2u);
    // The caller's seq is ignored; the store assigns it.
    capnp::MallocMessageBuilder message;
    auto entry = message.initRoot<state::AuditEntry>();
    entry.setSeq(77);
    entry.setTimeNs(5);
    entry.setAction("config");
    EXPECT_EQ(store->appendAudit(entry), 3u);
  }
  auto store = Store::open(dir.path());
  EXPECT_EQ(store->lastAuditSeq(), 3u);
  EXPECT_EQ(appendEntry(*store, "create", "sbx-2"), 4u);

  auto all = store->readAudit(0, 100);
  ASSERT_EQ(all.size(), 4u);
  const char* actions[] = {"create", "kill", "config", "create"};
  for (size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(all[i]->get().getSeq(), i + 1);
    EXPECT_EQ(all[i]->get().getAction(), actions[i]);
  }
  EXPECT_EQ(all[2]->get().getTimeNs(), 5);  // kept when given
  EXPECT_GT(all[0]->get().getTimeNs(), 0);  // filled in when 0

  auto page = store->readAudit(1, 2);
  ASSERT_EQ(page.size(), 2u);
  EXPECT_EQ(page[0]->get().getSeq(), 2u);
  EXPECT_EQ(page[1]->get().getSeq(), 3u);
  EXPECT_EQ(store->readAudit(4, 10).size(), 0u);
  EXPECT_EQ(store->readAudit(0, 0).size(), 0u);
  EXPECT_EQ(store->readAudit(UINT64_MAX, 10).size(), 0u);
}

TEST(StoreTest, UpdateCommitsEverythingOrNothing) {
  TempDir dir;
  auto store = Store::open(dir.path());

  EXPECT_ANY_THROW(store->update([&](Store::WriteTxn& txn) {
    capnp::MallocMessageBuilder message;
    fillRecord(message.initRoot<state::SandboxRecord>(), "sbx-1");
    txn.putSandbox(message.getRoot<state::SandboxRecord>());
    appendEntry(txn, "create", "sbx-1");
    txn.putMeta("k", kj::StringPtr("v").asBytes());
    // The transaction sees its own writes...
    EXPECT_TRUE(txn.getSandbox("sbx-1") != nullptr);
    KJ_FAIL_REQUIRE("crash before commit");
  }));
  // ...and nobody else ever does.
  EXPECT_TRUE(store->getSandbox("sbx-1") == nullptr);
  EXPECT_EQ(store->lastAuditSeq(), 0u);
  EXPECT_TRUE(store->getMeta("k") == nullptr);

  store->update([&](Store::WriteTxn& txn) {
    capnp::MallocMessageBuilder message;
    fillRecord(message.initRoot<state::SandboxRecord>(), "sbx-1");
    txn.putSandbox(message.getRoot<state::SandboxRecord>());
    EXPECT_EQ(appendEntry(txn, "create", "sbx-1"), 1u);  // the aborted seq is not burnt
    EXPECT_EQ(appendEntry(txn, "start", "sbx-1"), 2u);
  });
  EXPECT_TRUE(store->getSandbox("sbx-1") != nullptr);
  EXPECT_EQ(store->lastAuditSeq(), 2u);
}

TEST(StoreTest, NestedUpdateIsRefused) {
  TempDir dir;
  auto store = Store::open(dir.path());
  EXPECT_ANY_THROW(store->update([&](Store::WriteTxn&) { appendEntry(*store, "x", "y"); }));
  EXPECT_EQ(store->lastAuditSeq(), 0u);
  EXPECT_EQ(appendEntry(*store, "x", "y"), 1u);  // and the store is fine afterwards
}

TEST(StoreTest, MetaAndNodeIdPersist) {
  TempDir dir;
  kj::String nodeId;
  {
    auto store = Store::open(dir.path());
    nodeId = kj::str(store->nodeId());
    EXPECT_EQ(nodeId.size(), 32u);
    store->putMeta("greeting", kj::StringPtr("hello").asBytes());
  }
  auto store = Store::open(dir.path());
  EXPECT_EQ(store->nodeId(), nodeId);
  KJ_IF_MAYBE (value, store->getMeta("greeting")) {
    EXPECT_EQ(kj::heapString(value->asChars()), "hello");
  } else {
    FAIL();
  }
}

TEST(StoreTest, RefusesStoreFromNewerSchema) {
  TempDir dir;
  {
    auto store = Store::open(dir.path());
    kj::byte version[8] = {0, 0, 0, 0, 0, 0, 0, 99};
    store->putMeta(Store::kSchemaVersionKey, version);
  }
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] { Store::open(dir.path()); })) {
    EXPECT_NE(e->getDescription().findFirst('9'), nullptr) << e->getDescription().cStr();
  } else {
    FAIL() << "opened a store of schema version 99";
  }
}

TEST(StoreTest, MapFullIsTypedAndTheStoreRecovers) {
  TempDir dir;
  const uint64_t mapSize = 1 << 20;
  auto store = Store::open(dir.path(), {.mapSizeBytes = mapSize});
  int written = 0;
  kj::Maybe<kj::Exception> full;
  for (; written < 10000; ++written) {
    full = kj::runCatchingExceptions(
        [&] { putRecord(*store, kj::str("sbx-", 10000 + written), 3000); });
    if (full != nullptr) break;
  }
  KJ_IF_MAYBE (e, full) {
    EXPECT_TRUE(isStoreFull(*e));
    EXPECT_EQ(e->getType(), kj::Exception::Type::OVERLOADED);
    kj::StringPtr text = e->getDescription();
    EXPECT_TRUE(strstr(text.cStr(), "MDB_MAP_FULL") != nullptr) << text.cStr();
    EXPECT_TRUE(strstr(text.cStr(), "1048576") != nullptr) << text.cStr();
    EXPECT_TRUE(strstr(text.cStr(), kj::str("sbx-", 10000 + written).cStr()) != nullptr)
        << text.cStr();
  } else {
    FAIL() << "1 MiB map never filled";
  }
  ASSERT_GT(written, 10);

  // Reads still work and see exactly the committed records.
  EXPECT_EQ(store->listSandboxes().size(), size_t(written));
  EXPECT_TRUE(store->getSandbox("sbx-10000") != nullptr);
  // A multi-change update that runs out of room leaves nothing behind.
  EXPECT_ANY_THROW(store->update([&](Store::WriteTxn& txn) {
    appendEntry(txn, "create", "sbx-big");
    capnp::MallocMessageBuilder message;
    fillRecord(message.initRoot<state::SandboxRecord>(), "sbx-big", 200000);
    txn.putSandbox(message.getRoot<state::SandboxRecord>());
  }));
  EXPECT_EQ(store->lastAuditSeq(), 0u);
  EXPECT_TRUE(store->getSandbox("sbx-big") == nullptr);

  // Deleting makes room for new writes.
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(store->deleteSandbox(kj::str("sbx-", 10000 + i)));
  putRecord(*store, "sbx-again", 3000);
  EXPECT_TRUE(store->getSandbox("sbx-again") != nullptr);
  EXPECT_EQ(store->listSandboxes().size(), size_t(written - 3));
}

TEST(StoreTest, ReopenAfterCloseKeepsData) {
  TempDir dir;
  for (int round = 0; round < 5; ++round) {
    auto store = Store::open(
        dir.path(), {.durability = round % 2 == 0 ? Durability::kFull : Durability::kNoMetaSync});
    EXPECT_EQ(store->listSandboxes().size(), size_t(round));
    putRecord(*store, kj::str("sbx-", round));
  }
}

TEST(StoreTest, FilesAreOwnerOnlyWhateverTheUmask) {
  TempDir dir;
  std::string stateDir = dir.sub("a/b/state");
  mode_t old = umask(0);
  KJ_DEFER(umask(old));
  {
    auto store = Store::open(stateDir);
    putRecord(*store, "sbx-1");
  }
  EXPECT_EQ(modeOf(stateDir), 0700u);
  EXPECT_EQ(modeOf(stateDir + "/data.mdb") & 077, 0u);
  EXPECT_EQ(modeOf(stateDir + "/lock.mdb") & 077, 0u);

  // A data file someone loosened is tightened on open.
  ASSERT_EQ(chmod((stateDir + "/data.mdb").c_str(), 0644), 0);
  Store::open(stateDir);
  EXPECT_EQ(modeOf(stateDir + "/data.mdb"), 0600u);
}

TEST(StoreTest, OpenFailsClearlyOnAFile) {
  TempDir dir;
  std::string file = dir.sub("file");
  FILE* f = fopen(file.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fclose(f);
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] { Store::open(file); })) {
    EXPECT_TRUE(strstr(e->getDescription().cStr(), "not a directory") != nullptr)
        << e->getDescription().cStr();
  } else {
    FAIL();
  }
}

TEST(StoreTest, ReadersRunOnOtherThreadsDuringWrites) {
  TempDir dir;
  auto store = Store::open(dir.path(), {.maxReaders = 8});
  putRecord(*store, "sbx-0");
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t) {
    readers.emplace_back([&] {
      while (!stop.load()) {
        KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] {
                       if (store->getSandbox("sbx-0") == nullptr) failures++;
                       store->listSandboxes();
                       store->readAudit(0, 10);
                     })) {
          ADD_FAILURE() << e->getDescription().cStr();
          failures++;
        }
      }
    });
  }
  for (int i = 1; i < 200; ++i) {
    store->update([&](Store::WriteTxn& txn) {
      capnp::MallocMessageBuilder message;
      fillRecord(message.initRoot<state::SandboxRecord>(), kj::str("sbx-", i));
      txn.putSandbox(message.getRoot<state::SandboxRecord>());
      appendEntry(txn, "create", kj::str("sbx-", i));
    });
  }
  stop = true;
  for (auto& thread : readers) thread.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(store->lastAuditSeq(), 199u);
}

// ---------------------------------------------------------------------------
// Crash consistency: a child writes as fast as it can and is SIGKILLed at a
// random moment; the parent reopens and checks that the store holds exactly a
// prefix of the child's transactions.
//
// Every transaction k appends audit entries and changes sandboxes to match, and
// sets meta "test.lastSeq" to the last seq it appended:
//   create: new sandbox, state CREATING          (1 entry)
//   start:  existing sandbox -> RUNNING          (1 entry)
//   delete: removes the oldest sandbox and creates a replacement (2 entries)
// Each sandbox record carries metadata "auditSeq" = the seq of the entry that
// last wrote it. Replaying the audit log from seq 1 must reproduce the
// sandboxes table exactly, and the seqs must be 1..lastSeq.

constexpr kj::StringPtr kLastSeqKey = "test.lastSeq"_kj;

kj::Array<kj::byte> encodeU64(uint64_t value) {
  auto bytes = kj::heapArray<kj::byte>(8);
  for (int i = 7; i >= 0; --i, value >>= 8) bytes[i] = static_cast<kj::byte>(value);
  return bytes;
}

uint64_t decodeU64(kj::ArrayPtr<const kj::byte> bytes) {
  KJ_REQUIRE(bytes.size() == 8);
  uint64_t value = 0;
  for (auto b : bytes) value = (value << 8) | b;
  return value;
}

kj::String crashId(uint64_t seq) {
  return kj::str("sbx-", kj::hex(seq + 0x100000000ull));
}

void writeSandbox(Store::WriteTxn& txn, kj::StringPtr id, api::SandboxState state, uint64_t seq) {
  capnp::MallocMessageBuilder message;
  auto record = message.initRoot<state::SandboxRecord>();
  fillRecord(record, id, seq % 7 * 150);  // varied sizes: splits, merges, overflow-free
  record.setState(state);
  auto meta = record.getSpec().getMetadata();
  meta[0].setKey("auditSeq");
  meta[0].setValue(kj::str(seq, ":", std::string(seq % 7 * 150, 'x')));
  txn.putSandbox(record);
}

// In the child; never returns.
[[noreturn]] void runWorkload(const std::string& dir, Durability durability) {
  auto error = kj::runCatchingExceptions([&] {
    auto store = Store::open(dir, {.durability = durability});
    std::vector<std::string> live;  // ids, oldest first (ids sort by creation)
    for (auto& record : store->listSandboxes()) live.push_back(record->get().getId().cStr());
    for (;;) {
      std::vector<std::string> next = live;
      store->update([&](Store::WriteTxn& txn) {
        uint64_t last = 0;
        KJ_IF_MAYBE (bytes, txn.getMeta(kLastSeqKey)) {
          last = decodeU64(*bytes);
        }
        uint64_t k = last + 1;
        auto expectSeq = [&](uint64_t seq, uint64_t want) {
          KJ_REQUIRE(seq == want, "seq not contiguous", seq, want);
        };
        if (!next.empty() && k % 5 == 0) {
          kj::StringPtr victim = next.front().c_str();
          expectSeq(appendEntry(txn, "delete", victim), k);
          KJ_REQUIRE(txn.deleteSandbox(victim));
          next.erase(next.begin());
          auto id = crashId(k + 1);
          expectSeq(appendEntry(txn, "create", id), k + 1);
          writeSandbox(txn, id, api::SandboxState::CREATING, k + 1);
          next.push_back(id.cStr());
          last = k + 1;
        } else if (!next.empty() && k % 5 == 2) {
          kj::StringPtr id = next.back().c_str();
          expectSeq(appendEntry(txn, "start", id), k);
          writeSandbox(txn, id, api::SandboxState::RUNNING, k);
          last = k;
        } else {
          auto id = crashId(k);
          expectSeq(appendEntry(txn, "create", id), k);
          writeSandbox(txn, id, api::SandboxState::CREATING, k);
          next.push_back(id.cStr());
          last = k;
        }
        txn.putMeta(kLastSeqKey, encodeU64(last));
      });
      live = kj::mv(next);
    }
  });
  KJ_IF_MAYBE (e, error) {
    fprintf(stderr, "workload failed: %s\n", kj::str(*e).cStr());
  }
  _exit(3);
}

struct Expected {
  api::SandboxState state;
  uint64_t seq;
};

// Checks the invariants; returns the number of audit entries.
uint64_t verifyStore(const std::string& dir) {
  auto store = Store::open(dir);
  std::map<std::string, Expected> model;
  uint64_t count = 0;
  for (;;) {
    auto page = store->readAudit(count, 1000);
    if (page.size() == 0) break;
    for (auto& stored : page) {
      auto entry = stored->get();
      KJ_REQUIRE(entry.getSeq() == count + 1, "audit seqs not contiguous", entry.getSeq(), count);
      count = entry.getSeq();
      std::string id = entry.getSandboxId().cStr();
      kj::StringPtr action = entry.getAction();
      if (action == "create") {
        KJ_REQUIRE(model.count(id) == 0, "created twice", id);
        model[id] = {api::SandboxState::CREATING, count};
      } else if (action == "start") {
        KJ_REQUIRE(model.count(id) == 1, "started a missing sandbox", id);
        model[id] = {api::SandboxState::RUNNING, count};
      } else if (action == "delete") {
        KJ_REQUIRE(model.erase(id) == 1, "deleted a missing sandbox", id);
      } else {
        KJ_FAIL_REQUIRE("unknown action", action);
      }
    }
  }
  KJ_REQUIRE(count == store->lastAuditSeq());

  uint64_t lastSeq = 0;
  KJ_IF_MAYBE (bytes, store->getMeta(kLastSeqKey)) {
    lastSeq = decodeU64(*bytes);
  }
  KJ_REQUIRE(lastSeq == count, "meta counter disagrees with the audit log", lastSeq, count);

  auto records = store->listSandboxes();
  KJ_REQUIRE(records.size() == model.size(), "sandboxes table disagrees with the audit log",
             records.size(), model.size());
  for (auto& stored : records) {
    auto record = stored->get();
    std::string id = record.getId().cStr();
    auto it = model.find(id);
    KJ_REQUIRE(it != model.end(), "sandbox without a create entry", id);
    KJ_REQUIRE(record.getState() == it->second.state, "wrong state", id);
    kj::StringPtr auditSeq = record.getSpec().getMetadata()[0].getValue();
    KJ_REQUIRE(auditSeq.startsWith(kj::str(it->second.seq, ":")),
               "record does not reference its last audit entry", id, auditSeq, it->second.seq);
  }
  return count;
}

TEST(StoreCrashTest, SigkillAtRandomMomentsLeavesAConsistentStore) {
  TempDir dir;
  std::string stateDir = dir.sub("state");
  unsigned seed = 20261122;
  if (const char* s = std::getenv("NODEAGENT_CRASH_SEED")) seed = unsigned(std::atol(s));
  std::mt19937 random(seed);
  std::uniform_int_distribution<int> delayUs(0, 40000);
  SCOPED_TRACE(::testing::Message() << "NODEAGENT_CRASH_SEED=" << seed);

  uint64_t previous = 0;
  int rounds = 30;
  for (int round = 0; round < rounds; ++round) {
    SCOPED_TRACE(::testing::Message() << "round " << round);
    // No Store may be open across fork(); verifyStore closes its own.
    pid_t child = fork();
    ASSERT_GE(child, 0) << strerror(errno);
    if (child == 0) {
      runWorkload(stateDir, round % 3 == 2 ? Durability::kNoMetaSync : Durability::kFull);
    }
    int delay = round < 3 ? round * 300 : delayUs(random);  // early rounds hit open()
    usleep(delay);
    ASSERT_EQ(kill(child, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "child ended by itself, status " << status;

    uint64_t count = 0;
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] { count = verifyStore(stateDir); })) {
      FAIL() << "after a kill at " << delay << " us: " << kj::str(*e).cStr();
    }
    // Committed transactions are never lost on a process crash.
    EXPECT_GE(count, previous);
    previous = count;
  }
  EXPECT_GT(previous, uint64_t(rounds)) << "the workload barely ran; the test proves little";
  RecordProperty("transactions", std::to_string(previous));
}

}  // namespace
}  // namespace nodeagent
