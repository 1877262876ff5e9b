// The agent's own cgroup: "<root>/agent", beside "<root>/sandboxes", so no
// sandbox's limits or pressure ever apply to the agent, and with a CPU weight
// far above all sandboxes together so it keeps answering when they saturate
// the host. On pure v2 it also gets memory.min (protection from reclaim).
#pragma once

#include <cstdint>

#include "isolator/cgroup.h"

namespace nodeagent {

struct AgentReservation {
  uint32_t cpuWeight = 1000;            // v2 units; sandboxes' parent keeps 100
  uint64_t memoryMinBytes = 256 << 20;  // pure v2 only
};

// Moves this process (all its threads) into "<root>/agent" in every hierarchy
// of `tree` that has the cpu or memory controller, and the v2 tree.
void enterAgentCgroup(isolator::CgroupTree& tree, const AgentReservation& reservation);

// Makes moves between cgroups cheap (isolator/cgroup_dynmods.h) and logs what
// it found and did; a kernel that does not take the option costs a warning only.
void favorCgroupMigrations(const isolator::CgroupTree& tree);

}  // namespace nodeagent
