#include "isolator/launcher.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/sched.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <capnp/message.h>
#include <kj/debug.h>
#include <kj/exception.h>

#include <optional>

#include "isolator/cgroup.h"
#include "isolator/child_stack.h"
#include "isolator/file_util.h"
#include "isolator/init_entry.h"
#include "isolator/init_protocol.h"
#include "isolator/netns_pool.h"
#include "isolator/template.h"
#include "isolator/zygote.h"
#include "schema/init.capnp.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

namespace nodeagent::isolator {
namespace {

static_assert(2 * kMaxSeedBytes <= kMaxInitMessageBytes, "a Setup message must carry any seed");

using Clock = std::chrono::steady_clock;

// Everything the child needs, prepared before clone: it must not allocate.
struct ChildContext {
  InitEntryFds fds;
  // The agent's ends of the same two socket pairs: the child's copies (it has
  // a copy of the whole fd table) go at once, so that an agent that dies
  // before releasing it gives it EOF instead of leaving it waiting forever
  // (and holding every fd the agent had, its listening socket too).
  int agentSync;
  int agentControl;
  int init;
  char* const* argv;
  char* const* envp;
};

// Runs in the clone child. The parent may be multi-threaded and other threads may have
// held locks (malloc, stdio) at clone time, so only raw system calls from here to exec.
[[noreturn]] void runChild(const ChildContext& c) {
  close(c.agentSync);
  close(c.agentControl);
  enterSandboxAsInit(c.fds, CLOSE_RANGE_CLOEXEC);
  syscall(SYS_execveat, c.init, "", c.argv, c.envp, AT_EMPTY_PATH);
  failInitEntry(c.fds.sync, kStepExec);
}

int childEntry(void* context) {
  runChild(*static_cast<const ChildContext*>(context));
}

// Out of the way of the child's dup2s onto 0..4.
kj::AutoCloseFd highFd(kj::AutoCloseFd fd) {
  return moveFdAtOrAbove(kj::mv(fd), kInitEntryLowestSourceFd);
}

void writeIdMap(pid_t pid, const char* file, const LaunchSpec& spec) {
  std::string where = "/proc/" + std::to_string(pid);
  kj::AutoCloseFd dir = openDirectory(where);
  writeFileAt(dir, file,
              "0 " + std::to_string(spec.uidBase) + " " + std::to_string(spec.uidCount) + "\n",
              where);
}

int waitStatusFrom(const siginfo_t& info) {
  switch (info.si_code) {
    case CLD_EXITED:
      return (info.si_status & 0xff) << 8;
    case CLD_KILLED:
      return info.si_status & 0x7f;
    case CLD_DUMPED:
      return (info.si_status & 0x7f) | 0x80;
  }
  return 0;
}

std::string describeWaitStatus(int status) {
  if (WIFEXITED(status)) return "exit status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "status " + std::to_string(status);
}

// Kills and reaps init; returns its wait status.
int killAndReap(const LaunchedSandbox& sandbox) {
  syscall(SYS_pidfd_send_signal, sandbox.pidfd.get(), SIGKILL, nullptr, 0);
  return reap(sandbox);
}

void validate(const LaunchSpec& spec) {
  KJ_REQUIRE(spec.uidBase != 0 && spec.uidCount != 0, "a sandbox needs a non-root uid range",
             spec.uidBase, spec.uidCount);
  KJ_REQUIRE(uint64_t(spec.uidBase) + spec.uidCount <= uint64_t(UINT32_MAX), "uid range overflows",
             spec.uidBase, spec.uidCount);
  // It also goes into the sandbox's /etc/hosts, so only hostname characters.
  bool hostnameOk = !spec.hostname.empty() && spec.hostname.size() <= HOST_NAME_MAX;
  for (char c : spec.hostname) {
    hostnameOk = hostnameOk && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                                (c >= '0' && c <= '9') || c == '-' || c == '.');
  }
  KJ_REQUIRE(hostnameOk, "hostname must be 1..64 characters from [A-Za-z0-9.-]",
             spec.hostname.c_str());
  KJ_REQUIRE(spec.diskBytes > 0, "diskBytes must be positive");
  KJ_REQUIRE(spec.seccompFilter.size() > 0, "a sandbox needs a seccomp filter");
  KJ_REQUIRE(spec.seed != nullptr, "a sandbox needs its skeleton's seed");
  for (const std::string* path : {&spec.initPath, &spec.skeletonDir, &spec.usrDir, &spec.workDir}) {
    if (path->empty() || (*path)[0] != '/')
      failSyscall("launch: path must be absolute", EINVAL, *path);
  }
}

[[noreturn]] void throwLaunchError(const LaunchSpec& spec, std::string message) {
  kj::throwFatalException(
      kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__,
                    kj::str("launching sandbox ", spec.sandboxId.c_str(), ": ", message.c_str())));
}

sockaddr_un controlAddress(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  KJ_REQUIRE(path.size() < sizeof(address.sun_path), "control socket path too long", path);
  memcpy(address.sun_path, path.data(), path.size());
  return address;
}

// The socket init accepts a restarted agent on: SOCK_SEQPACKET, mode 0600.
kj::AutoCloseFd listenForAgent(const std::string& path) {
  sockaddr_un address = controlAddress(path);
  int fd;
  KJ_SYSCALL(fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  kj::AutoCloseFd listener(fd);
  if (unlink(path.c_str()) != 0 && errno != ENOENT) KJ_FAIL_SYSCALL("unlink", errno, path);
  // Not umask: that is per process and other threads create files. Connecting needs
  // write permission, which the agent's umask already withholds from others.
  KJ_SYSCALL(bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof(address)), path);
  KJ_SYSCALL(chmod(path.c_str(), 0600), path);
  KJ_SYSCALL(listen(listener, 4));
  return listener;
}

}  // namespace

kj::AutoCloseFd reconnectInit(const std::string& controlSocketPath) {
  sockaddr_un address = controlAddress(controlSocketPath);
  int fd;
  KJ_SYSCALL(fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  kj::AutoCloseFd socket(fd);
  KJ_SYSCALL(connect(socket, reinterpret_cast<sockaddr*>(&address), sizeof(address)),
             controlSocketPath);
  configureInitSocket(socket);
  return socket;
}

LaunchedSandbox launch(const LaunchSpec& spec) {
  validate(spec);
  makeDirectories(spec.workDir, 0755);

  int pair[2];
  KJ_SYSCALL(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair));
  kj::AutoCloseFd control(pair[0]);
  kj::AutoCloseFd childControl(pair[1]);
  configureInitSocket(control);
  configureInitSocket(childControl);
  KJ_SYSCALL(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair));
  kj::AutoCloseFd sync(pair[0]);
  kj::AutoCloseFd childSync(pair[1]);
  int fd;
  kj::AutoCloseFd init;  // the exec path's nodeagent-init, for execveat
  if (spec.zygote == nullptr) {
    fd = checkSyscall(open(spec.initPath.c_str(), O_PATH | O_CLOEXEC), "open", spec.initPath);
    init = highFd(kj::AutoCloseFd(fd));
  }
  KJ_SYSCALL(fd = open("/dev/null", O_RDWR | O_CLOEXEC));
  kj::AutoCloseFd devNull(fd);
  kj::AutoCloseFd listener;
  if (!spec.controlSocketPath.empty()) listener = highFd(listenForAgent(spec.controlSocketPath));
  KJ_ON_SCOPE_FAILURE({
    if (listener.get() >= 0) unlink(spec.controlSocketPath.c_str());
  });

  childControl = highFd(kj::mv(childControl));
  childSync = highFd(kj::mv(childSync));
  devNull = highFd(kj::mv(devNull));
  kj::AutoCloseFd stderrCopy;
  if (spec.initStderrFd >= 0) {
    KJ_SYSCALL(fd = fcntl(spec.initStderrFd, F_DUPFD_CLOEXEC, kInitEntryLowestSourceFd));
    stderrCopy = kj::AutoCloseFd(fd);
  }

  InitEntryFds entry{childSync, childControl, listener.get(), devNull,
                     stderrCopy.get() >= 0 ? stderrCopy.get() : devNull.get()};
  LaunchedSandbox sandbox;
  // The exec path's child runs on `stack` and reads `context` (both in our memory) until
  // it has exec'd or been reaped: they live as long as this function.
  std::optional<ChildStack> stack;
  static char argv0[] = "nodeagent-init";
  char* argv[] = {argv0, nullptr};
  char* envp[] = {nullptr};
  ChildContext context{entry, sync, control, init, argv, envp};
  if (spec.zygote != nullptr) {
    Zygote::Started started = spec.zygote->start(entry, spec.netnsFd);
    sandbox.pid = started.pid;
    sandbox.pidfd = kj::mv(started.pidfd);
  } else {
    // CLONE_VM: the child shares our memory (on a stack of its own) until it
    // execs, like posix_spawn, instead of copying the agent's page tables; that
    // copy grows with the agent and cost milliseconds per launch. The child
    // touches nothing but `context` (which outlives it here) and does only
    // async-signal-safe syscalls. Unlike vfork we are not suspended: we must
    // write its id maps while it waits.
    int flags = CLONE_VM | CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS |
                CLONE_NEWIPC | CLONE_PIDFD | SIGCHLD;
    // clone() gives the child the calling thread's namespaces: this thread
    // enters the one made ahead for just that long.
    kj::Maybe<kj::Own<ThreadNetnsHome>> inNetns;
    if (spec.netnsFd >= 0) {
      inNetns = kj::heap<ThreadNetnsHome>();
      checkSyscall(setns(spec.netnsFd, CLONE_NEWNET), "setns", "the sandbox's network namespace");
    } else {
      flags |= CLONE_NEWNET;
    }
    // Block every signal across clone so no handler of the caller runs in the child; init
    // sets up its own mask and dispositions.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int pidfd = -1;
    long pid = clone(childEntry, stack.emplace().top(), flags, &context, &pidfd);
    int cloneErr = errno;
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    inNetns = nullptr;  // this thread is back in the agent's namespace
    if (pid < 0) failSyscall("clone", cloneErr, "for sandbox " + spec.sandboxId);
    sandbox.pid = pid_t(pid);
    sandbox.pidfd = kj::AutoCloseFd(pidfd);
  }
  sandbox.control = kj::mv(control);
  bool reaped = false;
  KJ_ON_SCOPE_FAILURE({
    if (!reaped) {
      try {
        killAndReap(sandbox);
      } catch (const kj::Exception&) {
        // Already unwinding; the original error is the one to report.
      }
    }
  });
  childControl = nullptr;
  childSync = nullptr;

  writeIdMap(sandbox.pid, "uid_map", spec);
  writeIdMap(sandbox.pid, "gid_map", spec);
  if (spec.cgroup != nullptr) spec.cgroup->addProcess(sandbox.pid);
  char go = 'g';
  KJ_SYSCALL(send(sync, &go, 1, MSG_NOSIGNAL), "releasing init");

  capnp::MallocMessageBuilder message(256);
  auto setup = message.initRoot<initproto::Setup>();
  setup.setHostname(spec.hostname);
  setup.setSkeletonDir(spec.skeletonDir);
  setup.setUsrDir(spec.usrDir);
  setup.setDiskBytes(spec.diskBytes);
  setup.setWorkDir(spec.workDir);
  setup.setSeccompFilter(spec.seccompFilter);
  auto seed = setup.initSeed(spec.seed->size());
  for (size_t i = 0; i < spec.seed->size(); ++i) {
    const SeedEntry& from = (*spec.seed)[i];
    auto to = seed[i];
    to.setPath(from.path);
    to.setMode(from.mode);
    to.setDirectory(from.directory);
    to.setContent(
        kj::arrayPtr(reinterpret_cast<const kj::byte*>(from.content.data()), from.content.size()));
  }
  sendInitMessage(sandbox.control, message);

  auto deadline = Clock::now() + spec.setupTimeout;
  for (;;) {
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      throwLaunchError(spec, "init did not finish setup within " +
                                 std::to_string(spec.setupTimeout.count()) + " ms");
    }
    pollfd p{sandbox.control, POLLIN, 0};
    int n = poll(&p, 1, int(left));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) KJ_FAIL_SYSCALL("poll", errno);
    if (n == 0) continue;

    KJ_IF_MAYBE (received, receiveInitMessage(sandbox.control)) {
      auto event = received->reader->getRoot<initproto::Event>();
      switch (event.which()) {
        case initproto::Event::READY:
          return sandbox;
        case initproto::Event::SETUP_FAILED: {
          std::string why = event.getSetupFailed();
          reaped = true;
          killAndReap(sandbox);
          throwLaunchError(spec, "setup failed: " + why);
        }
        default:
          throwLaunchError(spec, "init sent an unexpected event before ready");
      }
    } else {
      // init is gone. If it never got to exec, the child told us why on the sync socket.
      InitEntryFailure failure{0, 0};
      ssize_t got = recv(sync, &failure, sizeof(failure), MSG_DONTWAIT);
      reaped = true;
      int status = killAndReap(sandbox);
      if (got == ssize_t(sizeof(failure))) {
        throwLaunchError(
            spec, std::string(initEntryStepName(failure.step)) + ": " + strerror(failure.err));
      }
      throwLaunchError(spec, "init exited during setup (" + describeWaitStatus(status) + ")");
    }
  }
}

kj::Maybe<int> tryReap(const LaunchedSandbox& sandbox) {
  siginfo_t info;
  memset(&info, 0, sizeof(info));
  for (;;) {
    if (waitid(idtype_t(P_PIDFD), id_t(sandbox.pidfd.get()), &info, WEXITED | WNOHANG) == 0) break;
    if (errno == EINTR) continue;
    KJ_FAIL_SYSCALL("waitid(P_PIDFD)", errno, sandbox.pid);
  }
  if (info.si_pid == 0) return nullptr;
  return waitStatusFrom(info);
}

int reap(const LaunchedSandbox& sandbox) {
  siginfo_t info;
  memset(&info, 0, sizeof(info));
  for (;;) {
    if (waitid(idtype_t(P_PIDFD), id_t(sandbox.pidfd.get()), &info, WEXITED) == 0) break;
    if (errno == EINTR) continue;
    KJ_FAIL_SYSCALL("waitid(P_PIDFD)", errno, sandbox.pid);
  }
  return waitStatusFrom(info);
}

}  // namespace nodeagent::isolator
