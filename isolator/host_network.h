// The host's side of sandbox networking: one bridge that every networked
// sandbox's veth joins, holding the gateway addresses (the first address of
// each pool), IP forwarding, and an nftables table that masquerades the pools
// out of the host and lets nothing from outside open a connection to a
// sandbox.
//
//   auto host = HostNetwork::setUp({"nabr0", pool4, pool6, true});
//   SandboxLink::attach(initPid, host->linkFor(index), egressBits);
#pragma once

#include <kj/memory.h>
#include <kj/string.h>

#include <string>

#include "util/ip_prefix.h"

namespace nodeagent::isolator {

struct HostNetworkConfig {
  std::string bridge;  // at most 9 characters: veths are "<bridge>v<index>"
  IpPrefix pool4;
  kj::Maybe<IpPrefix> pool6;
  bool nat = true;
};

// Where one sandbox sits on the bridge.
struct SandboxAddressing {
  std::string hostVeth;  // "<bridge>v<index>", in the host namespace
  std::string bridge;
  IpAddress address4, gateway4;
  uint8_t prefix4 = 0;
  kj::Maybe<IpAddress> address6, gateway6;
  uint8_t prefix6 = 0;
};

class HostNetwork {
 public:
  // Creates what is missing (an agent restart finds it all in place) and
  // replaces the nftables table with the current configuration.
  static kj::Own<HostNetwork> setUp(const HostNetworkConfig& config);
  // Deletes the bridge and the nftables table (uninstall, tests).
  static void tearDown(kj::StringPtr bridge);

  explicit HostNetwork(HostNetworkConfig config) : config_(kj::mv(config)) {}

  IpAddress gateway4() const { return config_.pool4.address().plus(1); }
  kj::Maybe<IpAddress> gateway6() const;
  // Sandbox addresses: index 1 is the address after the gateway.
  uint32_t capacity() const;  // usable indexes: 1..capacity()
  SandboxAddressing addressing(uint32_t index) const;
  const HostNetworkConfig& config() const { return config_; }

 private:
  HostNetworkConfig config_;
};

// The nftables table's name for a bridge.
std::string natTableName(kj::StringPtr bridge);

}  // namespace nodeagent::isolator
