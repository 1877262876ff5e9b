// A sandbox's CPU above its sustained share runs on saved-up credit, as a
// burstable cloud instance does: while it has credit its quota is the burst
// (spec.cpuMillis); once the credit is spent, the sustained share
// (spec.cpuSustainedMillis); once it has saved some again, the burst again.
// Credit accrues at the sustained rate less what the sandbox uses, up to
// what lasts cpuBurstSeconds at the full burst. The kernel's own CFS burst
// cannot express this: it banks at most one period's quota.
//
// Pure bookkeeping: the caller reads the sandbox's CPU time, feeds it in and
// sets the quota this returns.
#pragma once

#include <cstdint>

namespace nodeagent {

class CpuCredit {
 public:
  // How the bucket starts: full (a new or claimed sandbox), or holding just
  // enough to burst again (an adopted one: its balance went with the agent
  // that kept it).
  enum class Start { kFull, kRestoreLevel };

  CpuCredit(uint32_t burstMillis, uint32_t sustainedMillis, uint32_t burstSeconds, Start start);

  // False when the sustained share is the burst (or either is unlimited):
  // nothing to do.
  bool applies() const { return sustainedMillis_ != 0 && sustainedMillis_ < burstMillis_; }

  // Accounts `usedNs` of CPU time over `elapsedNs` of wall time.
  void account(uint64_t usedNs, uint64_t elapsedNs);

  // The quota the sandbox should have now, in thousandths of a CPU.
  uint32_t quotaMillis() const { return atSustained_ ? sustainedMillis_ : burstMillis_; }
  bool atSustained() const { return atSustained_; }
  int64_t creditNs() const { return creditNs_; }
  int64_t capacityNs() const { return capacityNs_; }

  // False without a bucket (cpuBurstSeconds 0): the quota is the sustained
  // share for good, and nothing is worth checking.
  bool changes() const { return applies() && capacityNs_ > 0; }

  // When the next account() can change the quota at the soonest: at the burst
  // rate the credit runs out no sooner, idle it refills no sooner. Clamped to
  // [kMinCheckNs, kMaxCheckNs].
  int64_t nextCheckNs() const;

  static constexpr int64_t kMinCheckNs = 50'000'000;
  static constexpr int64_t kMaxCheckNs = 60'000'000'000;

 private:
  uint32_t burstMillis_, sustainedMillis_;
  int64_t capacityNs_;
  // Back to the burst once this much is saved: a tenth of the bucket, so the
  // quota does not flap at every check. With no bucket (cpuBurstSeconds 0)
  // the quota stays at the sustained share.
  int64_t restoreNs_;
  int64_t creditNs_;  // negative: what a burst overshot between two checks
  bool atSustained_ = false;
};

}  // namespace nodeagent
