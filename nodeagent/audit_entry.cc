#include "nodeagent/audit_entry.h"

#include "schema/state.capnp.h"

namespace nodeagent {

kj::Own<capnp::MallocMessageBuilder> auditEntry(int64_t timeNs, kj::StringPtr actor,
                                                kj::StringPtr action, kj::StringPtr sandboxId,
                                                kj::StringPtr tenant, kj::StringPtr detail) {
  auto message = kj::heap<capnp::MallocMessageBuilder>();
  auto entry = message->initRoot<state::AuditEntry>();
  entry.setTimeNs(timeNs);
  entry.setActor(actor);
  entry.setAction(action);
  entry.setSandboxId(sandboxId);
  entry.setTenant(tenant);
  entry.setDetail(detail);
  return message;
}

}  // namespace nodeagent
