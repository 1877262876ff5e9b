#include "nodeagent/fleet/peer_links.h"

#include <kj/debug.h>

#include "loop/fd_streams.h"
#include "util/log.h"

namespace nodeagent::fleet {
namespace {

constexpr kj::Duration kConnectTimeout = 2 * kj::SECONDS;

ListenAddress tcpListenAddress(kj::StringPtr hostPort) {
  return parseListenAddress(kj::str("tcp:", hostPort));
}

}  // namespace

void PeerListener::ErrorLogger::taskFailed(kj::Exception&& e) {
  log::warn("fleet.peer_connection_failed", {{"error", e.getDescription().cStr()}});
}

PeerListener::PeerListener(loop::UringEventPort& port, kj::StringPtr bindAddress,
                           kj::TlsContext& tls, uint64_t maxMessageBytes, NewPeer newPeer)
    : port_(port),
      tls_(tls),
      maxMessageBytes_(maxMessageBytes),
      newPeer_(kj::mv(newPeer)),
      listenFd_(bindListenSocket(tcpListenAddress(bindAddress))),
      connections_(errorLogger_) {}

kj::Promise<void> PeerListener::acceptLoop() {
  return port_.acceptFd(listenFd_).then(
      [this](kj::AutoCloseFd fd) {
        connections_.add(serve(kj::mv(fd)));
        return acceptLoop();
      },
      [this](kj::Exception&& e) {
        log::warn("fleet.accept_failed", {{"error", e.getDescription().cStr()}});
        return port_.timer().afterDelay(100 * kj::MILLISECONDS).then([this]() {
          return acceptLoop();
        });
      });
}

kj::Promise<void> PeerListener::serve(kj::AutoCloseFd fd) {
  auto stream = loop::wrapSocketFd(port_, kj::mv(fd));
  return tls_
      .wrapServer(kj::AuthenticatedStream{kj::mv(stream), kj::UnknownPeerIdentity::newInstance()})
      .then([this](kj::AuthenticatedStream&& conn) {
        kj::String actor = kj::str("peer");
        KJ_IF_MAYBE (tlsPeer,
                     kj::dynamicDowncastIfAvailable<kj::TlsPeerIdentity>(*conn.peerIdentity)) {
          actor = kj::str("fleet:CN=", tlsPeer->getCommonName());
        }
        auto connection =
            kj::heap<RpcConnection>(kj::mv(conn.stream), capnp::rpc::twoparty::Side::SERVER,
                                    maxMessageBytes_, newPeer_(kj::mv(actor)));
        auto done = connection->onDisconnect();
        return done.attach(kj::mv(connection));
      });
}

void PeerLinks::ErrorLogger::taskFailed(kj::Exception&& e) {
  log::warn("fleet.link_failed", {{"error", e.getDescription().cStr()}});
}

PeerLinks::PeerLinks(loop::UringEventPort& port, kj::TlsContext& tls, uint64_t maxMessageBytes)
    : port_(port), tls_(tls), maxMessageBytes_(maxMessageBytes), tasks_(errorLogger_) {}

void PeerLinks::dropLater(const std::string& address, Link* link) {
  // Not from inside the link's own promises: a later turn removes it, if it
  // is still the same link.
  tasks_.add(kj::evalLater([this, address, link]() {
    auto it = links_.find(address);
    if (it != links_.end() && it->second.get() == link) links_.erase(it);
  }));
}

void PeerLinks::drop(kj::StringPtr address) {
  auto it = links_.find(address.cStr());
  if (it != links_.end()) dropLater(it->first, it->second.get());
}

Peer::Client PeerLinks::peer(kj::StringPtr address) {
  std::string key = address.cStr();
  auto it = links_.find(key);
  if (it != links_.end()) return KJ_ASSERT_NONNULL(it->second->client);

  auto link = kj::heap<Link>();
  Link* raw = link.get();
  kj::Promise<kj::Own<RpcConnection>> connecting = nullptr;
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                 connecting =
                     connectToNode(port_, tcpListenAddress(address), tls_, maxMessageBytes_);
               })) {
    connecting = kj::mv(*e);
  }
  connecting = connecting.exclusiveJoin(
      port_.timer().afterDelay(kConnectTimeout).then([]() -> kj::Own<RpcConnection> {
        KJ_FAIL_REQUIRE("connecting to a fleet peer timed out");
      }));
  auto client = connecting.then(
      [this, raw, key](kj::Own<RpcConnection> connection) -> Peer::Client {
        auto peer = connection->bootstrap().castAs<Peer>();
        raw->watch = connection->onDisconnect()
                         .then([this, raw, key]() { dropLater(key, raw); },
                               [this, raw, key](kj::Exception&&) { dropLater(key, raw); })
                         .eagerlyEvaluate(nullptr);
        raw->connection = kj::mv(connection);
        return peer;
      },
      [this, raw, key](kj::Exception&& e) -> Peer::Client {
        log::debug("fleet.connect_failed",
                   {{"peer", key.c_str()}, {"error", e.getDescription().cStr()}});
        dropLater(key, raw);
        kj::throwFatalException(kj::mv(e));
      });
  Peer::Client result(kj::mv(client));
  raw->client = result;
  links_.emplace(key, kj::mv(link));
  return result;
}

}  // namespace nodeagent::fleet
