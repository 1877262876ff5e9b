// Installs the seccomp filter the agent compiled (Setup.seccompFilter, see
// isolator/seccomp_profile.h) on init itself; its children inherit it.
#pragma once

#include <kj/common.h>

namespace nodeagent::isolator::init {

// Throws if `program` is not a whole, non-empty BPF program or the kernel refuses it.
// Needs no_new_privs (setupSandbox() sets it).
void installSeccompFilter(kj::ArrayPtr<const kj::byte> program);

}  // namespace nodeagent::isolator::init
