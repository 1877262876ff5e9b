// What a tenant sandbox must get past before it starts on a fleet member:
// the node's capacity ledger, which placement reserves against. Local
// creates pass through it too, so a gateway calling create directly and a
// placement from another node can never together overcommit the node.
#pragma once

#include <stdint.h>

#include "schema/gateway.capnp.h"

namespace nodeagent {

class CapacityGate {
 public:
  virtual ~CapacityGate() noexcept(false) = default;

  // Admits a sandbox of `spec` (template defaults filled in) and returns
  // the ticket that holds its capacity until release(). With a placement's
  // `reservation` (non-zero), commits that instead. Throws an API error
  // (limitExceeded: no room; unavailable: the reservation lapsed).
  virtual uint64_t admit(api::SandboxSpec::Reader spec, uint64_t reservation) = 0;
  // The sandbox ended (or never started): its capacity is free again.
  virtual void release(uint64_t ticket) = 0;
};

}  // namespace nodeagent
