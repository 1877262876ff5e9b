#include "nodeagent/gateway_listener.h"

#include <sys/socket.h>

#include <kj/debug.h>

#include "loop/fd_streams.h"
#include "nodeagent/rpc_endpoint.h"
#include "util/log.h"

namespace nodeagent {
namespace {

kj::String unixPeer(int fd) {
  struct ucred cred {};
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return kj::str("unix:unknown");
  return kj::str("unix:uid=", cred.uid, ",pid=", cred.pid);
}

kj::String describe(const ListenAddress& a) {
  if (a.kind == ListenAddress::Kind::kUnix) return kj::str("unix:", a.path);
  return kj::str("tcp:", a.host, ":", a.port);
}

// The identity of a unix-socket peer, from SO_PEERCRED.
class ActorIdentity final : public kj::PeerIdentity {
 public:
  explicit ActorIdentity(kj::String actor) : actor_(kj::mv(actor)) {}
  kj::String toString() override { return kj::str(actor_); }

 private:
  kj::String actor_;
};

}  // namespace

void GatewayListener::ErrorLogger::taskFailed(kj::Exception&& e) {
  log::warn("gateway.connection_failed", {{"error", e.getDescription().cStr()}});
}

GatewayListener::GatewayListener(ServerContext& context, const ListenAddress& address,
                                 kj::Maybe<kj::TlsContext&> tls)
    : context_(context),
      description_(describe(address)),
      listenFd_(bindListenSocket(address)),
      isUnix_(address.kind == ListenAddress::Kind::kUnix),
      tls_(tls),
      connections_(errorLogger_) {
  KJ_REQUIRE(isUnix_ || tls != nullptr,
             "TCP listening needs mutual TLS: set tls.certFile, tls.keyFile and tls.caFile",
             description_);
  log::info("gateway.listening", {{"address", description_.cStr()}});
}

kj::Promise<void> GatewayListener::run() {
  return acceptLoop();
}

kj::Promise<void> GatewayListener::acceptLoop() {
  return context_.port.acceptFd(listenFd_).then(
      [this](kj::AutoCloseFd fd) {
        connections_.add(serve(kj::mv(fd)));
        return acceptLoop();
      },
      [this](kj::Exception&& e) {
        // Out of fds, or a connection aborted before we took it: keep
        // listening; a pause lets fds free up instead of spinning.
        log::warn("gateway.accept_failed",
                  {{"address", description_.cStr()}, {"error", e.getDescription().cStr()}});
        return context_.port.timer().afterDelay(100 * kj::MILLISECONDS).then([this]() {
          return acceptLoop();
        });
      });
}

kj::Promise<void> GatewayListener::serve(kj::AutoCloseFd fd) {
  ++connectionCount_;
  kj::Promise<kj::AuthenticatedStream> authenticated = nullptr;
  if (isUnix_) {
    kj::String actor = unixPeer(fd);
    auto stream = loop::wrapSocketFd(context_.port, kj::mv(fd));
    authenticated = kj::AuthenticatedStream{kj::mv(stream), kj::heap<ActorIdentity>(kj::mv(actor))};
  } else {
    auto stream = loop::wrapSocketFd(context_.port, kj::mv(fd));
    authenticated = KJ_ASSERT_NONNULL(tls_).wrapServer(
        kj::AuthenticatedStream{kj::mv(stream), kj::UnknownPeerIdentity::newInstance()});
  }
  return authenticated
      .then([this](kj::AuthenticatedStream&& conn) {
        kj::String actor;
        KJ_IF_MAYBE (tlsPeer,
                     kj::dynamicDowncastIfAvailable<kj::TlsPeerIdentity>(*conn.peerIdentity)) {
          actor = kj::str("tls:CN=", tlsPeer->getCommonName());
        } else {
          actor = conn.peerIdentity->toString();
        }
        log::debug("gateway.connected", {{"actor", actor.cStr()}});
        auto node = newNodeServer(context_, kj::mv(actor));
        auto connection =
            kj::heap<RpcConnection>(kj::mv(conn.stream), capnp::rpc::twoparty::Side::SERVER,
                                    context_.maxMessageBytes, kj::mv(node));
        auto done = connection->onDisconnect();
        return done.attach(kj::mv(connection));
      })
      .attach(kj::defer([this]() { --connectionCount_; }));
}

}  // namespace nodeagent
