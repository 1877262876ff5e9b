#include "cluster/suspicion.h"

#include <gtest/gtest.h>

namespace nodeagent::cluster {
namespace {

constexpr int64_t kMs = 1'000'000;

TEST(ClusterSuspicion, StartsAtMaxAndShrinksWithIndependentConfirmations) {
  Suspicion s(/*from=*/1, /*k=*/3, 2000 * kMs, 6000 * kMs, /*start=*/1000 * kMs);
  EXPECT_EQ(s.deadlineNs(), 7000 * kMs);
  EXPECT_FALSE(s.confirm(1));  // the originator is not a confirmation
  EXPECT_TRUE(s.confirm(2));
  int64_t one = s.deadlineNs();
  EXPECT_LT(one, 7000 * kMs);
  EXPECT_FALSE(s.confirm(2));  // nor is the same member twice
  EXPECT_EQ(s.deadlineNs(), one);
  EXPECT_TRUE(s.confirm(3));
  EXPECT_LT(s.deadlineNs(), one);
  EXPECT_TRUE(s.confirm(4));
  EXPECT_EQ(s.deadlineNs(), 3000 * kMs);  // k confirmations: the floor
  EXPECT_FALSE(s.confirm(5));
  EXPECT_EQ(s.deadlineNs(), 3000 * kMs);
}

TEST(ClusterSuspicion, LogarithmicDecay) {
  // timeout(c) = max - (max - min) * log(c + 1) / log(k + 1)
  Suspicion s(1, 3, 1000 * kMs, 5000 * kMs, 0);
  s.confirm(2);
  EXPECT_NEAR(double(s.deadlineNs()), 5000e6 - 4000e6 * 0.5, 1e3);  // log 2 / log 4
}

TEST(ClusterSuspicion, NoConfirmersMeansTheFloor) {
  Suspicion s(1, 0, 1000 * kMs, 5000 * kMs, 0);
  EXPECT_EQ(s.deadlineNs(), 1000 * kMs);
}

}  // namespace
}  // namespace nodeagent::cluster
