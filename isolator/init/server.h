// init's main loop once the sandbox is set up: serves the agent's requests and reaps
// every process that ends up as init's child (spawned ones and reparented orphans).
#pragma once

#include <sys/types.h>

#include <kj/io.h>

#include "isolator/init/control.h"
#include "isolator/init/process_table.h"
#include "isolator/init_protocol.h"

namespace nodeagent::isolator::init {

class Server {
 public:
  // `signalFd` reports SIGCHLD (blocked by the caller). `listener` (may be -1) accepts an
  // agent's reconnection; the newest connection wins.
  Server(Control& control, kj::AutoCloseFd signalFd, kj::AutoCloseFd listener);

  // Runs until an unrecoverable error, which it throws.
  [[noreturn]] void run();

 private:
  void handleRequest(InitMessage& message);
  void reapChildren();
  void acceptAgent();
  void resync(uint64_t tag);

  Control& control_;
  kj::AutoCloseFd signalFd_;
  kj::AutoCloseFd listener_;
  ProcessTable processes_;  // reported in `exited` events; other children are just reaped
};

}  // namespace nodeagent::isolator::init
