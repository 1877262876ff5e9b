#include "support/fleet.h"

#include <chrono>
#include <stdexcept>
#include <thread>

namespace nodeagent::testing {

Fleet::Fleet(int n, FleetOptions options) : options_(std::move(options)) {
  if (!options_.nodeCapacities.empty() && int(options_.nodeCapacities.size()) != n) {
    throw std::runtime_error("Fleet: nodeCapacities must have one entry per node");
  }
  FleetAgent::removeLeftovers();
  network_ = std::make_unique<FleetNetwork>(n);
  std::vector<std::string> addresses;
  for (int i = 0; i < n; ++i) addresses.push_back(network_->address(i));
  pki_ = std::make_unique<FleetPki>(addresses);
  gossipKey_ = randomGossipKey();

  for (int i = 0; i < n; ++i) {
    FleetAgent::Spec spec;
    spec.index = i;
    spec.netnsPath = network_->netnsPath(i);
    spec.address = addresses[size_t(i)];
    for (int j = 0; j < n; ++j) {
      if (j != i)
        spec.seeds.push_back(addresses[size_t(j)] + ":" + std::to_string(options_.gossipPort));
    }
    spec.gossipPort = options_.gossipPort;
    spec.certFile = pki_->nodeCert(i);
    spec.keyFile = pki_->nodeKey(i);
    spec.caFile = pki_->caCert();
    spec.gossipKeys = {gossipKey_};
    spec.clusterConfig = options_.clusterConfig;
    spec.capacity =
        options_.nodeCapacities.empty() ? options_.capacity : options_.nodeCapacities[size_t(i)];
    spec.maxSandboxes = options_.maxSandboxes;
    if (options_.extraConfig) spec.extraConfig = options_.extraConfig(i);
    if (options_.extraArgs) spec.extraArgs = options_.extraArgs(i);
    spec.binDir = options_.binDir;
    agents_.push_back(std::make_unique<FleetAgent>(std::move(spec)));
  }
  if (options_.start) startAll();  // on a throw, the members' destructors clean up
}

Fleet::~Fleet() {
  agents_.clear();
  network_.reset();
  pki_.reset();
}

FleetAgent& Fleet::agent(int i) {
  if (i < 0 || i >= size()) throw std::out_of_range("Fleet: no agent " + std::to_string(i));
  return *agents_[size_t(i)];
}

void Fleet::startAll() {
  for (auto& a : agents_) {
    if (!a->running()) a->start();
  }
  for (auto& a : agents_) {
    if (!a->waitReady(options_.readyTimeoutMs)) {
      throw std::runtime_error("Fleet: agent " + std::to_string(a->index()) + " at " +
                               a->address() + " did not come up; its log:\n" + a->log());
    }
  }
}

bool Fleet::waitUntil(const std::function<bool()>& condition, int timeoutMs, int pollMs) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeoutMs);
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(pollMs));
  }
  return condition();
}

}  // namespace nodeagent::testing
