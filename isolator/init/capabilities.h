// The capabilities spawned processes keep: Docker's default set minus CAP_NET_RAW.
// Everything else (above all CAP_SYS_ADMIN and CAP_SYS_PTRACE) is dropped from the
// bounding, ambient, permitted, effective and inheritable sets, so not even exec of a file
// with capabilities regains it.
#pragma once

namespace nodeagent::isolator::init {

// Drops them from the calling process (init, once set up: its children inherit the
// reduced sets). Returns false (errno set) on failure.
bool dropCapabilities();

}  // namespace nodeagent::isolator::init
