#include "isolator/init/spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <kj/debug.h>

#include <vector>

#include "isolator/init/capabilities.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

namespace nodeagent::isolator::init {
namespace {

enum Stage : int32_t {
  kStageStdio = 1,
  kStageChdir,
  kStageCapabilities,
  kStageSeccomp,
  kStageExec,
};

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

[[noreturn]] void reportAndExit(int fd, int32_t stage, int err) {
  ChildError error{stage, err};
  ssize_t ignored = write(fd, &error, sizeof(error));
  (void)ignored;
  _exit(127);
}

// In the forked child. init is single-threaded, but keep to plain system calls anyway.
[[noreturn]] void runChild(const ExecPlan& plan, const SeccompProgram& seccomp, int stdinFd,
                           int stdoutFd, int stderrFd, int errorFd) {
  setsid();
  if (dup2(stdinFd, 0) < 0 || dup2(stdoutFd, 1) < 0 || dup2(stderrFd, 2) < 0) {
    reportAndExit(errorFd, kStageStdio, errno);
  }
  syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC);
  // init blocks SIGCHLD and ignores SIGPIPE; a new program starts from the defaults.
  for (int sig = 1; sig < NSIG; ++sig) signal(sig, SIG_DFL);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  if (chdir(plan.cwd.c_str()) != 0) reportAndExit(errorFd, kStageChdir, errno);
  if (!dropCapabilities()) reportAndExit(errorFd, kStageCapabilities, errno);
  // Last: from here to exec the child only calls execve, write and exit_group, which the
  // filter allows; a failed exec is still reported.
  if (!seccomp.install()) reportAndExit(errorFd, kStageSeccomp, errno);
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
  reportAndExit(errorFd, kStageExec, err);
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
    case kStageCapabilities:
      what = "dropping capabilities";
      break;
    case kStageSeccomp:
      what = "installing the seccomp filter";
      break;
    default:
      what = "exec \"" + plan.argvStorage.front() + "\"";
      break;
  }
  return what + ": " + strerror(error.err);
}

}  // namespace

SpawnOutcome spawnProcess(initproto::Spawn::Reader request, const SeccompProgram& seccomp) {
  SpawnOutcome outcome;
  if (request.getArgv().size() == 0 || request.getArgv()[0].size() == 0) {
    outcome.error = "spawn: argv is empty";
    return outcome;
  }
  ExecPlan plan = planExec(request);

  Pipe in, out, err, status;
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
  status = makePipe();

  pid_t pid;
  KJ_SYSCALL(pid = fork());
  if (pid == 0) {
    runChild(plan, seccomp, request.getStdinOpen() ? in.read.get() : devNull.get(), out.write,
             err.write, status.write);
  }
  // Our copies of the child's ends must go, or EOF never comes.
  in.read = nullptr;
  out.write = nullptr;
  err.write = nullptr;
  status.write = nullptr;

  ChildError error{0, 0};
  ssize_t n;
  do {
    n = read(status.read, &error, sizeof(error));
  } while (n < 0 && errno == EINTR);
  if (n > 0) {
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
