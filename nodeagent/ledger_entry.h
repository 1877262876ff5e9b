// One usage ledger record: billing a sandbox's usage counters against what
// the ledger already billed it, and checking a signed record.
//
//   UsageSnapshot s = ...;  // cumulative counters, read on the event loop
//   writer.submit([s = kj::mv(s), &key, nodeId](Store::WriteTxn& txn) {
//     appendUsageRecord(txn, key, nodeId, s);
//   });
//
// The record holds the deltas between the snapshot and the sandbox's billed
// totals (state::BilledTotals), and the totals move to the snapshot in the
// same transaction. So records add up to the counters exactly, whatever is
// lost in a crash: a snapshot that never committed is covered by the next.
#pragma once

#include <kj/memory.h>
#include <kj/string.h>

#include "nodeagent/node_key.h"
#include "nodeagent/store.h"
#include "nodeagent/usage_counters.h"
#include "schema/gateway.capnp.h"

namespace nodeagent {

struct UsageSnapshot {
  kj::String sandboxId;
  kj::String tenant;
  int64_t startedAtNs = 0;  // unix: where the sandbox's first period begins
  int64_t atNs = 0;         // unix: when the counters were read
  UsageCounters counters;
  kj::String cause;  // "interval", "pause", "resume", "end", ...
  bool final = false;
  kj::String endReason;
  // The sandbox ended while no agent watched it: its counters are unknown,
  // so the final record bills nothing more (all deltas 0).
  bool countersUnknown = false;
};

// Appends the signed record of `snapshot`'s deltas and updates the billed
// totals, in `txn`. Returns the record's seq, or 0 when nothing was written:
// the sandbox's final record is in already. A counter below its billed total
// (a meter that restarted) bills 0 and the total stays.
uint64_t appendUsageRecord(Store::WriteTxn& txn, const NodeKey& key, kj::StringPtr nodeId,
                           const UsageSnapshot& snapshot);

// The record inside, unverified (the agent reading its own store). Throws if
// it does not parse.
kj::Own<StoredMessage<api::UsageRecord>> parseUsageRecord(
    api::SignedUsageRecord::Reader signedRecord);

// The record inside `signedRecord` if its signature is `publicKey`'s over its
// bytes and they parse; null otherwise.
kj::Maybe<kj::Own<StoredMessage<api::UsageRecord>>> verifyUsageRecord(
    kj::ArrayPtr<const kj::byte> publicKey, api::SignedUsageRecord::Reader signedRecord);

}  // namespace nodeagent
