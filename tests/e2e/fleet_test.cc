// A real fleet on one machine (issue 5): five agents as separate processes,
// each in its own network namespace with its own address, gossiping over
// UDP sealed with the keyring and placing over mutual-TLS RPC. Checks what
// operators and gateways rely on: everyone sees everyone's capacity, a
// kill -9 is noticed and the node comes back, a partition heals, placements
// from every node at once never overcommit a node, and the gossip key can be
// rotated node by node (including a node that slept through the rotation).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/fleet.h"
#include "support/privileged.h"

namespace nodeagent::testing {
namespace {

constexpr int kNodes = 5;
constexpr uint32_t kSlotsPerNode = 4;

struct MemberRow {
  std::string node;
  std::string address;
  std::string state;
  uint64_t generation = 0;
  bool self = false;
};

std::vector<MemberRow> members(FleetAgent& agent) {
  auto r = agent.sbx({"node", "members"});
  std::vector<MemberRow> rows;
  if (r.exitCode != 0) return rows;
  std::istringstream in(r.out);
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    MemberRow row;
    uint32_t incarnation;
    fields >> row.node >> row.address >> row.state >> row.generation >> incarnation;
    row.self = line.find("(this node)") != std::string::npos;
    rows.push_back(row);
  }
  return rows;
}

// node id -> free slots, from one agent's capacity view.
std::map<std::string, uint32_t> freeSlots(FleetAgent& agent) {
  auto r = agent.sbx({"node", "capacity"});
  std::map<std::string, uint32_t> out;
  if (r.exitCode != 0) return out;
  std::istringstream in(r.out);
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string node, version, cpu, mem, disk;
    uint32_t slots = 0;
    fields >> node >> version >> cpu >> mem >> disk >> slots;
    out[node] = slots;
  }
  return out;
}

std::string selfId(FleetAgent& agent) {
  for (auto& m : members(agent)) {
    if (m.self) return m.node;
  }
  return "";
}

size_t aliveCount(FleetAgent& agent) {
  size_t n = 0;
  for (auto& m : members(agent)) n += m.state == "alive";
  return n;
}

std::string stateOf(FleetAgent& agent, const std::string& node) {
  for (auto& m : members(agent)) {
    if (m.node == node) return m.state;
  }
  return "absent";
}

// Running sandboxes of `tenant` on one node, by `sbx ls`.
std::vector<std::string> runningSandboxes(FleetAgent& agent, const std::string& tenant) {
  auto r = agent.sbx({"ls", "--tenant", tenant});
  std::vector<std::string> ids;
  std::istringstream in(r.out);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("sbx-", 0) == 0 && line.find("running") != std::string::npos) {
      ids.push_back(line.substr(0, line.find(' ')));
    }
  }
  return ids;
}

double secondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

class FleetTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (geteuid() != 0) return;
    FleetOptions options;
    options.capacity.cpuMillis = 4000;
    options.capacity.memoryBytes = 8ull << 30;
    options.capacity.slots = kSlotsPerNode;
    fleet_ = new Fleet(kNodes, options);
    for (int i = 0; i < kNodes; ++i) ids_.push_back(selfId(fleet_->agent(i)));
    // `sbx node` names the same fleet id and address.
    for (int i = 0; i < kNodes; ++i) {
      auto info = fleet_->agent(i).sbx({"node"});
      std::string want =
          "fleet:      " + ids_[size_t(i)] + " at " + fleet_->network().address(i) + ":7946\n";
      if (info.out.find(want) == std::string::npos) ids_[size_t(i)] = "mismatch: " + info.out;
    }
  }
  static void TearDownTestSuite() {
    delete fleet_;
    fleet_ = nullptr;
  }
  void SetUp() override {
    NODEAGENT_REQUIRE_ROOT();
    ASSERT_NE(fleet_, nullptr);
    for (auto& id : ids_) ASSERT_EQ(id.size(), 16u) << "an agent did not report its fleet id";
  }

  // Every running agent counts every running agent alive.
  static bool converged(const std::vector<int>& running) {
    for (int i : running) {
      if (aliveCount(fleet_->agent(i)) != running.size()) return false;
    }
    return true;
  }
  static std::vector<int> all() {
    std::vector<int> v;
    for (int i = 0; i < kNodes; ++i) v.push_back(i);
    return v;
  }
  static std::string log(int i) { return fleet_->agent(i).log(); }
  // Every running agent's membership table, for a failure message.
  static std::string views() {
    std::string out;
    for (int i = 0; i < kNodes; ++i) {
      if (!fleet_->agent(i).running()) continue;
      out += "node " + std::to_string(i) + ":\n" + fleet_->agent(i).sbx({"node", "members"}).out;
    }
    return out;
  }

  static Fleet* fleet_;
  static std::vector<std::string> ids_;
};

Fleet* FleetTest::fleet_ = nullptr;
std::vector<std::string> FleetTest::ids_;

TEST_F(FleetTest, EveryNodeSeesEveryMemberAndItsCapacity) {
  ASSERT_TRUE(Fleet::waitUntil([] { return converged(all()); }, 20'000)) << log(0);
  std::set<std::string> distinct(ids_.begin(), ids_.end());
  EXPECT_EQ(distinct.size(), size_t(kNodes));
  for (int i = 0; i < kNodes; ++i) {
    auto rows = members(fleet_->agent(i));
    ASSERT_EQ(rows.size(), size_t(kNodes));
    for (auto& m : rows) {
      // Each member is reached at the address of its own namespace.
      int index = int(std::find(ids_.begin(), ids_.end(), m.node) - ids_.begin());
      ASSERT_LT(index, kNodes);
      EXPECT_EQ(m.address, fleet_->network().address(index) + ":7946");
    }
    ASSERT_TRUE(
        Fleet::waitUntil([&] { return freeSlots(fleet_->agent(i)).size() == kNodes; }, 10'000));
    for (auto& [node, slots] : freeSlots(fleet_->agent(i))) EXPECT_EQ(slots, kSlotsPerNode);
  }

  // A sandbox created on node 2 directly (not placed) takes a slot there,
  // and every node hears of it.
  auto created = fleet_->agent(2).sbx({"create", "--template", "python", "--tenant", "fleet"});
  ASSERT_EQ(created.exitCode, 0) << created.err;
  std::string id = created.out.substr(0, created.out.find('\n'));
  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(Fleet::waitUntil(
      [&] {
        for (int i = 0; i < kNodes; ++i) {
          if (freeSlots(fleet_->agent(i))[ids_[2]] != kSlotsPerNode - 1) return false;
        }
        return true;
      },
      10'000));
  printf("capacity change seen by all %d nodes within %.3f s (polling)\n", kNodes,
         secondsSince(start));
  ASSERT_EQ(fleet_->agent(2).sbx({"kill", id}).exitCode, 0);
  ASSERT_TRUE(Fleet::waitUntil(
      [&] {
        for (int i = 0; i < kNodes; ++i) {
          if (freeSlots(fleet_->agent(i))[ids_[2]] != kSlotsPerNode) return false;
        }
        return true;
      },
      10'000));
}

TEST_F(FleetTest, PlacementFromEveryNodeAtOnceNeverOvercommits) {
  ASSERT_TRUE(Fleet::waitUntil([] { return converged(all()); }, 20'000));

  // A bad spec is refused before any node is asked, with the create's errors.
  auto bad = fleet_->agent(0).sbx({"place", "--template", "nope", "--tenant", "fleet"});
  EXPECT_EQ(bad.exitCode, 125);
  EXPECT_NE(bad.err.find("unknownTemplate"), std::string::npos) << bad.err;
  bad = fleet_->agent(0).sbx(
      {"place", "--template", "python", "--tenant", "fleet", "--memory", "1M"});
  EXPECT_NE(bad.err.find("invalidArgument"), std::string::npos) << bad.err;
  bad = fleet_->agent(0).sbx({"place", "--template", "python", "--tenant", "_pool"});
  EXPECT_NE(bad.err.find("invalidArgument"), std::string::npos) << bad.err;
  for (auto& [node, slots] : freeSlots(fleet_->agent(0))) EXPECT_EQ(slots, kSlotsPerNode);

  // The first exec rides with the placement (pipelined on the promised
  // sandbox), through node 3 to wherever it landed.
  auto piped = fleet_->agent(3).sbx(
      {"place", "--template", "python", "--tenant", "pipe", "--", "python3", "-c", "print(6*7)"});
  ASSERT_EQ(piped.exitCode, 0) << piped.err;
  EXPECT_EQ(piped.out, "42\n");
  std::string pipedId = piped.err.substr(0, piped.err.find(' '));
  std::string pipedNode = piped.err.substr(piped.err.find(' ') + 1, 16);
  int pipedIndex = int(std::find(ids_.begin(), ids_.end(), pipedNode) - ids_.begin());
  ASSERT_LT(pipedIndex, kNodes) << piped.err;
  EXPECT_EQ(runningSandboxes(fleet_->agent(pipedIndex), "pipe"), std::vector<std::string>{pipedId});
  ASSERT_EQ(fleet_->agent(pipedIndex).sbx({"kill", pipedId}).exitCode, 0);
  ASSERT_TRUE(Fleet::waitUntil(
      [&] { return freeSlots(fleet_->agent(0))[ids_[pipedIndex]] == kSlotsPerNode; }, 10'000));

  // 30 placements for 20 slots: every node places 6, three at a time.
  constexpr int kPerNode = 6;
  std::mutex mu;
  std::map<std::string, std::vector<std::string>> placedOn;  // node id -> sandbox ids
  std::vector<std::string> failures;
  std::vector<int> placedFrom(kNodes, 0);
  std::vector<std::thread> threads;
  for (int from = 0; from < kNodes; ++from) {
    for (int lane = 0; lane < 3; ++lane) {
      threads.emplace_back([&, from] {
        for (int k = 0; k < kPerNode / 3; ++k) {
          auto r = fleet_->agent(from).sbx({"place", "--template", "python", "--tenant", "fleet"});
          std::lock_guard<std::mutex> lock(mu);
          if (r.exitCode == 0) {
            std::istringstream fields(r.out);
            std::string id, node;
            fields >> id >> node;
            placedOn[node].push_back(id);
            ++placedFrom[from];
          } else {
            failures.push_back(r.err);
          }
        }
      });
    }
  }
  for (auto& t : threads) t.join();

  size_t placed = 0;
  for (int i = 0; i < kNodes; ++i) {
    auto running = runningSandboxes(fleet_->agent(i), "fleet");
    // The node's own ledger never admitted more than its slots, and what
    // the placers were told matches what the node runs.
    EXPECT_LE(running.size(), size_t(kSlotsPerNode)) << "node " << i << " overcommitted";
    auto& told = placedOn[ids_[i]];
    EXPECT_EQ(std::set<std::string>(running.begin(), running.end()),
              std::set<std::string>(told.begin(), told.end()))
        << "node " << i;
    placed += running.size();
  }
  for (auto& f : failures) {
    // A refusal is a typed "no room", never a crash or an internal error.
    EXPECT_NE(f.find("unavailable"), std::string::npos) << f;
  }
  for (int from = 0; from < kNodes; ++from) EXPECT_GT(placedFrom[from], 0) << "from " << from;
  printf("placed %zu of %d (capacity %u), refused %zu\n", placed, kNodes * kPerNode,
         kNodes * kSlotsPerNode, failures.size());
  EXPECT_EQ(placed + failures.size(), size_t(kNodes * kPerNode));
  // Gossip lags grants by a few milliseconds, so a placer may give up on a
  // slot freed a moment later; nearly all of the fleet is still used.
  EXPECT_GE(placed, size_t(kNodes * kSlotsPerNode - 2));

  // Once full, a placement is refused cleanly, from any node.
  if (placed == size_t(kNodes * kSlotsPerNode)) {
    auto full = fleet_->agent(1).sbx({"place", "--template", "python", "--tenant", "fleet"});
    EXPECT_EQ(full.exitCode, 125);
    EXPECT_NE(full.err.find("unavailable"), std::string::npos) << full.err;
  }
  for (int i = 0; i < kNodes; ++i) {
    for (auto& id : runningSandboxes(fleet_->agent(i), "fleet")) fleet_->agent(i).sbx({"kill", id});
  }
  ASSERT_TRUE(Fleet::waitUntil(
      [&] {
        for (auto& [node, slots] : freeSlots(fleet_->agent(0))) {
          if (slots != kSlotsPerNode) return false;
        }
        return true;
      },
      10'000));
}

TEST_F(FleetTest, KillNineIsDetectedAndTheRestartedNodeRejoins) {
  ASSERT_TRUE(Fleet::waitUntil([] { return converged(all()); }, 20'000));
  uint64_t oldGeneration = 0;
  for (auto& m : members(fleet_->agent(0))) {
    if (m.node == ids_[4]) oldGeneration = m.generation;
  }
  fleet_->agent(4).kill9();
  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(Fleet::waitUntil(
      [&] {
        for (int i = 0; i < 4; ++i) {
          auto s = stateOf(fleet_->agent(i), ids_[4]);
          if (s == "alive" || s == "suspect") return false;
        }
        return true;
      },
      20'000))
      << log(0);
  printf("kill -9 known dead by all 4 others within %.3f s\n", secondsSince(start));
  // Placements no longer consider it.
  for (int k = 0; k < 4; ++k) {
    auto r = fleet_->agent(k).sbx({"place", "--template", "python", "--tenant", "after-crash"});
    ASSERT_EQ(r.exitCode, 0) << r.err;
    EXPECT_EQ(r.out.find(ids_[4]), std::string::npos) << r.out;
  }
  for (int i = 0; i < 4; ++i) {
    for (auto& id : runningSandboxes(fleet_->agent(i), "after-crash")) {
      fleet_->agent(i).sbx({"kill", id});
    }
  }

  // The same node (same id) comes back as a new life that wins over the old.
  fleet_->agent(4).restart();
  ASSERT_TRUE(fleet_->agent(4).waitReady());
  ASSERT_TRUE(Fleet::waitUntil([] { return converged(all()); }, 20'000)) << log(4);
  for (int i = 0; i < kNodes; ++i) {
    for (auto& m : members(fleet_->agent(i))) {
      if (m.node == ids_[4]) {
        EXPECT_GT(m.generation, oldGeneration) << "seen by " << i;
      }
    }
  }
}

TEST_F(FleetTest, APartitionSplitsTheViewAndHealing) {
  ASSERT_TRUE(Fleet::waitUntil([] { return converged(all()); }, 20'000));
  fleet_->network().partition({{0, 1}, {2, 3, 4}});
  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(Fleet::waitUntil(
      [&] {
        for (int i : {0, 1}) {
          if (aliveCount(fleet_->agent(i)) != 2) return false;
        }
        for (int i : {2, 3, 4}) {
          if (aliveCount(fleet_->agent(i)) != 3) return false;
        }
        return true;
      },
      20'000))
      << log(0);
  printf("partition seen by both sides within %.3f s\n", secondsSince(start));
  // Each side places only on its own side.
  auto r = fleet_->agent(0).sbx({"place", "--template", "python", "--tenant", "split"});
  ASSERT_EQ(r.exitCode, 0) << r.err;
  EXPECT_TRUE(r.out.find(ids_[0]) != std::string::npos || r.out.find(ids_[1]) != std::string::npos)
      << r.out;

  fleet_->network().heal();
  start = std::chrono::steady_clock::now();
  ASSERT_TRUE(Fleet::waitUntil([] { return converged(all()); }, 30'000)) << views() << log(2);
  printf("healed view on all nodes within %.3f s\n", secondsSince(start));
  for (int i = 0; i < kNodes; ++i) {
    for (auto& id : runningSandboxes(fleet_->agent(i), "split")) fleet_->agent(i).sbx({"kill", id});
  }
}

// `sbx node keys` lines: "ID" or "ID primary".
std::vector<std::string> keyIds(FleetAgent& agent, std::string* primary) {
  auto r = agent.sbx({"node", "keys"});
  std::vector<std::string> ids;
  std::istringstream in(r.out);
  std::string line;
  while (std::getline(in, line)) {
    std::string id = line.substr(0, line.find(' '));
    ids.push_back(id);
    if (line.find("primary") != std::string::npos && primary) *primary = id;
  }
  return ids;
}

TEST_F(FleetTest, GossipKeyRotatesNodeByNodeAndASleeperRejoins) {
  ASSERT_TRUE(Fleet::waitUntil([] { return converged(all()); }, 20'000));
  std::string oldId;
  ASSERT_EQ(keyIds(fleet_->agent(0), &oldId).size(), 1u);

  // Bad requests change nothing.
  auto bad = fleet_->agent(0).sbx({"node", "keys", "--add", "zz"});
  EXPECT_EQ(bad.exitCode, 125);
  EXPECT_NE(bad.err.find("invalidArgument"), std::string::npos) << bad.err;
  bad = fleet_->agent(0).sbx({"node", "keys", "--remove", oldId});
  EXPECT_NE(bad.err.find("invalidArgument"), std::string::npos) << bad.err;
  bad = fleet_->agent(0).sbx({"node", "keys", "--use", "0123456789abcdef"});
  EXPECT_NE(bad.err.find("notFound"), std::string::npos) << bad.err;
  EXPECT_EQ(readWholeFile(fleet_->agent(0).gossipKeyFile()), fleet_->gossipKey() + "\n");

  // Node 4 sleeps through the rotation.
  fleet_->agent(4).kill9();
  std::vector<int> awake = {0, 1, 2, 3};
  ASSERT_TRUE(Fleet::waitUntil([&] { return converged(awake); }, 20'000));

  std::string newKey = randomGossipKey();
  for (int i : awake)
    ASSERT_EQ(fleet_->agent(i).sbx({"node", "keys", "--add", newKey}).exitCode, 0);
  std::string primary;
  auto ids = keyIds(fleet_->agent(0), &primary);
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(primary, oldId);
  std::string newId = ids[0] == oldId ? ids[1] : ids[0];
  // Node by node: while some seal with the new key and some with the old,
  // everyone still hears everyone.
  for (int i : awake) {
    ASSERT_EQ(fleet_->agent(i).sbx({"node", "keys", "--use", newId}).exitCode, 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    EXPECT_TRUE(converged(awake)) << "after node " << i << " switched";
  }
  for (int i : awake) {
    ASSERT_EQ(fleet_->agent(i).sbx({"node", "keys", "--remove", oldId}).exitCode, 0);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_TRUE(converged(awake));
  // The change is on disk: a restart keeps the new ring.
  EXPECT_EQ(readWholeFile(fleet_->agent(0).gossipKeyFile()), newKey + "\n");

  // The sleeper wakes with only the retired key: nobody can open its
  // packets, so it stays outside...
  fleet_->agent(4).restart();
  ASSERT_TRUE(fleet_->agent(4).waitReady());
  std::this_thread::sleep_for(std::chrono::seconds(4));
  for (int i : awake) EXPECT_NE(stateOf(fleet_->agent(i), ids_[4]), "alive");
  EXPECT_EQ(aliveCount(fleet_->agent(4)), 1u);
  // ...until the operator gives it the new key; it rejoins on its own.
  ASSERT_EQ(fleet_->agent(4).sbx({"node", "keys", "--add", newKey}).exitCode, 0);
  ASSERT_EQ(fleet_->agent(4).sbx({"node", "keys", "--use", newId}).exitCode, 0);
  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(Fleet::waitUntil([] { return converged(all()); }, 30'000)) << log(4);
  printf("node that missed the rotation rejoined %.3f s after getting the key\n",
         secondsSince(start));
}

}  // namespace
}  // namespace nodeagent::testing
