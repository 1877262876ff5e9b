// The gossip protocol's Env in the agent: datagrams over one UDP socket,
// sealed with the gossip keyring; the alarm on the event loop's timer; state
// transfers handed to the node-to-node RPC (see PeerLinks).
#pragma once

#include <netinet/in.h>
#include <stdint.h>

#include <kj/async.h>
#include <kj/function.h>
#include <string>
#include <unordered_map>

#include "cluster/env.h"
#include "cluster/node.h"
#include "loop/uring_event_port.h"
#include "nodeagent/fleet/gossip_keys.h"

namespace nodeagent::fleet {

// "ip:port" (IPv4, or [IPv6]:port) as a socket address; null if malformed.
kj::Maybe<sockaddr_storage> parseHostPort(kj::StringPtr text, socklen_t* len);

class UdpTransport final : public cluster::Env {
 public:
  // Sends a sealed state-transfer packet to the member at `address`.
  using BulkSender = kj::Function<void(kj::StringPtr address, kj::Array<kj::byte> sealed)>;

  // Binds the socket now (so a taken port fails the agent's start).
  UdpTransport(loop::UringEventPort& port, kj::StringPtr bindAddress, const GossipKeys& keys,
               BulkSender bulk);
  ~UdpTransport() noexcept(false);

  // Starts delivering datagrams (and alarms) to `node`, which must outlive
  // this transport's use of it.
  void start(cluster::Node& node);
  // A sealed packet that came over RPC instead of UDP.
  void receiveSealed(kj::ArrayPtr<const kj::byte> sealed);

  int64_t nowNs() override;
  void send(cluster::NodeId to, kj::ArrayPtr<const kj::byte> packet) override;
  void sendBulk(cluster::NodeId to, kj::ArrayPtr<const kj::byte> packet) override;
  void sendToAddress(kj::StringPtr address, kj::ArrayPtr<const kj::byte> packet) override;
  void wakeAt(int64_t atNs) override;
  uint64_t random() override;
  void learnAddress(cluster::NodeId node, kj::StringPtr address) override;
  kj::String addressOf(cluster::NodeId node) override;

  uint64_t datagramsReceived() const { return received_; }
  // Datagrams no key of the ring opened (another fleet, a retired key, noise).
  uint64_t datagramsRejected() const { return rejected_; }

 private:
  struct Peer {
    std::string address;
    sockaddr_storage sockaddr;
    socklen_t len;
  };
  kj::Promise<void> receiveLoop();
  void sendSealed(const sockaddr_storage& to, socklen_t len, kj::ArrayPtr<const kj::byte> packet);

  loop::UringEventPort& port_;
  const GossipKeys& keys_;
  BulkSender bulk_;
  kj::AutoCloseFd fd_;
  kj::Maybe<cluster::Node&> node_;
  std::unordered_map<cluster::NodeId, Peer> book_;
  kj::Array<kj::byte> buffer_;
  kj::Promise<void> receiving_ = nullptr;
  kj::Promise<void> alarm_ = nullptr;
  struct ErrorLogger : public kj::TaskSet::ErrorHandler {
    void taskFailed(kj::Exception&& e) override;
  } errorLogger_;
  kj::TaskSet wakes_;
  uint64_t received_ = 0;
  uint64_t rejected_ = 0;
};

}  // namespace nodeagent::fleet
