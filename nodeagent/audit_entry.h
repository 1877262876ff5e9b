// Builds one audit log entry (state::AuditEntry) for the store; seq is set on append.
#pragma once

#include <capnp/message.h>
#include <kj/memory.h>
#include <kj/string.h>

namespace nodeagent {

kj::Own<capnp::MallocMessageBuilder> auditEntry(int64_t timeNs, kj::StringPtr actor,
                                                kj::StringPtr action, kj::StringPtr sandboxId,
                                                kj::StringPtr tenant, kj::StringPtr detail);

}  // namespace nodeagent
