// nodeagent: the per-host daemon.
//
//   nodeagent [--config FILE] [--state-dir DIR] [--listen unix:PATH|tcp:HOST:PORT]...
//
// Flags override the config file; the file overrides the embedded defaults.
#include <signal.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <capnp/compat/json.h>
#include <kj/debug.h>
#include <kj/vector.h>

#include "loop/io_context.h"
#include "nodeagent/config.h"
#include "nodeagent/fleet/fleet_service.h"
#include "nodeagent/gateway_listener.h"
#include "nodeagent/node_key.h"
#include "nodeagent/rpc_endpoint.h"
#include "nodeagent/store.h"
#include "nodeagent/supervisor.h"
#include "nodeagent/version.h"
#include "util/log.h"

namespace nodeagent {
namespace {

// SIGTERM and SIGINT arrive through a signalfd read on the ring.
kj::Promise<int> nextStopSignal(loop::UringEventPort& port, int signalFd) {
  auto info = kj::heap<signalfd_siginfo>();
  auto bytes = kj::arrayPtr(reinterpret_cast<kj::byte*>(info.get()), sizeof(*info));
  return port.read(signalFd, bytes).then([info = kj::mv(info)](size_t) {
    return int(info->ssi_signo);
  });
}

// Each sandbox holds several fds (control socket, pidfd, root, pipes of its
// processes); the usual soft limit of 1024 would cap the node far too low.
void raiseFdLimit() {
  struct rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}

// Runs the agent until SIGTERM or SIGINT, then stops it gracefully; what it
// made is gone when it returns.
void serve(const LoadedConfig& config, loop::IoContext& io, int signalFd) {
  auto cfg = config.get();
  StoreOptions storeOptions;
  // Commits run on the StoreWriter's thread, off the event loop, so they can
  // afford full durability.
  storeOptions.durability = Durability::kFull;
  auto store = Store::open(cfg.getStateDir(), storeOptions);
  // Before the writer: its last commits sign with the key.
  auto nodeKey = NodeKey::loadOrCreate(kj::str(cfg.getStateDir(), "/node.key"));
  StoreWriter storeWriter(*store);
  Supervisor supervisor(io.port, cfg, *store, storeWriter, *nodeKey);

  ServerContext context{supervisor, io.port, cfg.getMaxFileBytes(), cfg.getMaxMessageBytes()};
  kj::Maybe<kj::Own<kj::TlsContext>> tls;
  auto tlsConfig = cfg.getTls();
  if (tlsConfig.getCertFile().size() > 0) {
    tls = newMutualTlsContext(
        TlsFiles{kj::str(tlsConfig.getCertFile()), kj::str(tlsConfig.getKeyFile()),
                 kj::str(tlsConfig.getCaFile())},
        io.port.timer());
  }

  kj::Vector<kj::Own<GatewayListener>> listeners;
  kj::Vector<kj::Promise<void>> serving;
  for (auto text : cfg.getListen()) {
    ListenAddress address = parseListenAddress(text);
    kj::Maybe<kj::TlsContext&> tlsRef;
    KJ_IF_MAYBE (t, tls) {
      tlsRef = **t;
    }
    auto listener = kj::heap<GatewayListener>(context, address, tlsRef);
    serving.add(listener->run());
    listeners.add(kj::mv(listener));
  }
  // The fleet's sockets too (gossip and peer RPC on cluster.bind).
  kj::Maybe<kj::Own<fleet::FleetService>> fleetService;
  if (cfg.getCluster().getEnabled()) {
    kj::TlsContext* tlsContext = nullptr;
    KJ_IF_MAYBE (t, tls) {
      tlsContext = t->get();
    }
    KJ_REQUIRE(tlsContext != nullptr,
               "cluster.enabled needs mutual TLS between nodes: set tls.certFile, tls.keyFile "
               "and tls.caFile");
    auto service = kj::heap<fleet::FleetService>(context, cfg, *tlsContext);
    context.fleet = *service;
    fleetService = kj::mv(service);
  }
  // Listening sockets are bound above, before anything on the host is
  // touched: an agent that cannot have its address changes nothing.
  supervisor.start();
  KJ_IF_MAYBE (service, fleetService) {
    serving.add((*service)->run());
  }
  supervisor.audit("agent", "start", "", "", kj::str("version=", kVersion));
  // The effective configuration, so an audit reader sees what every later
  // action ran under.
  capnp::JsonCodec json;
  KJ_IF_MAYBE (file, config.file) {
    supervisor.audit("agent", "config", "", "", kj::str("file=", *file, " ", json.encode(cfg)));
  } else {
    supervisor.audit("agent", "config", "", "", kj::str("defaults ", json.encode(cfg)));
  }
  log::info("agent.started", {{"version", kVersion}, {"state_dir", cfg.getStateDir().cStr()}});

  auto stop = nextStopSignal(io.port, signalFd).then([](int signo) {
    log::info("agent.stopping", {{"signal", signo}});
  });
  kj::joinPromises(serving.releaseAsArray()).exclusiveJoin(kj::mv(stop)).wait(io.waitScope);

  KJ_IF_MAYBE (service, fleetService) {
    (*service)->leave().wait(io.waitScope);
  }
  // Tenants' sandboxes keep running on the way out, for the next agent to
  // adopt. Idle warm-pool sandboxes can serve no one without the agent: they
  // end now.
  supervisor.endPools().wait(io.waitScope);
  // Requests and memory samples since the last record live only in memory.
  supervisor.recordUsage("agent-stop");
  supervisor.audit("agent", "stop", "", "", "");
  storeWriter.flush();
  for (auto text : cfg.getListen()) {
    ListenAddress address = parseListenAddress(text);
    if (address.kind == ListenAddress::Kind::kUnix) unlink(address.path.cStr());
  }
}

int run(int argc, char** argv) {
  LoadedConfig config = loadConfigFromArgs(argc, argv);
  auto cfg = config.get();
  log::Level level;
  if (log::parseLevel(cfg.getLogLevel().cStr(), &level)) log::setLevel(level);

  sigset_t stopSignals;
  sigemptyset(&stopSignals);
  sigaddset(&stopSignals, SIGTERM);
  sigaddset(&stopSignals, SIGINT);
  KJ_SYSCALL(sigprocmask(SIG_BLOCK, &stopSignals, nullptr));
  signal(SIGPIPE, SIG_IGN);
  int sfd;
  KJ_SYSCALL(sfd = signalfd(-1, &stopSignals, SFD_CLOEXEC));
  kj::AutoCloseFd signalFd(sfd);

  raiseFdLimit();
  loop::IoContext io;
  io.port.setBusyPoll(cfg.getBusyPollMicros() * kj::MICROSECONDS);
  serve(config, io, signalFd.get());
  // Whatever held a sandbox went with serve()'s scope. A runtime alive now is
  // caught in a reference cycle, and an event it has queued would outlive
  // the loop: say so plainly rather than fail in the loop's destructor.
  if (size_t leaked = SandboxRuntime::liveCount(); leaked != 0) {
    log::error("agent.sandbox_runtimes_leaked", {{"count", uint64_t(leaked)}});
    return 1;
  }
  log::info("agent.stopped");
  return 0;
}

}  // namespace
}  // namespace nodeagent

int main(int argc, char** argv) {
  try {
    return nodeagent::run(argc, argv);
  } catch (kj::Exception& e) {
    nodeagent::log::error("agent.fatal", {{"error", e.getDescription().cStr()}});
    fprintf(stderr, "nodeagent: %s\n", e.getDescription().cStr());
    return 1;
  }
}
