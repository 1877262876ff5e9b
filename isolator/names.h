// Tenant and sandbox names become path components (cgroups, work dirs), so only a
// small charset is accepted: [A-Za-z0-9_-], 1..64 characters. No dots at all, which
// rules out ".", ".." and collisions with cgroup interface files ("memory.max").
#pragma once

#include <kj/string.h>

namespace nodeagent::isolator {

constexpr size_t kMaxNameLength = 64;

bool isValidName(kj::StringPtr name);

// Throws kj::Exception (FAILED) "invalid <kind> name ..." when the name is not valid.
void requireValidName(kj::StringPtr kind, kj::StringPtr name);

}  // namespace nodeagent::isolator
