#include "nodeagent/sbx/args.h"

#include <signal.h>

#include <gtest/gtest.h>
#include <kj/debug.h>
#include <kj/exception.h>

namespace nodeagent::sbx {
namespace {

TEST(SbxArgs, FlagsPositionalsAndCommand) {
  const kj::StringPtr valueFlags[] = {"--memory", "--env"};
  const kj::StringPtr words[] = {"ID", "--memory", "512M", "--env=A=1", "--env", "B=2",
                                 "-i", "--",       "sh",   "-c",        "--x"};
  Args args(words, valueFlags);
  ASSERT_EQ(args.positional().size(), 1u);
  EXPECT_EQ(args.positional()[0], "ID");
  EXPECT_EQ(KJ_ASSERT_NONNULL(args.value("--memory")), "512M");
  auto env = args.values("--env");
  ASSERT_EQ(env.size(), 2u);
  EXPECT_EQ(env[0], "A=1");
  EXPECT_EQ(env[1], "B=2");
  EXPECT_TRUE(args.has("-i"));
  ASSERT_EQ(args.command().size(), 3u);
  EXPECT_EQ(args.command()[2], "--x");
}

TEST(SbxArgs, MissingValueIsAUsageError) {
  const kj::StringPtr valueFlags[] = {"--memory"};
  const kj::StringPtr words[] = {"--memory"};
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { Args args(words, valueFlags); })) {
    EXPECT_TRUE(e->getDescription().startsWith("usage: "));
  } else {
    ADD_FAILURE();
  }
}

TEST(SbxArgs, Sizes) {
  EXPECT_EQ(parseBytes("512M"), 512ull << 20);
  EXPECT_EQ(parseBytes("1G"), 1ull << 30);
  EXPECT_EQ(parseBytes("1.5G"), 3ull << 29);
  EXPECT_EQ(parseBytes("4096"), 4096u);
  EXPECT_EQ(parseBytes("100KiB"), 102400u);
  for (const char* bad : {"", "lots", "-1", "5X", "1e30G"}) {
    EXPECT_TRUE(kj::runCatchingExceptions([&]() { parseBytes(bad); }) != nullptr) << bad;
  }
}

TEST(SbxArgs, Cpus) {
  EXPECT_EQ(parseCpuMillis("1"), 1000u);
  EXPECT_EQ(parseCpuMillis("0.25"), 250u);
  EXPECT_EQ(parseCpuMillis("500m"), 500u);
  for (const char* bad : {"0", "-1", "abc", "1x"}) {
    EXPECT_TRUE(kj::runCatchingExceptions([&]() { parseCpuMillis(bad); }) != nullptr) << bad;
  }
  EXPECT_EQ(parseUint("300", "t"), 300u);
  EXPECT_TRUE(kj::runCatchingExceptions([&]() { parseUint("-3", "t"); }) != nullptr);
  EXPECT_TRUE(kj::runCatchingExceptions([&]() { parseUint("99999999999", "t"); }) != nullptr);
}

TEST(SbxArgs, Signals) {
  EXPECT_EQ(parseSignal("15"), SIGTERM);
  EXPECT_EQ(parseSignal("TERM"), SIGTERM);
  EXPECT_EQ(parseSignal("SIGKILL"), SIGKILL);
  EXPECT_EQ(parseSignal("USR1"), SIGUSR1);
  EXPECT_EQ(parseSignal("SIG15"), SIGTERM);
  for (const char* bad : {"", "0", "65", "-9", "TERMINATE", "sigterm", "SIG", "9x"}) {
    EXPECT_THROW(parseSignal(bad), kj::Exception) << bad;
  }
}

TEST(SbxArgs, UsageLedgerCursor) {
  const kj::StringPtr valueFlags[] = {"--after", "--limit", "--public-key"};
  const kj::StringPtr words[] = {"--ledger", "--after", "18446744073709551614", "--limit=5",
                                 "--json"};
  Args args(words, valueFlags);
  EXPECT_TRUE(args.has("--ledger"));
  EXPECT_TRUE(args.has("--json"));
  EXPECT_EQ(args.positional().size(), 0u);
  EXPECT_EQ(parseUint64(KJ_ASSERT_NONNULL(args.value("--after")), "--after"),
            18446744073709551614ull);
  EXPECT_EQ(parseUint64(KJ_ASSERT_NONNULL(args.value("--limit")), "--limit"), 5u);
  for (const char* bad : {"", "-1", "12x", "18446744073709551616"}) {
    EXPECT_TRUE(kj::runCatchingExceptions([&]() { parseUint64(bad, "--after"); }) != nullptr)
        << bad;
  }
}

}  // namespace
}  // namespace nodeagent::sbx
