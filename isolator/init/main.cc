// nodeagent-init: PID 1 of a sandbox. Started by the launcher (isolator/launcher.cc) with
// the control socket as fd 3, inside fresh namespaces and already in the sandbox's
// cgroups. Protocol: schema/init.capnp.
//
//   1. read Setup, build the root filesystem, drop capabilities and install the seccomp
//      filter on itself (spawned processes inherit both), reply ready (or
//      setupFailed and exit 1);
//   2. serve spawn/signal requests and reap children until killed.
//
// If the agent goes away, init keeps running and reaping: sandboxes outlive the agent.
// A restarted agent reconnects through the listening socket on fd 4 (if any) and
// resyncs (see ProcessTable).
//
// `nodeagent-init zygote` is the zygote instead (isolator/zygote.h): it forks inits,
// which start here, at run(), with the same fds an exec'd init finds.
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <capnp/message.h>
#include <kj/debug.h>

#include "isolator/init/capabilities.h"
#include "isolator/init/control.h"
#include "isolator/init/seccomp_install.h"
#include "isolator/init/server.h"
#include "isolator/init/setup_mounts.h"
#include "isolator/init/zygote_server.h"
#include "isolator/init_protocol.h"
#include "schema/init.capnp.h"

namespace nodeagent::isolator::init {
namespace {

constexpr int kControlFd = 3;
constexpr int kListenerFd = 4;  // optional: where a restarted agent reconnects

// fd 4 when the launcher passed a listening socket there, else -1.
kj::AutoCloseFd takeListener() {
  int listening = 0;
  socklen_t size = sizeof(listening);
  if (getsockopt(kListenerFd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &size) != 0 || !listening) {
    return nullptr;
  }
  fcntl(kListenerFd, F_SETFD, FD_CLOEXEC);
  fcntl(kListenerFd, F_SETFL, fcntl(kListenerFd, F_GETFL) | O_NONBLOCK);
  return kj::AutoCloseFd(kListenerFd);
}

// Every tracked process holds up to four fds here; use the whole hard limit.
void raiseFdLimit() {
  rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}

kj::AutoCloseFd setUpSignals() {
  // Dispositions the agent ignored survive exec; start from the defaults. As PID 1,
  // default-handled signals from inside the sandbox are not delivered at all.
  for (int sig = 1; sig < NSIG; ++sig) signal(sig, SIG_DFL);
  signal(SIGPIPE, SIG_IGN);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  KJ_SYSCALL(sigprocmask(SIG_SETMASK, &mask, nullptr));
  int fd;
  KJ_SYSCALL(fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC));
  return kj::AutoCloseFd(fd);
}

SetupConfig readSetup(int fd) {
  KJ_IF_MAYBE (message, receiveInitMessage(fd)) {
    auto setup = message->reader->getRoot<initproto::Setup>();
    SetupConfig config;
    config.hostname = setup.getHostname().cStr();
    config.skeletonDir = setup.getSkeletonDir().cStr();
    config.usrDir = setup.getUsrDir().cStr();
    config.workDir = setup.getWorkDir().cStr();
    config.diskBytes = setup.getDiskBytes();
    auto filter = setup.getSeccompFilter();
    config.seccompFilter = kj::heapArray<kj::byte>(filter.begin(), filter.size());
    for (auto entry : setup.getSeed()) {
      auto content = entry.getContent();
      config.seed.push_back(SeedEntry{entry.getPath().cStr(), mode_t(entry.getMode()),
                                      entry.getDirectory(),
                                      std::string(content.asChars().begin(), content.size())});
    }
    return config;
  }
  KJ_FAIL_REQUIRE("control socket closed before Setup");
}

void sendSetupResult(int fd, kj::Maybe<kj::StringPtr> error) {
  capnp::MallocMessageBuilder message(256);
  auto event = message.initRoot<initproto::Event>();
  KJ_IF_MAYBE (e, error) {
    event.setSetupFailed(*e);
  } else {
    event.setReady();
  }
  sendInitMessage(fd, message);
}

int run() {
  umask(022);
  if (fcntl(kControlFd, F_SETFD, FD_CLOEXEC) != 0) {
    logError("startup", "no control socket on fd 3");
    return 2;
  }
  kj::AutoCloseFd control(kControlFd);
  kj::AutoCloseFd listener = takeListener();
  raiseFdLimit();
  // The session inherited from the agent is not visible in our pid namespace; lead our own.
  setsid();
  kj::AutoCloseFd signals = setUpSignals();
  SetupConfig config = readSetup(control);
  try {
    setupSandbox(config);
    // From here on init needs no privilege it does not hand its children, so it takes
    // their restrictions on itself and they inherit them: spawning then costs no
    // capability drops and no filter load, and init is no softer a target than they are.
    KJ_SYSCALL(dropCapabilities() ? 0 : -1, "dropping capabilities");
    installSeccompFilter(config.seccompFilter);
  } catch (const kj::Exception& e) {
    sendSetupResult(control, e.getDescription());
    return 1;
  }
  sendSetupResult(control, nullptr);

  Control connection;
  connection.attach(kj::mv(control));
  Server(connection, kj::mv(signals), kj::mv(listener)).run();
}

}  // namespace
}  // namespace nodeagent::isolator::init

int main(int argc, char** argv) {
  try {
    if (argc == 2 && strcmp(argv[1], "zygote") == 0) {
      return nodeagent::isolator::init::serveZygote(&nodeagent::isolator::init::run, argv[1]);
    }
    return nodeagent::isolator::init::run();
  } catch (const kj::Exception& e) {
    nodeagent::isolator::init::logError("fatal", e.getDescription().cStr());
    return 1;
  }
}
