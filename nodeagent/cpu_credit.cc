#include "nodeagent/cpu_credit.h"

#include <algorithm>

namespace nodeagent {

CpuCredit::CpuCredit(uint32_t burstMillis, uint32_t sustainedMillis, uint32_t burstSeconds,
                     Start start)
    : burstMillis_(burstMillis), sustainedMillis_(sustainedMillis) {
  uint32_t excessMillis = applies() ? burstMillis_ - sustainedMillis_ : 0;
  // Thousandths of a CPU for a second are a million nanoseconds of CPU time.
  capacityNs_ = int64_t(excessMillis) * int64_t(burstSeconds) * 1'000'000;
  restoreNs_ = std::max<int64_t>(capacityNs_ / 10, 1);
  creditNs_ = start == Start::kFull ? capacityNs_ : std::min(restoreNs_, capacityNs_);
  atSustained_ = applies() && capacityNs_ == 0;  // no burst saved, ever
}

void CpuCredit::account(uint64_t usedNs, uint64_t elapsedNs) {
  if (!applies()) return;
  int64_t earnedNs = int64_t(elapsedNs / 1000 * sustainedMillis_);
  creditNs_ += earnedNs - int64_t(usedNs);
  // An overshoot is repaid, but never more than a bucket of it.
  creditNs_ = std::clamp(creditNs_, -capacityNs_, capacityNs_);
  if (!atSustained_ && creditNs_ <= 0) {
    atSustained_ = true;
  } else if (atSustained_ && capacityNs_ > 0 && creditNs_ >= restoreNs_) {
    atSustained_ = false;
  }
}

int64_t CpuCredit::nextCheckNs() const {
  if (!changes()) return kMaxCheckNs;
  int64_t ns;
  if (!atSustained_) {
    // Spent at (burst - sustained) at most.
    ns = creditNs_ / int64_t(burstMillis_ - sustainedMillis_) * 1000;
  } else {
    // Earned at the sustained rate at most (when idle).
    ns = (restoreNs_ - creditNs_) / int64_t(sustainedMillis_) * 1000;
  }
  return std::clamp(ns, kMinCheckNs, kMaxCheckNs);
}

}  // namespace nodeagent
