#include "isolator/init/server.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <capnp/message.h>
#include <kj/debug.h>

#include "isolator/init/spawn.h"
#include "schema/init.capnp.h"

namespace nodeagent::isolator::init {

Server::Server(Control& control, kj::AutoCloseFd signalFd, kj::AutoCloseFd listener)
    : control_(control), signalFd_(kj::mv(signalFd)), listener_(kj::mv(listener)) {}

void Server::run() {
  for (;;) {
    pollfd fds[3];
    nfds_t count = 0;
    fds[count++] = pollfd{signalFd_, POLLIN, 0};
    int listenerSlot = -1, controlSlot = -1;
    if (listener_.get() >= 0) {
      listenerSlot = int(count);
      fds[count++] = pollfd{listener_, POLLIN, 0};
    }
    if (control_.connected()) {
      short events = POLLIN;
      if (control_.hasPendingOutput()) events = short(events | POLLOUT);
      controlSlot = int(count);
      fds[count++] = pollfd{control_.fd(), events, 0};
    }
    int n = poll(fds, count, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      KJ_FAIL_SYSCALL("poll", errno);
    }
    if (fds[0].revents & POLLIN) reapChildren();
    if (controlSlot >= 0 && fds[controlSlot].revents != 0) {
      short revents = fds[controlSlot].revents;
      if (revents & POLLOUT) control_.flush();
      if (revents & (POLLIN | POLLHUP | POLLERR)) {
        KJ_IF_MAYBE (message, control_.receive()) {
          handleRequest(*message);
        }
      }
    }
    // After the old connection's last requests: a new one replaces it.
    if (listenerSlot >= 0 && (fds[listenerSlot].revents & POLLIN)) acceptAgent();
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
        outcome = spawnProcess(request.getSpawn());
      } catch (const kj::Exception& e) {
        outcome.error = e.getDescription().cStr();
      }
      if (outcome.pid > 0) {
        auto spawn = request.getSpawn();
        TrackedProcess tracked;
        for (auto arg : spawn.getArgv()) tracked.argv.emplace_back(arg.cStr(), arg.size());
        timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        tracked.startedAtNs = int64_t(now.tv_sec) * 1000000000 + now.tv_nsec;
        tracked.timeoutAtMonoNs = spawn.getTimeoutAtMonoNs();
        try {
          processes_.add(outcome.pid, kj::mv(tracked), outcome.fds, spawn.getStdinOpen());
        } catch (const kj::Exception& e) {
          // Out of fds: the process could not survive an agent restart. Refuse it.
          kill(outcome.pid, SIGKILL);
          event.setSpawnFailed(kj::str("tracking the process: ", e.getDescription()));
          control_.send(reply);
          return;
        }
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
    case initproto::Request::RESYNC:
      resync(request.getTag());
      return;
    case initproto::Request::CLOSE_STDIN:
      processes_.closeStdin(request.getCloseStdin());
      return;
    case initproto::Request::RELEASE:
      processes_.release(request.getRelease());
      return;
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
    struct rusage usage {};
    pid_t pid = wait4(-1, &status, WNOHANG, &usage);
    if (pid <= 0) break;
    uint64_t cpuNs = uint64_t(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1000000000 +
                     uint64_t(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) * 1000;
    // Kept (with its status) until the agent releases it, so an agent that was
    // away when it ended still learns how it ended.
    if (!processes_.markExited(pid, status, cpuNs)) continue;  // an orphan reparented to us
    capnp::MallocMessageBuilder message(64);
    auto event = message.initRoot<initproto::Event>();
    auto exited = event.initExited();
    exited.setPid(pid);
    exited.setWaitStatus(status);
    exited.setCpuNs(cpuNs);
    control_.send(message);
  }
}

}  // namespace nodeagent::isolator::init

namespace nodeagent::isolator::init {

void Server::acceptAgent() {
  int fd = accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) {
    if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
      logError("accept", strerror(errno));
    }
    return;
  }
  kj::AutoCloseFd socket(fd);
  configureInitSocket(socket);
  control_.attach(kj::mv(socket));
}

void Server::resync(uint64_t tag) {
  for (auto& [pid, process] : processes_.processes()) {
    capnp::MallocMessageBuilder message(256);
    auto event = message.initRoot<initproto::Event>();
    event.setTag(tag);
    auto adopted = event.initAdopted();
    adopted.setPid(pid);
    auto argv = adopted.initArgv(unsigned(process.argv.size()));
    for (size_t i = 0; i < process.argv.size(); ++i) {
      argv.set(unsigned(i), capnp::Text::Reader(process.argv[i].data(), process.argv[i].size()));
    }
    adopted.setStartedAtNs(process.startedAtNs);
    adopted.setTimeoutAtMonoNs(process.timeoutAtMonoNs);
    adopted.setStdinOpen(process.stdinFd.get() >= 0);
    adopted.setExited(process.exited);
    adopted.setWaitStatus(process.waitStatus);
    adopted.setCpuNs(process.cpuNs);
    kj::Vector<kj::AutoCloseFd> fds;
    try {
      fds = ProcessTable::duplicateFds(process);
    } catch (const kj::Exception& e) {
      logError("resync", e.getDescription().cStr());
      continue;
    }
    control_.send(message, kj::mv(fds));
  }
  capnp::MallocMessageBuilder done(64);
  auto event = done.initRoot<initproto::Event>();
  event.setTag(tag);
  event.setResynced();
  control_.send(done);
}

}  // namespace nodeagent::isolator::init
