// The usage ledger as the agent runs it: reads each sandbox's counters on the
// event loop and queues one signed record per sandbox and period on the
// StoreWriter (see ledger_entry.h for what a record holds), so the loop never
// waits for disk or signing.
//
// Records are written every `interval` for each live sandbox, at pause and
// resume, when a sandbox ends (final) and when the agent stops. Memory is
// sampled for its integral every 5 s, or more often where the interval is
// shorter (the interval divided evenly).
//
// What survives a crash (kill -9, power loss): every committed record, and
// with it the billed totals, so the next record starts where the last
// committed one ended. CPU (pinned eBPF counters or the cgroup's), wall time
// (from the stored record's clocks) and egress (a counter outside the agent)
// carry on exactly. Requests counted and memory sampled since the last
// committed record lived only in the dead agent's memory: those requests are
// not billed, and the memory integral over the gap is one trapezoid between
// the last billed sample and the next one.
#pragma once

#include <kj/async.h>
#include <kj/function.h>
#include <kj/time.h>
#include <kj/vector.h>

#include "loop/uring_event_port.h"
#include "nodeagent/ledger_entry.h"
#include "nodeagent/node_key.h"
#include "nodeagent/sandbox_runtime.h"
#include "nodeagent/store.h"
#include "nodeagent/store_writer.h"

namespace nodeagent {

class UsageLedger {
 public:
  static constexpr kj::Duration kMaxSampleInterval = 5 * kj::SECONDS;

  // `key` and `store` must outlive `writer`'s last commit.
  UsageLedger(loop::UringEventPort& port, Store& store, StoreWriter& writer, const NodeKey& key,
              kj::Duration interval);
  KJ_DISALLOW_COPY(UsageLedger);

  // Queues a record of what `sandbox` used since its last one.
  void record(SandboxRuntime& sandbox, kj::StringPtr cause);
  // Its final record, once it has ended.
  void recordEnd(SandboxRuntime& sandbox);
  // The final record of a sandbox that ended while no agent ran (found so on
  // start): it bills nothing more, as nothing more is known.
  void recordUnseenEnd(state::SandboxRecord::Reader record);

  // Samples and records, forever, the sandboxes `live()` returns each time.
  using LiveSandboxes = kj::Function<kj::Vector<kj::Own<SandboxRuntime>>()>;
  kj::Promise<void> run(LiveSandboxes live);

  kj::Vector<kj::Own<StoredUsageRecord>> read(uint64_t afterSeq, size_t limit) {
    return store_.readLedger(afterSeq, limit);
  }
  kj::ArrayPtr<const kj::byte> publicKey() const { return key_.publicKey(); }

 private:
  kj::Promise<void> tick(uint64_t n);
  void submit(UsageSnapshot snapshot);

  loop::UringEventPort& port_;
  Store& store_;
  StoreWriter& writer_;
  const NodeKey& key_;
  kj::Duration interval_;
  uint64_t samplesPerRecord_;
  kj::Duration samplePeriod_;
  LiveSandboxes live_;
};

}  // namespace nodeagent
