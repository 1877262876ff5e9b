#include "isolator/init/spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <kj/debug.h>

#include <vector>

#include "isolator/child_stack.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

namespace nodeagent::isolator::init {
namespace {

enum Stage : int32_t {
  kStageStdio = 1,
  kStageChdir,
  kStageExec,
};

// Written by a child that fails before exec; read by init once the child is gone.
struct ChildError {
  int32_t stage;
  int32_t err;
};

struct Pipe {
  kj::AutoCloseFd read, write;
};

Pipe makePipe() {
  int fds[2];
  KJ_SYSCALL(pipe2(fds, O_CLOEXEC));
  return Pipe{kj::AutoCloseFd(fds[0]), kj::AutoCloseFd(fds[1])};
}

// The request's argv/env as the char* arrays exec wants, plus the exec candidates from
// a PATH search, all built before fork.
struct ExecPlan {
  std::vector<std::string> argvStorage, envStorage, candidates;
  std::vector<char*> argv, envp;
  std::string cwd;
};

ExecPlan planExec(initproto::Spawn::Reader request) {
  ExecPlan plan;
  for (auto arg : request.getArgv()) plan.argvStorage.emplace_back(arg.cStr(), arg.size());
  std::string path = kDefaultPath;
  bool hasPath = false;
  for (auto entry : request.getEnv()) {
    plan.envStorage.emplace_back(entry.cStr(), entry.size());
    if (plan.envStorage.back().rfind("PATH=", 0) == 0) {
      path = plan.envStorage.back().substr(5);
      hasPath = true;
    }
  }
  // Programs commonly run subprocesses by name; give them the PATH we searched.
  if (!hasPath) plan.envStorage.push_back(std::string("PATH=") + kDefaultPath);
  for (auto& s : plan.argvStorage) plan.argv.push_back(s.data());
  plan.argv.push_back(nullptr);
  for (auto& s : plan.envStorage) plan.envp.push_back(s.data());
  plan.envp.push_back(nullptr);

  plan.cwd = request.hasCwd() && request.getCwd().size() > 0 ? request.getCwd().cStr() : "/";
  const std::string& file = plan.argvStorage.front();
  if (file.find('/') != std::string::npos) {
    plan.candidates.push_back(file);
  } else {
    size_t start = 0;
    while (start <= path.size()) {
      size_t end = path.find(':', start);
      if (end == std::string::npos) end = path.size();
      std::string dir = path.substr(start, end - start);
      if (!dir.empty()) plan.candidates.push_back(dir + "/" + file);
      start = end + 1;
    }
  }
  return plan;
}

// What the child needs, all prepared before clone: it shares init's memory and must
// not allocate.
struct ChildContext {
  const ExecPlan* plan;
  int stdinFd, stdoutFd, stderrFd;
  ChildError* error;  // in init's memory (CLONE_VM)
};

[[noreturn]] void failChild(const ChildContext& c, int32_t stage) {
  c.error->stage = stage;
  c.error->err = errno;
  _exit(127);
}

// Runs in the clone child, in init's memory until exec (CLONE_VM | CLONE_VFORK: init is
// suspended meanwhile). Only plain system calls; errno is shared with init, which is
// why failures go through ChildError.
int runChild(void* arg) {
  const ChildContext& c = *static_cast<const ChildContext*>(arg);
  const ExecPlan& plan = *c.plan;
  setsid();
  if (dup2(c.stdinFd, 0) < 0 || dup2(c.stdoutFd, 1) < 0 || dup2(c.stderrFd, 2) < 0) {
    failChild(c, kStageStdio);
  }
  syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC);
  // init ignores SIGPIPE (an ignored signal stays ignored across exec) and blocks SIGCHLD;
  // a new program starts from the defaults. init has no handlers, so nothing else to reset.
  // The raw syscall: glibc's signal() may touch state shared with init.
  struct kernel_sigaction {
    void* handler;
    unsigned long flags;
    void* restorer;
    uint64_t mask;
  } dfl{};
  syscall(SYS_rt_sigaction, SIGPIPE, &dfl, nullptr, sizeof(uint64_t));
  uint64_t none = 0;
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, nullptr, sizeof(uint64_t));
  if (chdir(plan.cwd.c_str()) != 0) failChild(c, kStageChdir);
  // Capabilities and the seccomp filter are init's own, inherited.
  // Like execvpe: the first error other than "not here" wins, else EACCES if seen.
  int err = ENOENT;
  bool sawAccess = false;
  for (const std::string& candidate : plan.candidates) {
    execve(candidate.c_str(), plan.argv.data(), plan.envp.data());
    err = errno;
    if (err == EACCES) {
      sawAccess = true;
    } else if (err != ENOENT && err != ENOTDIR && err != ESTALE && err != ENODEV &&
               err != ETIMEDOUT) {
      break;
    }
  }
  if (sawAccess && (err == ENOENT || err == ENOTDIR)) err = EACCES;
  errno = err;
  failChild(c, kStageExec);
}

std::string describe(const ExecPlan& plan, const ChildError& error) {
  std::string what;
  switch (error.stage) {
    case kStageStdio:
      what = "dup2 stdio";
      break;
    case kStageChdir:
      what = "chdir \"" + plan.cwd + "\"";
      break;
    default:
      what = "exec \"" + plan.argvStorage.front() + "\"";
      break;
  }
  return what + ": " + strerror(error.err);
}

}  // namespace

SpawnOutcome spawnProcess(initproto::Spawn::Reader request) {
  SpawnOutcome outcome;
  if (request.getArgv().size() == 0 || request.getArgv()[0].size() == 0) {
    outcome.error = "spawn: argv is empty";
    return outcome;
  }
  ExecPlan plan = planExec(request);

  Pipe in, out, err;
  kj::AutoCloseFd devNull;
  if (request.getStdinOpen()) {
    in = makePipe();
  } else {
    int fd;
    KJ_SYSCALL(fd = open("/dev/null", O_RDONLY | O_CLOEXEC));
    devNull = kj::AutoCloseFd(fd);
  }
  out = makePipe();
  err = makePipe();

  // posix_spawn's way: the child borrows init's memory instead of copying its page
  // tables, and init sleeps until the child has exec'd or died. One stack serves every
  // spawn: init is single-threaded and suspended while a child runs on it.
  static ChildStack stack;
  ChildError error{0, 0};
  ChildContext context{&plan, request.getStdinOpen() ? in.read.get() : devNull.get(),
                       out.write.get(), err.write.get(), &error};
  pid_t pid = clone(runChild, stack.top(), CLONE_VM | CLONE_VFORK | SIGCHLD, &context);
  if (pid < 0) KJ_FAIL_SYSCALL("clone", errno);
  // Our copies of the child's ends must go, or EOF never comes.
  in.read = nullptr;
  out.write = nullptr;
  err.write = nullptr;

  if (error.stage != 0) {
    int ignored;
    while (waitpid(pid, &ignored, 0) < 0 && errno == EINTR) {
    }
    outcome.error = describe(plan, error);
    return outcome;
  }

  // Still our unreaped child, so the pid cannot have been reused yet.
  int pidfd = int(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) {
    // Without a pidfd the agent cannot follow the process; do not leave it running.
    outcome.error = std::string("pidfd_open: ") + strerror(errno);
    kill(pid, SIGKILL);
    return outcome;
  }
  outcome.pid = pid;
  if (request.getStdinOpen()) outcome.fds.add(kj::mv(in.write));
  outcome.fds.add(kj::mv(out.read));
  outcome.fds.add(kj::mv(err.read));
  outcome.fds.add(pidfd);
  return outcome;
}

}  // namespace nodeagent::isolator::init
