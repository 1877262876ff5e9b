// Self-test of the fake internet fixture, from the host netns (which has the routes).
#include "support/fake_internet.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "support/privileged.h"

namespace nodeagent::testing {
namespace {

constexpr uint32_t kTtl = 7;

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

std::string linkFor(const FakeInternet& fi, const std::string& address) {
  return contains(address, ":") ? fi.hostLinkAddress6() : fi.hostLinkAddress();
}

class FakeInternetTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (geteuid() != 0) return;
    try {
      fi_ = FakeInternet::start({.tag = "fit", .linkIndex = 7, .dnsTtlSeconds = kTtl});
    } catch (const std::exception& e) {
      startError_ = e.what();
    }
  }
  static void TearDownTestSuite() { fi_.reset(); }

  void SetUp() override {
    NODEAGENT_REQUIRE_ROOT();
    ASSERT_TRUE(fi_) << startError_;
  }

  static std::unique_ptr<FakeInternet> fi_;
  static std::string startError_;
};

std::unique_ptr<FakeInternet> FakeInternetTest::fi_;
std::string FakeInternetTest::startError_;

TEST_F(FakeInternetTest, NamesAndRoutes) {
  EXPECT_EQ(fi_->netnsName(), "na-fit-inet");
  EXPECT_EQ(fi_->hostVeth(), "nafith");
  EXPECT_EQ(fi_->hostLinkAddress(), "198.18.7.1");
  EXPECT_EQ(fi_->hostLinkAddress6(), "2001:db8:ffff:7::1");
  EXPECT_EQ(fi_->dnsV4(), "198.51.100.53");
  EXPECT_EQ(fi_->dnsV6(), "2001:db8:1::53");
  for (const std::string& address : FakeInternet::serviceAddresses()) {
    auto r = FakeInternet::run({"ip", "route", "get", address});
    EXPECT_EQ(r.exitCode, 0) << r.output;
    EXPECT_TRUE(contains(r.output, "dev nafith")) << address << ": " << r.output;
  }
}

TEST_F(FakeInternetTest, HttpOnEveryServiceAddress) {
  for (const std::string& address : FakeInternet::serviceAddresses()) {
    auto root = httpGet(address, FakeInternet::kHttpPort, "/");
    EXPECT_EQ(root.status, 200) << address << ": " << root.error;
    EXPECT_EQ(root.body, "fake-internet " + address + "\n");
    auto whoami = httpGet(address, FakeInternet::kHttpPort, "/whoami");
    EXPECT_EQ(whoami.status, 200) << address << ": " << whoami.error;
    EXPECT_EQ(whoami.body, linkFor(*fi_, address) + "\n") << address;
  }
  EXPECT_EQ(httpGet(FakeInternet::kHostA4, 80, "/nope").status, 404);
}

TEST_F(FakeInternetTest, UdpEchoV4AndV6) {
  for (const char* address : {FakeInternet::kHostA4, FakeInternet::kHostB6,
                              FakeInternet::kMetadata4, FakeInternet::kPrivate4}) {
    std::string error;
    EXPECT_EQ(udpExchange(address, FakeInternet::kEchoPort, "ping", &error),
              linkFor(*fi_, address) + " ping")
        << address << ": " << error;
  }
}

TEST_F(FakeInternetTest, DnsARecordWithConfiguredTtl) {
  for (const std::string& server : {fi_->dnsV4(), fi_->dnsV6()}) {
    auto r = dnsQuery(server, "allowed.test", 1);
    ASSERT_EQ(r.rcode, 0) << server << ": " << r.error;
    ASSERT_EQ(r.answers.size(), 1u);
    EXPECT_EQ(r.answers[0].name, "allowed.test");
    EXPECT_EQ(r.answers[0].type, 1);
    EXPECT_EQ(r.answers[0].value, FakeInternet::kHostA4);
    EXPECT_EQ(r.answers[0].ttl, kTtl);
  }
  auto aaaa = dnsQuery(fi_->dnsV4(), "allowed.test", 28);
  ASSERT_EQ(aaaa.rcode, 0) << aaaa.error;
  ASSERT_EQ(aaaa.answers.size(), 1u);
  EXPECT_EQ(aaaa.answers[0].value, FakeInternet::kHostA6);

  for (const auto& [name, address] : {std::pair{"www.example.test", FakeInternet::kHostB4},
                                      std::pair{"api.example.test", FakeInternet::kHostB4},
                                      std::pair{"other.test", FakeInternet::kHostB4},
                                      std::pair{"direct.test", FakeInternet::kHostC4},
                                      std::pair{"metadata.test", FakeInternet::kMetadata4},
                                      std::pair{"private.test", FakeInternet::kPrivate4}}) {
    auto r = dnsQuery(fi_->dnsV4(), name, 1);
    ASSERT_EQ(r.rcode, 0) << name << ": " << r.error;
    ASSERT_EQ(r.answers.size(), 1u) << name;
    EXPECT_EQ(r.answers[0].value, address) << name;
  }
}

TEST_F(FakeInternetTest, DnsCnameAndNxdomain) {
  auto r = dnsQuery(fi_->dnsV4(), "alias.test", 1);
  ASSERT_EQ(r.rcode, 0) << r.error;
  ASSERT_EQ(r.answers.size(), 2u);
  EXPECT_EQ(r.answers[0].type, 5);
  EXPECT_EQ(r.answers[0].name, "alias.test");
  EXPECT_EQ(r.answers[0].value, "allowed.test");
  EXPECT_EQ(r.answers[1].type, 1);
  EXPECT_EQ(r.answers[1].value, FakeInternet::kHostA4);

  EXPECT_EQ(dnsQuery(fi_->dnsV4(), "nonexistent.test", 1).rcode, 3);
}

TEST_F(FakeInternetTest, DotStandInAccepts) {
  // No TLS behind it: the connection is accepted, then closed without a response.
  auto r = httpGet(FakeInternet::kDns4, FakeInternet::kDotPort, "/");
  EXPECT_EQ(r.status, 0);
  EXPECT_FALSE(contains(r.error, "connect:")) << r.error;
  // Whereas a port nobody listens on refuses.
  EXPECT_TRUE(contains(httpGet(FakeInternet::kDns4, 854, "/").error, "refused"));
}

TEST_F(FakeInternetTest, IperfOnDemand) {
  fi_->startIperf();
  fi_->startIperf();  // idempotent
  auto r = FakeInternet::run({"iperf3", "-c", FakeInternet::kHostA4, "-t", "1", "-i", "0"});
  EXPECT_EQ(r.exitCode, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "receiver")) << r.output;
}

TEST_F(FakeInternetTest, ExecInNetns) {
  auto r = fi_->execInNetns({"ip", "-o", "addr", "show", "dev", "lo"});
  EXPECT_EQ(r.exitCode, 0) << r.output;
  for (const std::string& address : FakeInternet::serviceAddresses()) {
    EXPECT_TRUE(contains(r.output, " " + address + "/")) << address << " in " << r.output;
  }
}

// Leftovers of a crashed run are cleared at start; teardown leaves nothing.
TEST(FakeInternetLifecycle, RemovesLeftoversAndCleansUp) {
  NODEAGENT_REQUIRE_ROOT();
  // The strays below are orphaned on purpose; adopt them so they can be reaped here.
  ASSERT_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  EXPECT_THROW(FakeInternet::start({.tag = "Bad-Tag"}), std::invalid_argument);

  const std::string ns = "na-fitl-inet";
  // The strays' command line is this run's own: the check below reads every
  // process on the host, and a plain "sleep 300" may well be somebody else's.
  const std::string strayCommand = "sleep " + std::to_string(3000000 + getpid());
  ASSERT_EQ(FakeInternet::run({"ip", "netns", "add", ns}).exitCode, 0);
  ASSERT_EQ(FakeInternet::run({"ip", "link", "add", "nafitlh", "type", "veth", "peer", "name",
                               "stale", "netns", ns})
                .exitCode,
            0);
  // A stray process in the stale netns, detached from us (as if its parent had crashed).
  ASSERT_EQ(
      FakeInternet::run(
          {"sh", "-c", "ip netns exec " + ns + " setsid " + strayCommand + " >/dev/null 2>&1 &"})
          .exitCode,
      0);
  // The shell returns before the backgrounded stray has entered the netns:
  // wait for it, or the clean-up below may look before it is there.
  for (int i = 0; i < 200 && FakeInternet::run({"ip", "netns", "pids", ns}).output.empty(); ++i) {
    usleep(10000);
  }
  ASSERT_FALSE(FakeInternet::run({"ip", "netns", "pids", ns}).output.empty());

  auto fi = FakeInternet::start({.tag = "fitl", .linkIndex = 8});
  EXPECT_EQ(httpGet(FakeInternet::kHostA6, 80, "/whoami").body, "2001:db8:ffff:8::1\n");
  fi->startIperf();
  auto stray = fi->execInNetns({"sh", "-c", "setsid " + strayCommand + " >/dev/null 2>&1 &"});
  ASSERT_EQ(stray.exitCode, 0) << stray.output;
  auto pids = FakeInternet::run({"ip", "netns", "pids", ns});
  EXPECT_FALSE(pids.output.empty());
  fi.reset();

  EXPECT_FALSE(contains(FakeInternet::run({"ip", "netns", "list"}).output, ns));
  EXPECT_NE(FakeInternet::run({"ip", "link", "show", "nafitlh"}).exitCode, 0);
  std::string routes = FakeInternet::run({"ip", "-4", "route"}).output +
                       FakeInternet::run({"ip", "-6", "route"}).output;
  for (const std::string& prefix : FakeInternet::routedPrefixes()) {
    EXPECT_FALSE(contains(routes, prefix.substr(0, prefix.find('/')))) << routes;
  }
  EXPECT_FALSE(contains(routes, "198.18.")) << routes;
  EXPECT_FALSE(contains(routes, "2001:db8:")) << routes;
  // Every process that ran inside (servers, iperf3, strays) is gone.
  std::string ps = FakeInternet::run({"ps", "-eo", "args"}).output;
  EXPECT_FALSE(contains(ps, "dnsmasq --keep-in-foreground")) << ps;
  EXPECT_FALSE(contains(ps, "iperf3 -s -B 198.51.100.10")) << ps;
  EXPECT_FALSE(contains(ps, strayCommand)) << ps;
  while (waitpid(-1, nullptr, WNOHANG) > 0) {
  }
}

}  // namespace
}  // namespace nodeagent::testing
