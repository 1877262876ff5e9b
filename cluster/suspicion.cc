#include "cluster/suspicion.h"

#include <algorithm>
#include <cmath>

namespace nodeagent::cluster {

Suspicion::Suspicion(NodeId from, uint32_t k, int64_t minNs, int64_t maxNs, int64_t startNs)
    : k_(k), minNs_(minNs), maxNs_(std::max(minNs, maxNs)), startNs_(startNs) {
  seen_.add(from);
}

bool Suspicion::confirm(NodeId from) {
  if (confirmations_ >= k_) return false;  // already at the floor
  for (auto id : seen_)
    if (id == from) return false;
  seen_.add(from);
  ++confirmations_;
  return true;
}

int64_t Suspicion::deadlineNs() const {
  if (k_ == 0) return startNs_ + minNs_;
  double frac = std::log(confirmations_ + 1.0) / std::log(k_ + 1.0);
  double timeout = double(maxNs_) - double(maxNs_ - minNs_) * frac;
  return startNs_ + std::max(minNs_, int64_t(timeout));
}

}  // namespace nodeagent::cluster
