// The first steps of a sandbox's init, between its clone and init's own code. Shared by
// the two ways a launch starts one: the launcher's clone of the agent, which then execs
// nodeagent-init, and the zygote's fork (isolator/zygote.h), which runs init's code at once.
//
// Only raw system calls and no allocation: in the launcher the child shares the memory of a
// multi-threaded agent whose other threads may have held locks at clone time.
#pragma once

#include <errno.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>

namespace nodeagent::isolator {

// A step that failed, reported with errno on the sync socket before the child exits 127.
enum InitEntryStep : int32_t {
  kStepSetgroups = 1,
  kStepSetgid,
  kStepSetuid,
  kStepCgroupNamespace,
  kStepStdio,
  kStepCloseFds,
  kStepExec,
};

struct InitEntryFailure {
  int32_t step;
  int32_t err;
};

inline const char* initEntryStepName(int32_t step) {
  switch (step) {
    case kStepSetgroups:
      return "setgroups";
    case kStepSetgid:
      return "setresgid";
    case kStepSetuid:
      return "setresuid";
    case kStepCgroupNamespace:
      return "unshare(CLONE_NEWCGROUP)";
    case kStepStdio:
      return "dup2";
    case kStepCloseFds:
      return "close_range";
    case kStepExec:
      return "execveat(init)";
  }
  return "unknown step";
}

// What init starts with: every source fd must be >= kInitEntryLowestSourceFd, so that
// the dup2s onto 0..4 cannot overwrite one another (moveFdAtOrAbove() puts them there).
constexpr int kInitEntryLowestSourceFd = 10;

struct InitEntryFds {
  int sync;      // the launcher's "go" arrives here; failures go back
  int control;   // becomes fd 3
  int listener;  // becomes fd 4; -1: none
  int devNull;   // becomes fds 0 and 1
  int stderrFd;  // becomes fd 2
};

[[noreturn]] inline void failInitEntry(int sync, int32_t step) {
  InitEntryFailure failure{step, errno};
  ssize_t ignored = write(sync, &failure, sizeof(failure));
  (void)ignored;
  _exit(127);
}

// Waits for the launcher's go (uid maps written, cgroups joined), becomes the sandbox's
// root, makes the cgroup namespace, puts the fds in place and applies `closeRangeFlags`
// (0: close, or CLOSE_RANGE_CLOEXEC before an exec) to every other fd. Exits the
// child on failure.
inline void enterSandboxAsInit(const InitEntryFds& fds, unsigned closeRangeFlags) {
  char go;
  if (read(fds.sync, &go, 1) != 1) _exit(126);
  // The sandbox's root is host uidBase; being it keeps the namespace's capabilities
  // (across exec too), and sheds the agent's supplementary groups.
  if (syscall(SYS_setgroups, 0, nullptr) != 0) failInitEntry(fds.sync, kStepSetgroups);
  if (syscall(SYS_setresgid, 0, 0, 0) != 0) failInitEntry(fds.sync, kStepSetgid);
  if (syscall(SYS_setresuid, 0, 0, 0) != 0) failInitEntry(fds.sync, kStepSetuid);
  // Now that we are in the sandbox's cgroups, they become the namespace's root.
  if (unshare(CLONE_NEWCGROUP) != 0) failInitEntry(fds.sync, kStepCgroupNamespace);
  if (dup2(fds.devNull, 0) < 0 || dup2(fds.devNull, 1) < 0 || dup2(fds.stderrFd, 2) < 0 ||
      dup2(fds.control, 3) < 0 || (fds.listener >= 0 && dup2(fds.listener, 4) < 0)) {
    failInitEntry(fds.sync, kStepStdio);
  }
  // Whatever the agent (or the zygote) held stays out of the sandbox. The sync socket
  // goes too: init reports through the control socket from here on. If that cannot be
  // done, the sandbox does not start.
  if (syscall(SYS_close_range, fds.listener >= 0 ? 5u : 4u, ~0u, closeRangeFlags) != 0) {
    failInitEntry(fds.sync, kStepCloseFds);
  }
}

}  // namespace nodeagent::isolator
