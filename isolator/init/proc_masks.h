// Hides the parts of a fresh /proc that tell about or reach into the host, as runc does:
// kernel memory, keys, timer and scheduler internals are covered (/dev/null over files,
// an empty read-only tmpfs over directories), and the kernel's knobs (/proc/sys,
// /proc/sysrq-trigger, ...) become read-only. The sandbox cannot undo this: it has
// neither CAP_SYS_ADMIN nor mount(2) (seccomp).
#pragma once

#include <string>

namespace nodeagent::isolator::init {

// `proc` is where the sandbox's proc is mounted, seen from init (before pivot_root); the
// host's /dev/null must still be reachable. Paths the kernel lacks are skipped. Throws
// kj::Exception on any other failure.
void maskProc(const std::string& proc);

}  // namespace nodeagent::isolator::init
