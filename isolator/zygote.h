// The zygote: one nodeagent-init process, exec'd once, that forks each new sandbox's init
// already past exec and start-up (about 0.7 ms of a launch on a VM where exec is slow).
//
// It runs as root in the host's namespaces, a child of the agent, and only ever talks to
// the agent over a private socketpair. Each init it forks is cloned with CLONE_PARENT, so
// it is the agent's child, exactly like an init the launcher clones itself: the launcher
// writes its id maps, places it in its cgroups, releases it and reaps it the same way.
//
// The price: every init forked from one zygote has the same address layout (the zygote's).
// Init's own code is the only code that ever runs with that layout (sandbox programs get a
// fresh one at exec), and a sandbox has no way to reach another sandbox's init.
//
// Thread-safe: start() may be called from any thread; requests are served one at a time.
#pragma once

#include <sys/types.h>

#include <kj/io.h>
#include <kj/mutex.h>

#include <string>

#include "isolator/init_entry.h"

namespace nodeagent::isolator {

class Zygote {
 public:
  // Starts the zygote from initPath. Its own diagnostics go to stderrFd (-1: /dev/null).
  Zygote(std::string initPath, int stderrFd);
  // Closes its socket, upon which it exits, and reaps it.
  ~Zygote() noexcept(false);
  KJ_DISALLOW_COPY(Zygote);

  struct Started {
    pid_t pid;              // in the caller's pid namespace; the caller's child
    kj::AutoCloseFd pidfd;  // its pidfd
  };

  // Forks a new init into fresh user, mount, pid, uts, ipc and network namespaces (or
  // into netnsFd's network namespace, if >= 0). It then runs enterSandboxAsInit(fds) and
  // init's code. The fds are borrowed. A zygote found dead is replaced first; one that
  // ends while serving this request fails it (and is replaced at the next).
  Started start(const InitEntryFds& fds, int netnsFd);

  // The zygote's pid (tests).
  pid_t pid();

 private:
  struct Process {
    pid_t pid = -1;
    kj::AutoCloseFd pidfd;
    kj::AutoCloseFd socket;
  };

  Process spawn();
  static void stop(Process& process);

  std::string initPath_;
  kj::AutoCloseFd stderr_;
  kj::MutexGuarded<Process> process_;
};

}  // namespace nodeagent::isolator
