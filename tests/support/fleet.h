// A real fleet on one machine: N nodeagent processes, each in its own network
// namespace with its own address, certificates and gossip keyring. Needs root,
// iproute2, nft and openssl. No gtest dependency (bench/ uses it too); errors
// throw std::runtime_error.
//
//   Fleet fleet(5);                      // network, PKI, 5 agents started and ready
//   fleet.agent(2).kill9();
//   fleet.network().partition({{0, 1}, {2, 3, 4}});
//   Fleet::waitUntil([&] { return ...; }, 10'000);
//
// The parts (FleetNetwork, FleetPki, FleetAgent) are usable on their own.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "support/fleet_agent.h"
#include "support/fleet_network.h"
#include "support/fleet_pki.h"
#include "support/fleet_process.h"

namespace nodeagent::testing {

struct FleetOptions {
  // Write the "tls" and "cluster" blocks into each agent's config (see
  // fleet_agent.h). Off for agents that do not know them yet.
  bool clusterConfig = true;
  // Start every agent in the constructor and wait until each answers `sbx ls`.
  bool start = true;
  int readyTimeoutMs = 30'000;
  uint16_t gossipPort = 7946;
  FleetCapacity capacity;                     // every node's advertised capacity ...
  std::vector<FleetCapacity> nodeCapacities;  // ... unless given here per node
  uint32_t maxSandboxes = 64;
  std::string binDir;  // empty: $NODEAGENT_BIN_DIR or "build/bin"
  // Per node: JSON members spliced into the top level of its config (starting
  // with ","), and extra agent arguments.
  std::function<std::string(int)> extraConfig;
  std::function<std::vector<std::string>(int)> extraArgs;
};

class Fleet {
 public:
  // Removes leftovers of crashed runs, then builds the network, the PKI, one
  // gossip key and n agents. Throws std::runtime_error (with the agent's log
  // when one does not come up), after tearing down what it made.
  explicit Fleet(int n, FleetOptions options = {});
  // Agents first (sandboxes, processes, cgroups, directories), then the
  // namespaces, then the PKI.
  ~Fleet();
  Fleet(const Fleet&) = delete;
  Fleet& operator=(const Fleet&) = delete;

  int size() const { return int(agents_.size()); }
  FleetAgent& agent(int i);
  FleetNetwork& network() { return *network_; }
  FleetPki& pki() { return *pki_; }
  const std::string& gossipKey() const { return gossipKey_; }
  const FleetOptions& options() const { return options_; }

  // Starts every agent that is not running and waits until all answer.
  // Throws with the log of the first that does not.
  void startAll();

  // Polls `condition` every `pollMs` until it is true (returns true) or
  // `timeoutMs` passed (returns false after one last try).
  static bool waitUntil(const std::function<bool()>& condition, int timeoutMs, int pollMs = 50);

 private:
  FleetOptions options_;
  std::string gossipKey_;
  std::unique_ptr<FleetNetwork> network_;
  std::unique_ptr<FleetPki> pki_;
  std::vector<std::unique_ptr<FleetAgent>> agents_;
};

}  // namespace nodeagent::testing
