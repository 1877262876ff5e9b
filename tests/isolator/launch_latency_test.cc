// Privileged: cold launch latency, launch -> ready -> spawn `true` -> exited, as a test
// that prints percentiles (it asserts only a generous bound).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "support/privileged.h"
#include "tests/isolator/sandbox_fixture.h"

namespace nodeagent::isolator::testing {
namespace {

TEST(LaunchLatency, LaunchReadySpawnTrueExited) {
  NODEAGENT_REQUIRE_ROOT();
  skeletonDir();
  constexpr int kRuns = 50;
  std::vector<double> total, launchOnly;
  for (int i = 0; i < kRuns; ++i) {
    auto start = std::chrono::steady_clock::now();
    TestSandbox sandbox;  // creates the cgroup, launches, waits for ready
    auto ready = std::chrono::steady_clock::now();
    RunResult r = sandbox.client().run({"/usr/bin/true"});
    auto done = std::chrono::steady_clock::now();
    ASSERT_TRUE(WIFEXITED(r.waitStatus) && WEXITSTATUS(r.waitStatus) == 0);
    launchOnly.push_back(std::chrono::duration<double, std::milli>(ready - start).count());
    total.push_back(std::chrono::duration<double, std::milli>(done - start).count());
  }
  auto pct = [](std::vector<double> v, double p) {
    std::sort(v.begin(), v.end());
    return v[size_t(p * double(v.size() - 1))];
  };
  printf("cold launch (cgroup create + launch + ready): p50 %.2f ms  p90 %.2f ms\n",
         pct(launchOnly, 0.5), pct(launchOnly, 0.9));
  printf("cold launch + spawn true + exited:           p50 %.2f ms  p90 %.2f ms  max %.2f ms\n",
         pct(total, 0.5), pct(total, 0.9), pct(total, 1.0));
  EXPECT_LT(pct(total, 0.5), 500.0);
}

}  // namespace
}  // namespace nodeagent::isolator::testing
