// Lifeguard's dynamic suspicion timeout: a suspicion starts at `max` and
// shrinks toward `min` as other members independently confirm it:
//   timeout(c) = max(min, max - (max - min) * log(c + 1) / log(k + 1)).
#pragma once

#include <stdint.h>

#include <kj/vector.h>

#include "cluster/messages.h"

namespace nodeagent::cluster {

class Suspicion {
 public:
  // `from` started the suspicion and does not count as a confirmation.
  Suspicion(NodeId from, uint32_t k, int64_t minNs, int64_t maxNs, int64_t startNs);

  // True when `from` is a new, independent confirmation (the deadline moved).
  bool confirm(NodeId from);
  int64_t deadlineNs() const;
  uint32_t confirmations() const { return confirmations_; }

 private:
  uint32_t k_;
  uint32_t confirmations_ = 0;
  int64_t minNs_, maxNs_, startNs_;
  kj::Vector<NodeId> seen_;
};

}  // namespace nodeagent::cluster
