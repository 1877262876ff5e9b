// The agent's side of the control socket to a sandbox's init (PID 1).
//
// Requests go out as single SOCK_SEQPACKET datagrams (schema/init.capnp);
// events come back on one read loop that routes `spawned` replies to the
// waiting spawn() and `exited` events to exitStatus().
#pragma once

#include <map>

#include <kj/async.h>
#include <kj/io.h>
#include <kj/string.h>

#include "loop/uring_event_port.h"

namespace nodeagent {

struct SpawnedProcess {
  int pid;                             // inside the sandbox's pid namespace
  kj::Maybe<kj::AutoCloseFd> stdinFd;  // write end, when stdin was requested
  kj::AutoCloseFd stdoutFd;
  kj::AutoCloseFd stderrFd;
  kj::AutoCloseFd pidfd;
};

struct SpawnRequest {
  kj::Array<kj::String> argv;
  kj::Array<kj::String> env;  // "KEY=VALUE"
  kj::String cwd;
  bool stdinOpen = false;
};

class InitChannel {
 public:
  InitChannel(loop::UringEventPort& port, kj::AutoCloseFd control);
  ~InitChannel() noexcept(false);
  KJ_DISALLOW_COPY(InitChannel);

  kj::Promise<SpawnedProcess> spawn(const SpawnRequest& request);

  // The waitpid() status of `pid`, once init reaps it. Call after spawn()
  // resolved; an exit that arrived earlier is kept until asked for.
  kj::Promise<int> exitStatus(int pid);

 private:
  struct PendingSpawn;
  struct ExitSlot {
    kj::Maybe<int> status;
    kj::Maybe<kj::Own<kj::PromiseFulfiller<int>>> waiter;
  };

  kj::Promise<void> readLoop();
  void failAll(const kj::Exception& e);

  loop::UringEventPort& port_;
  kj::AutoCloseFd control_;
  uint64_t nextTag_ = 1;
  std::map<uint64_t, kj::Own<kj::PromiseFulfiller<SpawnedProcess>>> pendingSpawns_;
  std::map<int, ExitSlot> exits_;  // only pids init reported as spawned
  kj::Maybe<kj::Exception> broken_;
  kj::Promise<void> readTask_;
};

}  // namespace nodeagent
