#include "nodeagent/cpu_credit.h"

#include <gtest/gtest.h>

namespace nodeagent {
namespace {

constexpr uint64_t kSecond = 1'000'000'000;

// The code runtime's shape: 1 CPU burst, 0.25 sustained, 10 s of saved burst.
CpuCredit codeRuntime(CpuCredit::Start start = CpuCredit::Start::kFull) {
  return CpuCredit(1000, 250, 10, start);
}

TEST(CpuCredit, AHogBurstsUntilItsCreditIsSpentThenGetsTheSustainedShare) {
  auto credit = codeRuntime();
  ASSERT_TRUE(credit.applies());
  EXPECT_EQ(credit.quotaMillis(), 1000u);
  EXPECT_EQ(credit.capacityNs(), int64_t(7.5 * kSecond));  // 0.75 CPU over 10 s
  // A full CPU for 9 s spends 0.75 s of credit a second: 6.75 s of 7.5.
  for (int i = 0; i < 9; ++i) credit.account(kSecond, kSecond);
  EXPECT_EQ(credit.quotaMillis(), 1000u);
  credit.account(kSecond, kSecond);
  EXPECT_EQ(credit.quotaMillis(), 250u);
  EXPECT_TRUE(credit.atSustained());
  // At its sustained share it neither saves nor spends: it stays there.
  for (int i = 0; i < 100; ++i) credit.account(kSecond / 4, kSecond);
  EXPECT_EQ(credit.quotaMillis(), 250u);
}

TEST(CpuCredit, IdleTimeSavesItBackToTheBurstAndNoFurtherThanTheBucket) {
  auto credit = codeRuntime();
  for (int i = 0; i < 10; ++i) credit.account(kSecond, kSecond);
  ASSERT_TRUE(credit.atSustained());
  // A tenth of the bucket (0.75 s) at 0.25 a second takes 3 s of idling.
  credit.account(0, 2 * kSecond);
  EXPECT_TRUE(credit.atSustained());
  credit.account(0, kSecond);
  EXPECT_FALSE(credit.atSustained());
  EXPECT_EQ(credit.quotaMillis(), 1000u);
  credit.account(0, 3600 * kSecond);
  EXPECT_EQ(credit.creditNs(), credit.capacityNs());
}

TEST(CpuCredit, AnOvershootBetweenChecksIsRepaidButNoMoreThanABucket) {
  auto credit = codeRuntime();
  credit.account(30 * kSecond, kSecond);  // far more than the bucket, in one check
  EXPECT_EQ(credit.creditNs(), -credit.capacityNs());
  EXPECT_TRUE(credit.atSustained());
}

TEST(CpuCredit, ChecksComeWhenTheQuotaCouldChangeAndNoSooner) {
  auto credit = codeRuntime();
  // Full: 7.5 s of credit spent at 0.75 a second at most lasts 10 s.
  EXPECT_EQ(credit.nextCheckNs(), int64_t(10 * kSecond));
  for (int i = 0; i < 10; ++i) credit.account(kSecond, kSecond);
  ASSERT_TRUE(credit.atSustained());
  // Owing 0 and needing 0.75 s at 0.25 a second: 3 s at the soonest.
  EXPECT_NEAR(double(credit.nextCheckNs()), 3.0 * kSecond, 0.01 * kSecond);
  CpuCredit almostSpent(1000, 250, 10, CpuCredit::Start::kFull);
  almostSpent.account(uint64_t(7.5 * kSecond) + kSecond / 4 - 1000, kSecond);
  EXPECT_EQ(almostSpent.nextCheckNs(), CpuCredit::kMinCheckNs);
}

TEST(CpuCredit, AnAdoptedSandboxStartsWithJustEnoughToBurst) {
  auto credit = codeRuntime(CpuCredit::Start::kRestoreLevel);
  EXPECT_FALSE(credit.atSustained());
  EXPECT_EQ(credit.creditNs(), credit.capacityNs() / 10);
  credit.account(kSecond, kSecond);  // a hog spends 0.75 s of its 0.75 s
  EXPECT_TRUE(credit.atSustained());
}

TEST(CpuCredit, NothingToDoWithoutADifferenceAndNoBurstWithoutABucket) {
  CpuCredit flat(500, 500, 10, CpuCredit::Start::kFull);
  EXPECT_FALSE(flat.applies());
  flat.account(100 * kSecond, kSecond);
  EXPECT_EQ(flat.quotaMillis(), 500u);
  CpuCredit unlimited(0, 0, 10, CpuCredit::Start::kFull);
  EXPECT_FALSE(unlimited.applies());
  CpuCredit noBucket(1000, 250, 0, CpuCredit::Start::kFull);
  EXPECT_EQ(noBucket.quotaMillis(), 250u);
  EXPECT_FALSE(noBucket.changes());  // nothing to check, ever
  EXPECT_EQ(noBucket.nextCheckNs(), CpuCredit::kMaxCheckNs);
  EXPECT_TRUE(codeRuntime().changes());
  noBucket.account(0, 3600 * kSecond);
  EXPECT_EQ(noBucket.quotaMillis(), 250u);
}

}  // namespace
}  // namespace nodeagent
