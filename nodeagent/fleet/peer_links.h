// Node-to-node Cap'n Proto RPC over TCP with mutual TLS (schema/fleet.capnp):
// PeerListener serves our fleet::Peer on cluster.bind; PeerLinks keeps one
// connection per peer address, opened on first use and dropped when it
// breaks (the next call reconnects).
#pragma once

#include <kj/async.h>
#include <kj/compat/tls.h>
#include <kj/function.h>
#include <map>
#include <string>

#include "loop/uring_event_port.h"
#include "nodeagent/rpc_endpoint.h"
#include "schema/fleet.capnp.h"

namespace nodeagent::fleet {

class PeerListener {
 public:
  // `newPeer` makes the bootstrap capability of one accepted connection;
  // it gets the peer's certificate name for the audit log.
  using NewPeer = kj::Function<Peer::Client(kj::String actor)>;

  PeerListener(loop::UringEventPort& port, kj::StringPtr bindAddress, kj::TlsContext& tls,
               uint64_t maxMessageBytes, NewPeer newPeer);
  KJ_DISALLOW_COPY(PeerListener);

  kj::Promise<void> run() { return acceptLoop(); }

 private:
  kj::Promise<void> acceptLoop();
  kj::Promise<void> serve(kj::AutoCloseFd fd);

  loop::UringEventPort& port_;
  kj::TlsContext& tls_;
  uint64_t maxMessageBytes_;
  NewPeer newPeer_;
  kj::AutoCloseFd listenFd_;
  struct ErrorLogger : public kj::TaskSet::ErrorHandler {
    void taskFailed(kj::Exception&& e) override;
  } errorLogger_;
  kj::TaskSet connections_;
};

class PeerLinks {
 public:
  PeerLinks(loop::UringEventPort& port, kj::TlsContext& tls, uint64_t maxMessageBytes);
  KJ_DISALLOW_COPY(PeerLinks);

  // The Peer at `address` ("ip:port"). Calls made before the connection is
  // up wait for it; if it cannot be made they fail, and the next peer()
  // tries again.
  Peer::Client peer(kj::StringPtr address);
  // Forgets the connection to `address` (it stopped answering: a partition
  // leaves TCP retransmitting for minutes); the next peer() reconnects.
  void drop(kj::StringPtr address);
  size_t connections() const { return links_.size(); }

 private:
  struct Link {
    kj::Maybe<kj::Own<RpcConnection>> connection;
    kj::Maybe<Peer::Client> client;
    kj::Promise<void> watch = nullptr;
  };
  void dropLater(const std::string& address, Link* link);

  loop::UringEventPort& port_;
  kj::TlsContext& tls_;
  uint64_t maxMessageBytes_;
  std::map<std::string, kj::Own<Link>> links_;
  struct ErrorLogger : public kj::TaskSet::ErrorHandler {
    void taskFailed(kj::Exception&& e) override;
  } errorLogger_;
  kj::TaskSet tasks_;
};

}  // namespace nodeagent::fleet
