// A sandbox's usage since it began (or was claimed from a warm pool), as the
// usage ledger bills it: cumulative figures that never go down.
#pragma once

#include <cstdint>

namespace nodeagent {

struct UsageCounters {
  uint64_t cpuNs = 0;  // the eBPF meter's, or cgroup user+system without it
  uint64_t wallRunningNs = 0;
  uint64_t wallPausedNs = 0;
  uint64_t memoryByteSeconds = 0;  // integral of sampled memory.current
  uint64_t egressBytes = 0;
  uint64_t rpcRequests = 0;
  uint64_t memoryBytes = 0;  // the memory sample taken with them
};

}  // namespace nodeagent
