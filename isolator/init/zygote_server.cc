#include "isolator/init/zygote_server.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <capnp/message.h>
#include <kj/debug.h>

#include <string>

#include "isolator/file_util.h"
#include "isolator/init/control.h"
#include "isolator/init_entry.h"
#include "isolator/init_protocol.h"
#include "schema/init.capnp.h"

namespace nodeagent::isolator::init {
namespace {

constexpr int kAgentSocket = 3;

// Where enterSandboxAsInit() wants its sources; received fds may land lower.
kj::AutoCloseFd openHigh(const char* path, int flags) {
  int fd;
  KJ_SYSCALL(fd = open(path, flags | O_CLOEXEC), path);
  return moveFdAtOrAbove(kj::AutoCloseFd(fd), kInitEntryLowestSourceFd);
}

void reply(capnp::MessageBuilder& message, kj::ArrayPtr<const int> fds = nullptr) {
  sendInitMessage(kAgentSocket, message, fds);
}

void replyFailed(kj::StringPtr why) {
  capnp::MallocMessageBuilder message(64);
  message.initRoot<initproto::ZygoteReply>().setFailed(why);
  reply(message);
}

class ZygoteServer {
 public:
  ZygoteServer(int (*runInit)(), char* modeArgument)
      : runInit_(runInit),
        modeArgument_(modeArgument),
        devNull_(openHigh("/dev/null", O_RDWR)),
        ownNetwork_(openHigh("/proc/self/ns/net", O_RDONLY)) {}

  // One request; false once the agent has gone.
  bool serveOne() {
    KJ_IF_MAYBE (message, receiveInitMessage(kAgentSocket)) {
      try {
        startInit(*message);
      } catch (const kj::Exception& e) {
        replyFailed(e.getDescription());
      }
      return true;
    }
    return false;
  }

 private:
  void startInit(InitMessage& message) {
    auto request = message.reader->getRoot<initproto::ZygoteRequest>();
    size_t expected = 3 + (request.getNewNetwork() ? 0 : 1) + (request.getHasListener() ? 1 : 0);
    KJ_REQUIRE(message.fds.size() == expected, "wrong number of fds", message.fds.size(), expected);
    for (auto& fd : message.fds) fd = moveFdAtOrAbove(kj::mv(fd), kInitEntryLowestSourceFd);
    size_t next = 3;
    int network = request.getNewNetwork() ? -1 : message.fds[next++].get();
    InitEntryFds fds{message.fds[0], message.fds[1],
                     request.getHasListener() ? message.fds[next].get() : -1, devNull_,
                     message.fds[2]};

    uint64_t flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC |
                     CLONE_PIDFD | CLONE_PARENT;
    if (network >= 0) {
      KJ_SYSCALL(setns(network, CLONE_NEWNET), "entering the sandbox's network namespace");
    } else {
      flags |= CLONE_NEWNET;
    }
    int pidfd = -1;
    clone_args args;
    memset(&args, 0, sizeof(args));
    args.flags = flags;
    args.pidfd = uint64_t(uintptr_t(&pidfd));
    // No exit_signal: with CLONE_PARENT the child's is the zygote's own (SIGCHLD), sent
    // to the agent, whose child it is.
    long pid = syscall(SYS_clone3, &args, sizeof(args));
    if (pid == 0) becomeInit(fds);
    int cloneErr = errno;
    if (pid > 0) {
      // The agent learns of its new child before anything else can go wrong here: a child
      // it never heard of would be a zombie it cannot reap.
      kj::AutoCloseFd ownedPidfd(pidfd);
      capnp::MallocMessageBuilder answer(64);
      answer.initRoot<initproto::ZygoteReply>().setStarted(int32_t(pid));
      int passed[] = {pidfd};
      reply(answer, passed);
    }
    // Back home, so that no namespace outlives its sandbox because the zygote sat in it.
    if (network >= 0 && setns(ownNetwork_, CLONE_NEWNET) != 0) {
      logError("zygote",
               (std::string("returning to its network namespace: ") + strerror(errno)).c_str());
      _exit(1);  // the agent starts a new one
    }
    if (pid < 0) KJ_FAIL_SYSCALL("clone3(init)", cloneErr);
  }

  // The child: a copy of the zygote, holding copies of everything it has open. It never
  // returns into the zygote's loop, not even by an exception: fd 3 is init's control
  // socket now.
  [[noreturn]] void becomeInit(const InitEntryFds& fds) {
    // First of all, the socket that could start sandboxes: never the sandbox's.
    close(kAgentSocket);
    enterSandboxAsInit(fds, 0);  // fds 0..4 in place, every other fd closed
    memset(modeArgument_, 0, strlen(modeArgument_));
    int status = 1;
    try {
      status = runInit_();
    } catch (const kj::Exception& e) {
      logError("fatal", e.getDescription().cStr());
    } catch (...) {
      logError("fatal", "unknown exception");
    }
    // Not exit(): no destructor of the zygote's statics should run in a sandbox's init.
    _exit(status);
  }

  int (*runInit_)();
  char* modeArgument_;
  kj::AutoCloseFd devNull_;
  kj::AutoCloseFd ownNetwork_;
};

}  // namespace

int serveZygote(int (*runInit)(), char* modeArgument) {
  if (fcntl(kAgentSocket, F_SETFD, FD_CLOEXEC) != 0) {
    logError("zygote", "no agent socket on fd 3");
    return 2;
  }
  // Its inits take the agent's end of the control socket as their EOF; the zygote
  // itself must not die of a write to a closed one.
  signal(SIGPIPE, SIG_IGN);
  ZygoteServer server(runInit, modeArgument);
  while (server.serveOne()) {
  }
  return 0;
}

}  // namespace nodeagent::isolator::init
