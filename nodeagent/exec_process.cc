#include "nodeagent/exec_process.h"

#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <kj/debug.h>

#include "loop/fd_streams.h"
#include "nodeagent/api_error.h"

namespace nodeagent {
namespace {

constexpr size_t kChunkBytes = 64 * 1024;
// After the process exits, output still in its pipes is delivered; a
// background child that inherited the pipes must not hold wait() forever.
constexpr kj::Duration kDrainGrace = 250 * kj::MILLISECONDS;

int sendSignal(int pidfd, int signo) {
  return int(syscall(SYS_pidfd_send_signal, pidfd, signo, nullptr, 0));
}

}  // namespace

ExecProcess::ExecProcess(loop::UringEventPort& port, SpawnedProcess spawned,
                         api::OutputSink::Client output, kj::Promise<int> exitStatus,
                         kj::Maybe<kj::Duration> timeout)
    : port_(port),
      pid_(spawned.pid),
      pidfd_(kj::mv(spawned.pidfd)),
      stdout_(loop::wrapInputFd(port, kj::mv(spawned.stdoutFd))),
      stderr_(loop::wrapInputFd(port, kj::mv(spawned.stderrFd))),
      output_(kj::mv(output)),
      pumps_(nullptr),
      done_(nullptr) {
  KJ_IF_MAYBE (fd, spawned.stdinFd) {
    stdin_ = loop::wrapOutputFd(port, kj::mv(*fd));
  }

  pumps_ = kj::joinPromises(kj::arr(pump(*stdout_, false), pump(*stderr_, true)))
               .then([this]() { return output_.doneRequest().send().ignoreResult(); })
               .catch_([](kj::Exception&&) {
                 // The caller's sink went away; the process keeps running.
               })
               .fork();

  kj::Promise<int> exited = kj::mv(exitStatus);
  KJ_IF_MAYBE (t, timeout) {
    exited = exited.exclusiveJoin(port.timer().afterDelay(*t).then([this]() -> kj::Promise<int> {
      timedOut_ = true;
      sendSignal(pidfd_, SIGKILL);
      return kj::NEVER_DONE;
    }));
    // The timer's branch never resolves: after the kill, the exit status
    // still arrives through `exitStatus` once init reaps the process.
  }

  done_ = exited
              .then(
                  [this](int status) -> kj::Promise<ExitInfo> {
                    ExitInfo info = classify(status);
                    return pumps_.addBranch()
                        .exclusiveJoin(port_.timer().afterDelay(kDrainGrace))
                        .then([info]() { return info; });
                  },
                  [](kj::Exception&&) -> kj::Promise<ExitInfo> {
                    // init is gone: the sandbox was killed under the process.
                    return ExitInfo{api::ExitReason::KILLED, 0, SIGKILL};
                  })
              .fork();
}

ExitInfo ExecProcess::classify(int status) {
  if (WIFEXITED(status)) return ExitInfo{api::ExitReason::EXITED, WEXITSTATUS(status), 0};
  int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  if (timedOut_) return ExitInfo{api::ExitReason::TIMEOUT, 0, sig};
  return ExitInfo{api::ExitReason::SIGNALED, 0, sig};
}

kj::Promise<void> ExecProcess::pump(kj::AsyncInputStream& in, bool isStderr) {
  auto buffer = kj::heapArray<kj::byte>(kChunkBytes);
  auto read = in.tryRead(buffer.begin(), 1, buffer.size());
  return read.then(
      [this, &in, isStderr, buffer = kj::mv(buffer)](size_t n) mutable -> kj::Promise<void> {
        if (n == 0) return kj::READY_NOW;
        kj::Promise<void> sent = nullptr;
        if (isStderr) {
          auto request = output_.stderrRequest();
          request.setData(buffer.slice(0, n));
          sent = request.send();
        } else {
          auto request = output_.stdoutRequest();
          request.setData(buffer.slice(0, n));
          sent = request.send();
        }
        return sent.then([this, &in, isStderr]() { return pump(in, isStderr); });
      });
}

void ExecProcess::signal(int signo) {
  if (signo <= 0 || signo >= 65) {
    throwApiError(api::ErrorCode::INVALID_ARGUMENT, kj::str("no such signal: ", signo));
  }
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
  stdin_ = nullptr;
}

}  // namespace nodeagent
