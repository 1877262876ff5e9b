// A sandbox's way out: a veth pair whose host end joins the bridge of
// HostNetwork and whose other end is "eth0" in the sandbox's network
// namespace, with the sandbox's addresses, default routes via the gateways,
// and a token bucket capping what it sends.
//
// The namespace belongs to the sandbox's user namespace, but the sandbox has
// no CAP_NET_ADMIN (init drops it): it can use eth0, not reconfigure it or
// lift the cap. The agent configures it from a thread that joins the
// namespace (runInNetns).
#pragma once

#include <sys/types.h>

#include <cstdint>

#include "isolator/host_network.h"

namespace nodeagent::isolator {

// Creates and configures the veth of the sandbox whose init is `initPid`.
// A leftover host end of the same name (a previous sandbox's) is replaced.
void attachSandboxLink(pid_t initPid, const SandboxAddressing& where, uint64_t egressBitsPerSecond);

// Deletes the pair (no-op if gone: it also goes when the namespace does).
void detachSandboxLink(const SandboxAddressing& where);

// Changes the egress cap of an attached sandbox; 0 = none.
void setSandboxEgressRate(pid_t initPid, uint64_t egressBitsPerSecond);

}  // namespace nodeagent::isolator
