// Starts one process for the agent: clone (vfork-style), wire stdio to fresh pipes, exec,
// and learn whether exec succeeded before answering.
#pragma once

#include <sys/types.h>

#include <kj/io.h>
#include <kj/vector.h>

#include <string>

#include "schema/init.capnp.h"

namespace nodeagent::isolator::init {

constexpr const char kDefaultPath[] = "/usr/local/bin:/usr/bin:/bin";

struct SpawnOutcome {
  pid_t pid = -1;  // > 0 on success
  // In protocol order: [stdin write end (if stdinOpen)], stdout read end, stderr read end, pidfd.
  kj::Vector<kj::AutoCloseFd> fds;
  std::string error;  // set on failure, e.g. `exec "foo": No such file or directory`
};

// Blocks until the child has exec'd or failed to. A failed child is reaped here. The
// child inherits init's capabilities and seccomp filter.
SpawnOutcome spawnProcess(initproto::Spawn::Reader request);

}  // namespace nodeagent::isolator::init
