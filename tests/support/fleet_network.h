// The network of a fleet on one machine: a hub network namespace holding a
// Linux bridge, and N agent network namespaces, each with a veth to the
// bridge. Nothing in the caller's (root) namespace is touched. Needs root and
// iproute2; partition() needs nft.
//
//   netns naflt-<pid>-<k>-hub      br0 10.231.0.1/24, ports v0 .. v<N-1>
//   netns naflt-<pid>-<k>-<i>      lo up, eth0 10.231.0.<10+i>/24 (peer of v<i>)
//
// <k> counts the networks made by this process, so several may exist at once
// and parallel test processes never collide. Sets left by a process that is
// gone (a crashed run) are removed when a FleetNetwork is made.
#pragma once

#include <string>
#include <vector>

#include "support/fleet_process.h"

namespace nodeagent::testing {

class FleetNetwork {
 public:
  static constexpr int kMaxNodes = 240;  // addresses .10 .. .249

  // Creates the hub and `nodes` agent namespaces. Throws std::runtime_error
  // (after removing what it made) on failure.
  explicit FleetNetwork(int nodes);
  // Kills any process still inside the namespaces, then deletes them.
  ~FleetNetwork();
  FleetNetwork(const FleetNetwork&) = delete;
  FleetNetwork& operator=(const FleetNetwork&) = delete;

  int size() const { return nodes_; }
  std::string address(int i) const;  // "10.231.0.<10+i>"
  std::string netnsName(int i) const;
  std::string netnsPath(int i) const;  // "/run/netns/<name>"
  // The hub's address (on its bridge): reaches every node and is never cut by
  // partition(), e.g. for a gateway client run with execInHub().
  std::string hubAddress() const { return "10.231.0.1"; }
  std::string hubNetnsName() const;
  std::string hubNetnsPath() const;

  // Drops all traffic between nodes of different groups, both directions
  // (nftables table `inet naflt_partition` in each node's namespace, input
  // and output; established connections are cut too). Nodes in no group keep
  // talking to everyone. Replaces any earlier partition. A node may appear in
  // at most one group.
  void partition(const std::vector<std::vector<int>>& groups);
  // partition({{i}, {every other node}}).
  void isolate(int i);
  // Removes every partition rule.
  void heal();

  // Runs argv inside node i's namespace (or the hub's) and waits for it.
  CommandOutput exec(int i, const std::vector<std::string>& argv, const std::string& input = "",
                     int timeoutMs = 120'000) const;
  CommandOutput execInHub(const std::vector<std::string>& argv, const std::string& input = "",
                          int timeoutMs = 120'000) const;

  // Real traffic: whether a TCP connection from node `from`'s namespace to a
  // listener on address(to) (in node `to`'s namespace) is accepted within
  // `timeoutMs`. from == -1 means the hub.
  bool reachable(int from, int to, int timeoutMs = 1000) const;

  // Removes namespaces named after processes that no longer exist.
  static void removeLeftovers();

 private:
  void setUp();
  void tearDown();
  void checkIndex(int i) const;

  int nodes_;
  std::string prefix_;  // "naflt-<pid>-<k>"
  std::vector<bool> created_;
  bool hubCreated_ = false;
  std::vector<bool> partitioned_;
};

}  // namespace nodeagent::testing
