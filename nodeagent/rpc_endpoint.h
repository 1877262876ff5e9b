// Listening for and connecting to the gateway API: unix sockets (the local
// default) and TCP with mutual TLS (for remote gateways).
#pragma once

#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/compat/tls.h>

#include "loop/uring_event_port.h"
#include "nodeagent/config.h"

namespace nodeagent {

struct TlsFiles {
  kj::String certFile;
  kj::String keyFile;
  kj::String caFile;
};

// A TLS context for mutual authentication: our keypair from the files, and
// only peers whose certificates chain to caFile are accepted.
// `timer` bounds handshakes, so a peer that connects and says nothing does
// not hold a connection forever.
kj::Own<kj::TlsContext> newMutualTlsContext(const TlsFiles& files, kj::Timer& timer);

// A listening socket for `address`; a unix socket is created mode 0600 and a
// stale one left by a dead agent is replaced.
kj::AutoCloseFd bindListenSocket(const ListenAddress& address);

// One RPC connection: the stream, its two-party network and the RPC system.
class RpcConnection {
 public:
  RpcConnection(kj::Own<kj::AsyncIoStream> stream, capnp::rpc::twoparty::Side side,
                uint64_t maxMessageBytes, kj::Maybe<capnp::Capability::Client> bootstrap);
  KJ_DISALLOW_COPY(RpcConnection);

  capnp::Capability::Client bootstrap();  // the peer's bootstrap capability
  kj::Promise<void> onDisconnect() { return network_.onDisconnect(); }

 private:
  kj::Own<kj::AsyncIoStream> stream_;
  capnp::TwoPartyVatNetwork network_;
  capnp::RpcSystem<capnp::rpc::twoparty::VatId> rpc_;
};

// Connects to a gateway API endpoint as a client.
kj::Promise<kj::Own<RpcConnection>> connectToNode(loop::UringEventPort& port,
                                                  const ListenAddress& address,
                                                  kj::Maybe<kj::TlsContext&> tls,
                                                  uint64_t maxMessageBytes);

capnp::ReaderOptions readerOptionsFor(uint64_t maxMessageBytes);

// The socket address of a TCP ListenAddress (a numeric IPv4 or IPv6 host).
sockaddr_storage tcpAddress(const ListenAddress& address, socklen_t* len);

}  // namespace nodeagent
