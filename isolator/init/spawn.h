// Starts one process for the agent: fork, wire stdio to fresh pipes, exec, and learn
// through a close-on-exec pipe whether exec succeeded before answering.
#pragma once

#include <sys/types.h>

#include <kj/io.h>
#include <kj/vector.h>

#include <string>

#include "isolator/init/seccomp_profile.h"
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
// child drops capabilities and installs `seccomp` just before exec.
SpawnOutcome spawnProcess(initproto::Spawn::Reader request, const SeccompProgram& seccomp);

}  // namespace nodeagent::isolator::init
