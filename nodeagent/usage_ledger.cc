#include "nodeagent/usage_ledger.h"

#include <kj/debug.h>

#include "util/clock.h"
#include "util/log.h"

namespace nodeagent {

UsageLedger::UsageLedger(loop::UringEventPort& port, Store& store, StoreWriter& writer,
                         const NodeKey& key, kj::Duration interval)
    : port_(port), store_(store), writer_(writer), key_(key), interval_(interval) {
  KJ_REQUIRE(interval > 0 * kj::SECONDS, "ledger interval must be positive");
  int64_t intervalNs = interval_ / kj::NANOSECONDS;
  int64_t maxSampleNs = kMaxSampleInterval / kj::NANOSECONDS;
  samplesPerRecord_ = uint64_t((intervalNs + maxSampleNs - 1) / maxSampleNs);
  samplePeriod_ = (intervalNs / int64_t(samplesPerRecord_)) * kj::NANOSECONDS;
}

void UsageLedger::record(SandboxRuntime& sandbox, kj::StringPtr cause) {
  auto rec = sandbox.record();
  UsageSnapshot s;
  s.sandboxId = kj::str(rec.getId());
  s.tenant = kj::str(rec.getSpec().getTenant());
  s.startedAtNs = rec.getCreatedAtNs();
  s.counters = sandbox.usageCounters();
  s.atNs = sandbox.running() ? unixNowNs() : rec.getEndedAtNs();
  s.cause = kj::str(cause);
  submit(kj::mv(s));
}

void UsageLedger::recordEnd(SandboxRuntime& sandbox) {
  auto rec = sandbox.record();
  UsageSnapshot s;
  s.sandboxId = kj::str(rec.getId());
  s.tenant = kj::str(rec.getSpec().getTenant());
  s.startedAtNs = rec.getCreatedAtNs();
  s.counters = sandbox.usageCounters();
  s.atNs = rec.getEndedAtNs();
  s.cause = kj::str("end");
  s.final = true;
  s.endReason = kj::str(rec.getEndReason());
  submit(kj::mv(s));
}

void UsageLedger::recordUnseenEnd(state::SandboxRecord::Reader rec) {
  UsageSnapshot s;
  s.sandboxId = kj::str(rec.getId());
  s.tenant = kj::str(rec.getSpec().getTenant());
  s.startedAtNs = rec.getCreatedAtNs();
  s.atNs = rec.getEndedAtNs();
  s.cause = kj::str("end");
  s.final = true;
  s.endReason = kj::str(rec.getEndReason());
  s.countersUnknown = true;
  submit(kj::mv(s));
}

void UsageLedger::submit(UsageSnapshot snapshot) {
  // Signing and the LMDB write run on the writer thread.
  // Captures what outlives the writer, not this ledger (the Supervisor's).
  writer_.submit([&key = key_, &store = store_, s = kj::mv(snapshot)](Store::WriteTxn& txn) {
    appendUsageRecord(txn, key, store.nodeId(), s);
  });
}

kj::Promise<void> UsageLedger::run(LiveSandboxes live) {
  live_ = kj::mv(live);
  return tick(1);
}

kj::Promise<void> UsageLedger::tick(uint64_t n) {
  return port_.timer().afterDelay(samplePeriod_).then([this, n]() {
    bool recording = n % samplesPerRecord_ == 0;
    for (auto& sandbox : live_()) {
      KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                     if (recording) {
                       record(*sandbox, "interval");
                     } else {
                       sandbox->sampleMemory();
                     }
                   })) {
        log::warn("ledger.read_failed",
                  {{"id", sandbox->id().cStr()}, {"error", e->getDescription().cStr()}});
      }
    }
    return tick(n + 1);
  });
}

}  // namespace nodeagent
