#include "isolator/zygote.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <capnp/message.h>
#include <kj/debug.h>
#include <kj/vector.h>

#include "isolator/file_util.h"
#include "isolator/init_protocol.h"
#include "schema/init.capnp.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

namespace nodeagent::isolator {
namespace {

// The zygote answers at once; one that does not within this is stuck, and replaced.
constexpr int kReplyTimeoutMs = 10000;

// The fds posix_spawn dup2()s onto 0..3 are kept above those numbers, so that no dup2
// finds its fd already there (a dup2 onto itself would keep FD_CLOEXEC).
constexpr int kLowestSourceFd = 10;

// True when the zygote has gone (it died since the last request); nothing was forked then.
bool hungUp(int socket) {
  pollfd p{socket, POLLIN, 0};
  return poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR)) != 0;
}

// The reply, or null when the zygote ended (or hung) while serving the request.
kj::Maybe<InitMessage> awaitReply(int socket) {
  pollfd p{socket, POLLIN, 0};
  int n;
  do {
    n = poll(&p, 1, kReplyTimeoutMs);
  } while (n < 0 && errno == EINTR);
  if (n < 0) KJ_FAIL_SYSCALL("poll(zygote)", errno);
  if (n == 0) return nullptr;
  return receiveInitMessage(socket);
}

}  // namespace

Zygote::Zygote(std::string initPath, int stderrFd) : initPath_(kj::mv(initPath)) {
  if (stderrFd >= 0) {
    int fd;
    KJ_SYSCALL(fd = fcntl(stderrFd, F_DUPFD_CLOEXEC, kLowestSourceFd));
    stderr_ = kj::AutoCloseFd(fd);
  }
  *process_.lockExclusive() = spawn();
}

Zygote::~Zygote() noexcept(false) {
  stop(*process_.lockExclusive());
}

pid_t Zygote::pid() {
  return process_.lockExclusive()->pid;
}

Zygote::Process Zygote::spawn() {
  int pair[2];
  KJ_SYSCALL(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair));
  kj::AutoCloseFd ours(pair[0]);
  kj::AutoCloseFd theirs = moveFdAtOrAbove(kj::AutoCloseFd(pair[1]), kLowestSourceFd);
  configureInitSocket(ours);
  configureInitSocket(theirs);

  posix_spawn_file_actions_t actions;
  KJ_REQUIRE(posix_spawn_file_actions_init(&actions) == 0);
  KJ_DEFER(posix_spawn_file_actions_destroy(&actions));
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  if (stderr_.get() >= 0) {
    posix_spawn_file_actions_adddup2(&actions, stderr_, 2);
  } else {
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  }
  posix_spawn_file_actions_adddup2(&actions, theirs, 3);
  // Whatever the agent holds without O_CLOEXEC stays out of the zygote, and so out
  // of every sandbox.
  posix_spawn_file_actions_addclosefrom_np(&actions, 4);
  // Signals the agent blocks or ignores must not reach the zygote's inits that way.
  posix_spawnattr_t attributes;
  KJ_REQUIRE(posix_spawnattr_init(&attributes) == 0);
  KJ_DEFER(posix_spawnattr_destroy(&attributes));
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attributes, &none);
  posix_spawnattr_setsigdefault(&attributes, &all);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  static char argv0[] = "nodeagent-init";
  static char mode[] = "zygote";
  char* argv[] = {argv0, mode, nullptr};
  char* envp[] = {nullptr};
  pid_t pid;
  int err = posix_spawn(&pid, initPath_.c_str(), &actions, &attributes, argv, envp);
  if (err != 0) failSyscall("starting the zygote", err, initPath_);
  // Still our unreaped child, so the pid cannot have been reused yet.
  int pidfd = int(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) {
    int openErr = errno;
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    failSyscall("pidfd_open(zygote)", openErr, std::to_string(pid));
  }
  Process process;
  process.pid = pid;
  process.pidfd = kj::AutoCloseFd(pidfd);
  process.socket = kj::mv(ours);
  return process;
}

void Zygote::stop(Process& process) {
  if (process.pidfd.get() < 0) return;
  process.socket = nullptr;
  // Nothing of the zygote's is worth a graceful end: its inits are not its children.
  syscall(SYS_pidfd_send_signal, process.pidfd.get(), SIGKILL, nullptr, 0);
  siginfo_t info;
  while (waitid(idtype_t(P_PIDFD), id_t(process.pidfd.get()), &info, WEXITED) != 0 &&
         errno == EINTR) {
  }
  process.pidfd = nullptr;
  process.pid = -1;
}

Zygote::Started Zygote::start(const InitEntryFds& fds, int netnsFd) {
  capnp::MallocMessageBuilder message(64);
  auto request = message.initRoot<initproto::ZygoteRequest>();
  request.setNewNetwork(netnsFd < 0);
  request.setHasListener(fds.listener >= 0);
  kj::Vector<int> passed;
  passed.addAll(std::initializer_list<int>{fds.sync, fds.control, fds.stderrFd});
  if (netnsFd >= 0) passed.add(netnsFd);
  if (fds.listener >= 0) passed.add(fds.listener);

  auto process = process_.lockExclusive();
  if (process->pidfd.get() < 0) *process = spawn();
  if (hungUp(process->socket)) {
    KJ_LOG(WARNING, "the zygote is gone; starting a new one");
    stop(*process);
    *process = spawn();
  }
  sendInitMessage(process->socket, message, passed);
  KJ_IF_MAYBE (reply, awaitReply(process->socket)) {
    auto answer = reply->reader->getRoot<initproto::ZygoteReply>();
    if (answer.isFailed()) {
      KJ_FAIL_REQUIRE("the zygote could not start init", answer.getFailed().cStr());
    }
    KJ_REQUIRE(answer.isStarted() && answer.getStarted() > 0 && reply->fds.size() == 1,
               "malformed reply from the zygote");
    return Started{pid_t(answer.getStarted()), kj::mv(reply->fds[0])};
  }
  // It ended (or hung) during this request, perhaps after forking: not retried, as a
  // second init could then share this one's sockets. The next launch gets a new zygote.
  stop(*process);
  KJ_FAIL_REQUIRE("the zygote ended without answering");
}

}  // namespace nodeagent::isolator
