#include <gtest/gtest.h>

#include "cluster/sim/scenario.h"

namespace nodeagent::cluster::sim {
namespace {

TEST(ClusterSim, SameSeedSameResult) {
  ScenarioOptions o;
  o.nodes = 100;
  o.fpDurationNs = 30'000'000'000;
  o.lossyChangeEveryNs = 15'000'000'000;
  o.capacityChanges = 2;
  auto a = runScenario(o);
  auto b = runScenario(o);
  EXPECT_EQ(a.json, b.json);
  o.seed = 2;
  EXPECT_NE(runScenario(o).json, a.json);
}

TEST(ClusterSim, GoalsAtSmallScale) {
  // The goals, at 200 nodes and three simulated minutes of loss
  // and stalls (the full runs are cluster-sim --nodes 1000/10000).
  ScenarioOptions o;
  o.nodes = 200;
  o.fpDurationNs = 180'000'000'000;
  auto r = runScenario(o);
  SCOPED_TRACE(r.json.cStr());
  EXPECT_GT(r.convergenceP99Ms, 0);
  EXPECT_LT(r.convergenceP99Ms, 1500);
  EXPECT_GT(r.detectFirstMs, 0);
  EXPECT_LT(r.detectAllP99Ms, 5000);
  EXPECT_GT(r.rejoinAllMs, 0);
  EXPECT_EQ(r.falsePositives, 0u);
  EXPECT_LT(r.bytesPerNodePerS, 10 * 1024);
  EXPECT_GE(r.placementSuccess, 0.99);
  EXPECT_EQ(r.overcommit, 0u);
}

}  // namespace
}  // namespace nodeagent::cluster::sim
