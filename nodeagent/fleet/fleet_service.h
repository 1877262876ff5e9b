// The agent as a fleet member (config `cluster`): gossip membership and
// capacity over UdpTransport, the node's capacity ledger (Admission) as the
// Supervisor's CapacityGate, placement (Placer) over node-to-node RPC, and
// the fleet::Peer server other nodes call.
#pragma once

#include <stdint.h>

#include <kj/async.h>
#include <kj/compat/tls.h>
#include <kj/string.h>

#include "cluster/config.h"
#include "cluster/node.h"
#include "cluster/placement.h"
#include "nodeagent/capacity_gate.h"
#include "nodeagent/fleet/gossip_keys.h"
#include "nodeagent/fleet/peer_links.h"
#include "nodeagent/fleet/udp_transport.h"
#include "nodeagent/gateway_server.h"
#include "schema/config.capnp.h"
#include "schema/fleet.capnp.h"

namespace nodeagent::fleet {

class FleetService final : public CapacityGate,
                           private cluster::ReservationChannel,
                           private cluster::Node::Listener {
 public:
  // Binds the gossip socket and the peer listener (so a taken address fails
  // the start, before the supervisor starts). `tls` is the node's
  // mutual-TLS context (required).
  FleetService(ServerContext& server, config::Config::Reader config, kj::TlsContext& tls);
  ~FleetService() noexcept(false);
  KJ_DISALLOW_COPY(FleetService);

  // After Supervisor::start: becomes its capacity gate, starts gossip, joins
  // through the seeds (retried while alone) and serves peers. The promise
  // runs for the agent's life.
  kj::Promise<void> run();
  // Says goodbye to the fleet and lets the Leave spread for a moment.
  kj::Promise<void> leave();

  struct Placed {
    api::Sandbox::Client sandbox;
    kj::String id;
    cluster::NodeId node;
    kj::String address;
    uint32_t attempts;
    uint64_t decisionNs;
  };
  // Node.place: see schema/gateway.capnp.
  kj::Promise<Placed> place(api::SandboxSpec::Reader spec, kj::StringPtr actor);
  void members(api::Node::MembersResults::Builder results);
  void capacity(api::Node::CapacityResults::Builder results);
  // Node.gossipKeys (audited by the caller).
  void changeKeys(api::GossipKeyChange::Reader change, api::Node::GossipKeysResults::Builder out);
  GossipKeys& keys() { return *keys_; }

  cluster::NodeId id() const { return node_->id(); }
  kj::StringPtr address() const { return advertise_; }
  static kj::String idText(cluster::NodeId id);

  // CapacityGate
  uint64_t admit(api::SandboxSpec::Reader spec, uint64_t reservation) override;
  void release(uint64_t ticket) override;

 private:
  class PeerServer;

  // ReservationChannel
  void reserve(cluster::NodeId target, const cluster::Resources& request, int64_t leaseNs,
               kj::Function<void(Reply)> done) override;
  void commit(cluster::NodeId target, cluster::ReservationId id) override;
  // Node::Listener
  void memberChanged(const cluster::Member& m, cluster::MemberState previous, bool isNew) override;

  // Our own ledger's answer to a reservation (for us or a peer).
  Reply reserveHere(const cluster::Resources& request, int64_t leaseNs);
  cluster::NodeState baseState();
  kj::Promise<void> refreshLoop();
  kj::Array<kj::StringPtr> unreachedSeeds();
  void deliverBulk(kj::StringPtr address, kj::Array<kj::byte> sealed);

  ServerContext& server_;
  Supervisor& supervisor_;
  loop::UringEventPort& port_;
  kj::String stateDir_;
  kj::String advertise_;
  kj::Vector<kj::String> seeds_;
  int64_t leaseNs_;
  int64_t lastJoinNs_ = 0;
  cluster::Config gossipConfig_;
  kj::Own<GossipKeys> keys_;
  PeerLinks links_;
  UdpTransport transport_;
  kj::Own<cluster::Node> node_;
  kj::Own<cluster::Admission> admission_;
  kj::Own<cluster::Placer> placer_;
  kj::Own<PeerListener> listener_;
  struct ErrorLogger : public kj::TaskSet::ErrorHandler {
    void taskFailed(kj::Exception&& e) override;
  } errorLogger_;
  kj::TaskSet tasks_;
};

}  // namespace nodeagent::fleet
