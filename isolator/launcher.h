// Starts a sandbox: clones its init into fresh user, mount, pid, uts, ipc, net (or one made
// ahead, LaunchSpec::netnsFd) and cgroup namespaces, maps its uid range, puts it into its cgroup
// and waits until init has built the sandbox's root (the Setup -> ready exchange of
// schema/init.capnp).
//
// Synchronous: launch() blocks for the few milliseconds setup takes (bounded by
// LaunchSpec::setupTimeout). Safe to call from a multi-threaded process.
//
// Reaping: init is the caller's child and is deliberately not tied to the caller's
// lifetime (no PDEATHSIG): sandboxes outlive the agent. While the agent runs it must reap
// init: wait for `pidfd` to become readable (e.g. poll or io_uring), then tryReap().
// So the caller must not reap blindly (waitpid(-1, ...)) nor set SIGCHLD to SIG_IGN.
#pragma once

#include <sys/types.h>

#include <kj/common.h>
#include <kj/io.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "isolator/skeleton_seed.h"

namespace nodeagent::isolator {

class SandboxCgroup;
class Zygote;

struct LaunchSpec {
  std::string sandboxId;
  std::string hostname;  // [A-Za-z0-9.-], at most 64 characters
  uint32_t uidBase = 0;  // sandbox uid/gid 0..uidCount-1 = host uidBase..
  uint32_t uidCount = 0;
  std::string initPath;     // the nodeagent-init binary
  std::string skeletonDir;  // from prepareSkeleton(); lower layer of "/"
  std::string usrDir = "/usr";
  // Mount point of the sandbox's tmpfs (writable layers). Created if missing; it and
  // its parents must be traversable by others (init mounts with its own credentials).
  // The mount lives only in the sandbox's mount namespace; remove the empty dir after.
  std::string workDir;
  uint64_t diskBytes = 0;
  SandboxCgroup* cgroup = nullptr;  // may be null (no cgroup placement), e.g. in tests
  // The BPF program every process of the sandbox runs under (SeccompProgram::bytes());
  // required. Must stay valid during launch().
  kj::ArrayPtr<const kj::byte> seccompFilter;
  // The skeleton's seed (readSkeletonSeed(skeletonDir)); required. Borrowed like
  // seccompFilter.
  const std::vector<SeedEntry>* seed = nullptr;
  int initStderrFd = -1;  // init's stderr (its diagnostics); -1 = /dev/null
  // Where init listens for a restarted agent (reconnectInit()); empty = nowhere. Any
  // old socket there is replaced; the caller unlinks it once the sandbox ended. Its
  // directory must keep sandboxes out (the socket is mode 0600, owned by the caller).
  std::string controlSocketPath;
  // A network namespace made ahead (NetnsPool) for the sandbox, or -1 for a new
  // one made by the clone. Borrowed: the caller closes it after launch().
  int netnsFd = -1;
  // Where init comes from: forked by this zygote (which runs initPath's code), or, when
  // null, cloned from the caller and exec'd from initPath.
  Zygote* zygote = nullptr;
  std::chrono::milliseconds setupTimeout{10000};
};

struct LaunchedSandbox {
  pid_t pid = -1;           // init's pid in the caller's pid namespace
  kj::AutoCloseFd pidfd;    // init's pidfd
  kj::AutoCloseFd control;  // the agent's end of the SOCK_SEQPACKET control socket
};

// Throws kj::Exception on failure, with init's setupFailed message when there is one;
// nothing is left running then.
LaunchedSandbox launch(const LaunchSpec& spec);

// Connects to the control socket of a sandbox a previous agent launched (its
// controlSocketPath). Send `resync` first (schema/init.capnp).
kj::AutoCloseFd reconnectInit(const std::string& controlSocketPath);

// Reaps init if it has exited (waitid P_PIDFD, WNOHANG): its wait status (as from
// waitpid), or null while it still runs.
kj::Maybe<int> tryReap(const LaunchedSandbox& sandbox);

// Blocks until init exits and reaps it.
int reap(const LaunchedSandbox& sandbox);

}  // namespace nodeagent::isolator
