#include "isolator/init/server.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <capnp/message.h>
#include <kj/debug.h>

#include "isolator/init/spawn.h"
#include "schema/init.capnp.h"

namespace nodeagent::isolator::init {

Server::Server(Control& control, kj::AutoCloseFd signalFd, SeccompProgram seccomp)
    : control_(control), signalFd_(kj::mv(signalFd)), seccomp_(kj::mv(seccomp)) {}

void Server::run() {
  for (;;) {
    pollfd fds[2];
    nfds_t count = 0;
    fds[count++] = pollfd{signalFd_, POLLIN, 0};
    if (control_.connected()) {
      short events = POLLIN;
      if (control_.hasPendingOutput()) events = short(events | POLLOUT);
      fds[count++] = pollfd{control_.fd(), events, 0};
    }
    int n = poll(fds, count, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      KJ_FAIL_SYSCALL("poll", errno);
    }
    if (fds[0].revents & POLLIN) reapChildren();
    if (count > 1 && fds[1].revents != 0) {
      if (fds[1].revents & POLLOUT) control_.flush();
      if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
        KJ_IF_MAYBE (message, control_.receive()) {
          handleRequest(*message);
        }
      }
    }
  }
}

void Server::handleRequest(InitMessage& message) {
  initproto::Request::Reader request;
  try {
    request = message.reader->getRoot<initproto::Request>();
  } catch (const kj::Exception& e) {
    logError("bad request", e.getDescription().cStr());
    return;
  }
  capnp::MallocMessageBuilder reply(128);
  auto event = reply.initRoot<initproto::Event>();
  event.setTag(request.getTag());
  switch (request.which()) {
    case initproto::Request::SPAWN: {
      SpawnOutcome outcome;
      try {
        outcome = spawnProcess(request.getSpawn(), seccomp_);
      } catch (const kj::Exception& e) {
        outcome.error = e.getDescription().cStr();
      }
      if (outcome.pid > 0) {
        spawned_.insert(outcome.pid);
        event.initSpawned().setPid(outcome.pid);
        control_.send(reply, kj::mv(outcome.fds));
      } else {
        event.setSpawnFailed(outcome.error.c_str());
        control_.send(reply);
      }
      return;
    }
    case initproto::Request::SIGNAL: {
      auto signal = request.getSignal();
      pid_t pid = signal.getPid();
      int result = 0;
      // Only real targets: not init itself, and no "every process" (0 or -1).
      if (pid == 1 || pid == -1 || pid == 0) {
        result = pid == 1 ? EPERM : EINVAL;
      } else if (kill(pid, signal.getSignal()) != 0) {
        result = errno;
      }
      event.setSignalResult(result);
      control_.send(reply);
      return;
    }
  }
  logError("bad request", "unknown request type");
}

void Server::reapChildren() {
  // Drain the signalfd; SIGCHLDs coalesce, so waitpid finds every exited child.
  signalfd_siginfo info[8];
  while (read(signalFd_, info, sizeof(info)) > 0) {
  }
  for (;;) {
    int status;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) break;
    if (spawned_.erase(pid) == 0) continue;  // an orphan reparented to us
    capnp::MallocMessageBuilder message(64);
    auto event = message.initRoot<initproto::Event>();
    auto exited = event.initExited();
    exited.setPid(pid);
    exited.setWaitStatus(status);
    control_.send(message);
  }
}

}  // namespace nodeagent::isolator::init
