#include "nodeagent/ledger_entry.h"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/debug.h>

#include <cstring>

namespace nodeagent {
namespace {

// Bills what a counter gained since `billed`; a counter that went backwards
// bills nothing until it passes the billed figure again.
uint64_t gained(uint64_t now, uint64_t billed) {
  return now > billed ? now - billed : 0;
}

}  // namespace

uint64_t appendUsageRecord(Store::WriteTxn& txn, const NodeKey& key, kj::StringPtr nodeId,
                           const UsageSnapshot& s) {
  capnp::MallocMessageBuilder totalsMessage;
  KJ_IF_MAYBE (stored, txn.getBilled(s.sandboxId)) {
    if ((*stored)->get().getFinal()) return 0;
    totalsMessage.setRoot((*stored)->get());
  } else {
    auto fresh = totalsMessage.initRoot<state::BilledTotals>();
    fresh.setSandboxId(s.sandboxId);
    fresh.setTenant(s.tenant);
    fresh.setBilledToNs(s.startedAtNs);
  }
  auto totals = totalsMessage.getRoot<state::BilledTotals>();

  UsageCounters now = s.counters;
  if (s.countersUnknown) {
    now.cpuNs = totals.getCpuNs();
    now.wallRunningNs = totals.getWallRunningNs();
    now.wallPausedNs = totals.getWallPausedNs();
    now.memoryByteSeconds = totals.getMemoryByteSeconds();
    now.egressBytes = totals.getEgressBytes();
    now.rpcRequests = totals.getRpcRequests();
    now.memoryBytes = 0;
  }

  capnp::MallocMessageBuilder recordMessage;
  auto record = recordMessage.initRoot<api::UsageRecord>();
  record.setNodeId(nodeId);
  record.setSandboxId(s.sandboxId);
  record.setTenant(s.tenant);
  int64_t start = totals.getBilledToNs();
  record.setPeriodStartNs(start);
  record.setPeriodEndNs(kj::max(s.atNs, start));  // the clock may have stepped back
  record.setCpuNs(gained(now.cpuNs, totals.getCpuNs()));
  record.setWallRunningNs(gained(now.wallRunningNs, totals.getWallRunningNs()));
  record.setWallPausedNs(gained(now.wallPausedNs, totals.getWallPausedNs()));
  record.setMemoryByteSeconds(gained(now.memoryByteSeconds, totals.getMemoryByteSeconds()));
  record.setEgressBytes(gained(now.egressBytes, totals.getEgressBytes()));
  record.setRpcRequests(gained(now.rpcRequests, totals.getRpcRequests()));
  record.setCause(s.cause);
  record.setFinal(s.final);
  if (s.final) record.setEndReason(s.endReason);

  txn.appendLedger([&](uint64_t seq) {
    record.setSeq(seq);
    auto bytes = capnp::messageToFlatArray(recordMessage);
    capnp::MallocMessageBuilder signedMessage;
    auto out = signedMessage.initRoot<api::SignedUsageRecord>();
    out.setRecord(bytes.asBytes());
    out.setSignature(key.sign(bytes.asBytes()));
    return capnp::messageToFlatArray(signedMessage);
  });

  totals.setBilledToNs(record.getPeriodEndNs());
  totals.setCpuNs(totals.getCpuNs() + record.getCpuNs());
  totals.setWallRunningNs(totals.getWallRunningNs() + record.getWallRunningNs());
  totals.setWallPausedNs(totals.getWallPausedNs() + record.getWallPausedNs());
  totals.setMemoryByteSeconds(totals.getMemoryByteSeconds() + record.getMemoryByteSeconds());
  totals.setEgressBytes(totals.getEgressBytes() + record.getEgressBytes());
  totals.setRpcRequests(totals.getRpcRequests() + record.getRpcRequests());
  totals.setLastMemoryBytes(now.memoryBytes);
  totals.setFinal(s.final);
  txn.putBilled(totals.asReader());
  return record.getSeq();
}

kj::Own<StoredMessage<api::UsageRecord>> parseUsageRecord(
    api::SignedUsageRecord::Reader signedRecord) {
  auto bytes = signedRecord.getRecord();
  KJ_REQUIRE(bytes.size() > 0 && bytes.size() % sizeof(capnp::word) == 0,
             "usage record: not a capnp message", bytes.size());
  // Data inside a message need not be word-aligned; the reader needs it to be.
  auto words = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
  memcpy(words.begin(), bytes.begin(), bytes.size());
  auto message = kj::heap<StoredMessage<api::UsageRecord>>(kj::mv(words));
  auto record = message->get();  // checks the root pointer
  record.getNodeId();
  record.getSandboxId();
  record.getTenant();
  record.getCause();
  record.getEndReason();
  return message;
}

kj::Maybe<kj::Own<StoredMessage<api::UsageRecord>>> verifyUsageRecord(
    kj::ArrayPtr<const kj::byte> publicKey, api::SignedUsageRecord::Reader signedRecord) {
  if (!NodeKey::verify(publicKey, signedRecord.getRecord(), signedRecord.getSignature())) {
    return nullptr;
  }
  kj::Maybe<kj::Own<StoredMessage<api::UsageRecord>>> result;
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { result = parseUsageRecord(signedRecord); })) {
    return nullptr;  // signed, yet not a record: not ours to bill
  }
  return result;
}

}  // namespace nodeagent
