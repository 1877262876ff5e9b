// The agent's side of the control socket to a sandbox's init (PID 1).
//
// Requests go out as single SOCK_SEQPACKET datagrams (schema/init.capnp);
// events come back on one read loop that routes `spawned` replies to the
// waiting spawn() and `exited` events to exitStatus().
#pragma once

#include <map>

#include <capnp/message.h>
#include <kj/async.h>
#include <kj/io.h>
#include <kj/string.h>
#include <kj/vector.h>

#include "loop/uring_event_port.h"

namespace nodeagent {

struct SpawnedProcess {
  int pid;                             // inside the sandbox's pid namespace
  kj::Maybe<kj::AutoCloseFd> stdinFd;  // write end, when stdin was requested
  kj::AutoCloseFd stdoutFd;
  kj::AutoCloseFd stderrFd;
  kj::AutoCloseFd pidfd;
};

// How a process ended, as init reaped it.
struct ProcessExit {
  int waitStatus = 0;  // as from waitpid
  uint64_t cpuNs = 0;  // user + system, with the children it waited for
};

struct SpawnRequest {
  kj::Array<kj::String> argv;
  kj::Array<kj::String> env;  // "KEY=VALUE"
  kj::String cwd;
  bool stdinOpen = false;
  int64_t timeoutAtMonoNs = 0;  // kept by init for a restarted agent; 0 = none
};

// A process init still tracks, as a restarted agent gets it back.
struct AdoptedProcess {
  SpawnedProcess process;
  kj::Array<kj::String> argv;
  int64_t startedAtNs;
  int64_t timeoutAtMonoNs;  // 0 = none
};

class InitChannel {
 public:
  InitChannel(loop::UringEventPort& port, kj::AutoCloseFd control);
  ~InitChannel() noexcept(false);
  KJ_DISALLOW_COPY(InitChannel);

  kj::Promise<SpawnedProcess> spawn(const SpawnRequest& request);

  // How `pid` ended, once init reaps it. Call after spawn() (or resync())
  // resolved; an exit that arrived earlier is kept until asked for.
  kj::Promise<ProcessExit> exitStatus(int pid);

  // For an agent that reconnected to a running sandbox: every process init
  // still tracks (running, or ended and not yet released).
  kj::Promise<kj::Array<AdoptedProcess>> resync();
  // init drops its copy of the process's stdin, so closing ours means EOF.
  void closeStdin(int pid);
  // The process ended and its output was read: init may forget it.
  void release(int pid);
  // init is being killed: one-way requests are dropped from now on (it would
  // never read them), while the events it sent before dying are still read.
  void stopSending() { sending_ = false; }

 private:
  struct PendingSpawn;
  struct ExitSlot {
    kj::Maybe<ProcessExit> status;
    kj::Maybe<kj::Own<kj::PromiseFulfiller<ProcessExit>>> waiter;
  };

  struct PendingResync {
    uint64_t tag;
    kj::Vector<AdoptedProcess> processes;
    kj::Own<kj::PromiseFulfiller<kj::Array<AdoptedProcess>>> fulfiller;
  };

  kj::Promise<void> readLoop();
  void failAll(const kj::Exception& e);
  // Sends a request nobody waits an answer for; errors surface as a broken channel.
  void sendOneWay(capnp::MessageBuilder& message);

  loop::UringEventPort& port_;
  kj::AutoCloseFd control_;
  uint64_t nextTag_ = 1;
  bool sending_ = true;
  std::map<uint64_t, kj::Own<kj::PromiseFulfiller<SpawnedProcess>>> pendingSpawns_;
  std::map<int, ExitSlot> exits_;  // only pids init reported as spawned
  kj::Maybe<PendingResync> resync_;
  kj::Maybe<kj::Exception> broken_;
  struct ErrorLogger : public kj::TaskSet::ErrorHandler {
    void taskFailed(kj::Exception&& e) override;
  } errorLogger_;
  kj::TaskSet oneWaySends_;
  kj::Promise<void> readTask_;
};

}  // namespace nodeagent
