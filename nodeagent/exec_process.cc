#include "nodeagent/exec_process.h"

#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <kj/debug.h>

#include "loop/fd_streams.h"
#include "nodeagent/api_error.h"
#include "util/clock.h"

namespace nodeagent {
namespace {

// After the process exits, output still in its pipes is delivered; a
// background child that inherited the pipes must not hold wait() forever.
constexpr kj::Duration kDrainGrace = 250 * kj::MILLISECONDS;

int sendSignal(int pidfd, int signo) {
  return int(syscall(SYS_pidfd_send_signal, pidfd, signo, nullptr, 0));
}

}  // namespace

ExecProcess::ExecProcess(loop::UringEventPort& port, SpawnedProcess spawned,
                         kj::Maybe<api::OutputSink::Client> output,
                         kj::Promise<ProcessExit> exitStatus, Options options)
    : port_(port),
      pid_(spawned.pid),
      argv_(kj::mv(options.argv)),
      startedAtNs_(options.startedAtNs != 0 ? options.startedAtNs : unixNowNs()),
      pidfd_(kj::mv(spawned.pidfd)),
      output_(port.timer(), loop::wrapInputFd(port, kj::mv(spawned.stdoutFd)),
              loop::wrapInputFd(port, kj::mv(spawned.stderrFd))),
      oomKilledSince_(kj::mv(options.oomKilledSince)),
      stdinClosed_(kj::mv(options.stdinClosed)),
      done_(nullptr) {
  KJ_IF_MAYBE (fd, spawned.stdinFd) {
    stdin_ = loop::wrapOutputFd(port, kj::mv(*fd));
  }
  KJ_IF_MAYBE (sink, output) {
    output_.follow(kj::mv(*sink));  // nothing was read yet: it misses nothing
  }

  kj::Promise<ProcessExit> exited = kj::mv(exitStatus);
  KJ_IF_MAYBE (t, options.timeout) {
    exited =
        exited.exclusiveJoin(port.timer().afterDelay(*t).then([this]() -> kj::Promise<ProcessExit> {
          timedOut_ = true;
          sendSignal(pidfd_, SIGKILL);
          return kj::NEVER_DONE;
        }));
    // The timer's branch never resolves: after the kill, the exit status
    // still arrives through `exitStatus` once init reaps the process.
  }

  done_ = exited
              .then(
                  [this](ProcessExit exit) -> kj::Promise<ExitInfo> {
                    ExitInfo info = ended(classify(exit));
                    return output_.whenDrained()
                        .exclusiveJoin(port_.timer().afterDelay(kDrainGrace))
                        .then([info]() { return info; });
                  },
                  [this](kj::Exception&&) -> kj::Promise<ExitInfo> {
                    // init is gone: the sandbox was killed under the process.
                    return ended(ExitInfo{api::ExitReason::KILLED, 0, SIGKILL});
                  })
              .fork();
}

ExitInfo ExecProcess::ended(ExitInfo info) {
  exitInfo_ = info;
  endedAtNs_ = unixNowNs();
  return info;
}

ExitInfo ExecProcess::classify(const ProcessExit& exit) {
  ExitInfo info = classifyStatus(exit.waitStatus);
  info.cpuNs = exit.cpuNs;
  return info;
}

ExitInfo ExecProcess::classifyStatus(int status) {
  if (WIFEXITED(status)) return ExitInfo{api::ExitReason::EXITED, WEXITSTATUS(status), 0};
  int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  if (timedOut_) return ExitInfo{api::ExitReason::TIMEOUT, 0, sig};
  // The OOM killer's weapon is SIGKILL; its count in the cgroup tells it
  // apart from anyone else's.
  if (sig == SIGKILL && oomKilledSince_()) return ExitInfo{api::ExitReason::OOM, 0, sig};
  return ExitInfo{api::ExitReason::SIGNALED, 0, sig};
}

kj::Promise<ProcessOutput::Offsets> ExecProcess::attach(api::OutputSink::Client sink,
                                                        ProcessOutput::Offsets from) {
  return output_.attach(kj::mv(sink), from).attach(kj::addRef(*this));
}

void ExecProcess::signal(int signo) {
  if (signo <= 0 || signo >= 65) {
    throwApiError(api::ErrorCode::INVALID_ARGUMENT, kj::str("no such signal: ", signo));
  }
  if (exitInfo_ != nullptr) throwApiError(api::ErrorCode::NOT_RUNNING, "the process has exited");
  if (sendSignal(pidfd_, signo) < 0) {
    if (errno == ESRCH) throwApiError(api::ErrorCode::NOT_RUNNING, "the process has exited");
    KJ_FAIL_SYSCALL("pidfd_send_signal", errno, pid_);
  }
}

kj::Promise<void> ExecProcess::writeStdin(kj::ArrayPtr<const kj::byte> data) {
  KJ_IF_MAYBE (in, stdin_) {
    return (*in)->write(data.begin(), data.size());
  }
  throwApiError(api::ErrorCode::INVALID_ARGUMENT,
                "stdin is closed (or was not requested with stdin = true)");
}

void ExecProcess::closeStdin() {
  if (stdin_ == nullptr) return;
  stdin_ = nullptr;
  KJ_IF_MAYBE (hook, stdinClosed_) {
    (*hook)();
  }
}

}  // namespace nodeagent
