// init's main loop once the sandbox is set up: serves the agent's requests and reaps
// every process that ends up as init's child (spawned ones and reparented orphans).
#pragma once

#include <sys/types.h>

#include <kj/io.h>

#include <unordered_set>

#include "isolator/init/control.h"
#include "isolator/init/seccomp_profile.h"
#include "isolator/init_protocol.h"

namespace nodeagent::isolator::init {

class Server {
 public:
  // `signalFd` reports SIGCHLD (blocked by the caller). Spawned processes run under `seccomp`.
  Server(Control& control, kj::AutoCloseFd signalFd, SeccompProgram seccomp);

  // Runs until an unrecoverable error, which it throws.
  [[noreturn]] void run();

 private:
  void handleRequest(InitMessage& message);
  void reapChildren();

  Control& control_;
  kj::AutoCloseFd signalFd_;
  SeccompProgram seccomp_;
  std::unordered_set<pid_t> spawned_;  // reported in `exited` events; others are just reaped
};

}  // namespace nodeagent::isolator::init
