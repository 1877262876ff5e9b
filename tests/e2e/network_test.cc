// Sandbox networking end to end, with real traffic: the agent with its bridge,
// NAT, eBPF egress programs and DNS server, sandboxes running a probe script
// (data/net_probe.py), and a "fake internet" of network namespaces
// (tests/support/fake_internet.h) holding the servers. Nothing outside what
// the test creates is ever addressed.
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include "e2e/agent_harness.h"
#include "support/fake_internet.h"

namespace nodeagent::testing {
namespace {

using namespace std::chrono_literals;

constexpr char kBridge[] = "nae2e0";
constexpr char kPool4[] = "10.252.0.0/24";
constexpr char kPool6[] = "fd6e:6252::/64";
constexpr char kGateway4[] = "10.252.0.1";
constexpr char kHostOwnAddress[] = "192.0.2.2";  // this machine's uplink (see fake_internet.h)

std::string probeSource() {
  std::ifstream in(std::string(NODEAGENT_SOURCE_DIR) + "/tests/e2e/data/net_probe.py");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Removes what the agent leaves on the host on purpose (so that policy and
// routes outlive it): the bridge and the NAT table.
struct HostNetworkCleanup {
  ~HostNetworkCleanup() {
    FakeInternet::run({"ip", "link", "del", kBridge});
    FakeInternet::run({"nft", "delete", "table", "inet", std::string("nodeagent_") + kBridge});
  }
};

class NetworkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    NODEAGENT_REQUIRE_ROOT();
    FakeInternet::run({"ip", "link", "del", kBridge});  // a crashed run's
    FakeInternet::Options options;
    options.tag = "nt0";
    options.linkIndex = 7;
    internet_ = FakeInternet::start(options);
    std::string network = std::string(",\"network\": {\"bridge\": \"") + kBridge +
                          "\", \"ipv4Pool\": \"" + kPool4 + "\", \"ipv6Pool\": \"" + kPool6 +
                          "\", \"dnsUpstreams\": [\"" + FakeInternet::kDns4 +
                          "\"], \"dnsMinTtlSeconds\": 1}" + extraConfig();
    agent_ = std::make_unique<AgentProcess>(std::vector<std::string>{}, true, network);
    ASSERT_TRUE(agent_->waitReady()) << agent_->log();
    probe_ = probeSource();
    ASSERT_FALSE(probe_.empty());
  }
  virtual std::string extraConfig() { return ""; }

  void TearDown() override {
    if (HasFailure() && agent_ != nullptr) {
      std::string log = agent_->log();
      fprintf(stderr, "agent log (tail):\n%s\n",
              log.substr(log.size() > 6000 ? log.size() - 6000 : 0).c_str());
    }
    agent_.reset();
    internet_.reset();
  }

  // A sandbox with the probe script at /probe.py.
  std::string sandbox(std::vector<std::string> createArgs) {
    std::string id = agent_->create(createArgs);
    if (id.empty()) return id;
    std::string local = agent_->dir() + "/probe.py";
    std::ofstream(local) << probe_;
    auto cp = agent_->sbx({"cp", local, id + ":/probe.py"});
    EXPECT_EQ(cp.exitCode, 0) << cp.err;
    return id;
  }

  std::string probe(const std::string& id, std::vector<std::string> args) {
    std::vector<std::string> argv = {"exec", id, "--", "python3", "/probe.py"};
    for (auto& a : args) argv.push_back(a);
    auto r = agent_->sbx(argv);
    std::string out = r.out;
    while (!out.empty() && out.back() == '\n') out.pop_back();
    if (r.exitCode != 0) out += " [exit " + std::to_string(r.exitCode) + ": " + r.err + "]";
    return out;
  }

  std::string events(const std::string& id) { return agent_->sbx({"events", id}).out; }

  HostNetworkCleanup cleanup_;  // last to go
  std::unique_ptr<FakeInternet> internet_;
  std::unique_ptr<AgentProcess> agent_;
  std::string probe_;
};

TEST_F(NetworkTest, OffReachesOnlyLoopback) {
  std::string id = sandbox({});
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(probe(id, {"tcp", FakeInternet::kHostA4, "80"}), "err EPERM");
  EXPECT_EQ(probe(id, {"tcp", FakeInternet::kHostA6, "80"}), "err EPERM");
  EXPECT_EQ(probe(id, {"raw"}), "err EPERM");
  // Loopback works: nothing listens, so the kernel refuses, not the policy.
  EXPECT_EQ(probe(id, {"tcp", "127.0.0.1", "9"}), "err ECONNREFUSED");
  auto net = agent_->sbx({"net", id});
  EXPECT_NE(net.out.find("mode:           off"), std::string::npos) << net.out;
}

TEST_F(NetworkTest, OpenReachesTheInternetThroughNatButNeverTheAlwaysDeniedSet) {
  std::string id = sandbox({"--network", "open"});
  ASSERT_FALSE(id.empty());
  std::string other = sandbox({"--network", "open"});
  ASSERT_FALSE(other.empty());
  // Out through the host's NAT: the server sees the host's link address.
  EXPECT_EQ(probe(id, {"tcp", FakeInternet::kHostA4, "80"}), "ok " + internet_->hostLinkAddress());
  EXPECT_EQ(probe(id, {"tcp", FakeInternet::kHostB6, "80"}), "ok " + internet_->hostLinkAddress6());
  EXPECT_EQ(probe(id, {"udp", FakeInternet::kHostB4, "7", "hello"}),
            "ok " + internet_->hostLinkAddress() + " hello");
  // Names through the agent's resolver (open: any name).
  EXPECT_EQ(probe(id, {"resolve", "other.test"}), "ok 203.0.113.10");
  EXPECT_EQ(probe(id, {"tcp", "allowed.test", "80"}).substr(0, 3), "ok ");
  EXPECT_EQ(probe(id, {"ping", FakeInternet::kHostA4}), "ok");

  // Always denied, in every form.
  EXPECT_EQ(probe(id, {"tcp", FakeInternet::kMetadata4, "80"}), "err EPERM");
  EXPECT_EQ(probe(id, {"tcp", FakeInternet::kPrivate4, "80"}), "err EPERM");
  EXPECT_EQ(probe(id, {"tcp", "::ffff:10.123.0.10", "80"}), "err EPERM");
  EXPECT_EQ(probe(id, {"tcp", "::ffff:169.254.169.254", "80"}), "err EPERM");
  EXPECT_EQ(probe(id, {"tcp", "metadata.test", "80"}), "err EPERM");
  EXPECT_EQ(probe(id, {"udp", FakeInternet::kPrivate4, "7", "x"}), "err EPERM");
  EXPECT_EQ(probe(id, {"ping", FakeInternet::kMetadata4}), "err EPERM");  // the packet backstop
  EXPECT_EQ(probe(id, {"tcp", kHostOwnAddress, "22"}), "err EPERM");
  EXPECT_EQ(probe(id, {"tcp", kGateway4, "22"}), "err EPERM");
  // Another sandbox.
  auto otherNet = agent_->sbx({"net", other, "--json"});
  size_t at = otherNet.out.find("10.252.0.");
  ASSERT_NE(at, std::string::npos) << otherNet.out;
  std::string otherAddress = otherNet.out.substr(at, otherNet.out.find('"', at) - at);
  EXPECT_EQ(probe(id, {"tcp", otherAddress, "80"}), "err EPERM");
  EXPECT_EQ(probe(id, {"raw"}), "err EPERM");
  // An address the host gains later is its own at once (netlink, not a poll).
  FakeInternet::run({"ip", "addr", "add", "203.0.113.99/32", "dev", "lo"});
  std::this_thread::sleep_for(300ms);
  std::string toNewHostAddress = probe(id, {"tcp", "203.0.113.99", "80"});
  FakeInternet::run({"ip", "addr", "del", "203.0.113.99/32", "dev", "lo"});
  EXPECT_EQ(toNewHostAddress, "err EPERM");

  auto log = events(id);
  EXPECT_NE(log.find("egress-denied"), std::string::npos) << log;
  EXPECT_NE(log.find("dst=169.254.169.254:80 proto=tcp rule=always-denied hook=connect"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("proto=icmp rule=always-denied hook=packet"), std::string::npos) << log;
  auto status = agent_->sbx({"net", id});
  EXPECT_NE(status.out.find("mode:           open"), std::string::npos) << status.out;
}

TEST_F(NetworkTest, RestrictedAllowsItsListAndNamesOnlyOnceResolved) {
  std::string id =
      sandbox({"--network", "restricted", "--allow", "allowed.test", "--allow", "*.example.test",
               "--allow", "198.51.100.0/24:7", "--allow", "169.254.169.254"});
  ASSERT_FALSE(id.empty());
  // A hard-coded address of an allowed name, never resolved: refused.
  EXPECT_EQ(probe(id, {"tcp", FakeInternet::kHostB4, "80"}), "err EPERM");
  // Resolved through the agent, it is let through.
  EXPECT_EQ(probe(id, {"resolve", "www.example.test"}), "ok 203.0.113.10");
  EXPECT_EQ(probe(id, {"tcp", FakeInternet::kHostB4, "80"}), "ok " + internet_->hostLinkAddress());
  EXPECT_EQ(probe(id, {"tcp", "allowed.test", "80"}).substr(0, 3), "ok ");
  // Not on the list: REFUSED, which resolvers report as EAI_AGAIN (-3).
  EXPECT_EQ(probe(id, {"tcp", "alias.test", "80"}), "resolve-failed -3");
  // CIDR:PORT: the port only.
  EXPECT_EQ(probe(id, {"udp", "198.51.100.53", "7", "x"}).substr(0, 3), "ok ");
  EXPECT_EQ(probe(id, {"tcp", "198.51.100.53", "80"}), "err EPERM");
  // Names off the list: REFUSED, and their address stays unreachable.
  EXPECT_EQ(probe(id, {"resolve", "direct.test"}), "resolve-failed -3");
  EXPECT_EQ(probe(id, {"tcp", FakeInternet::kHostC4, "80"}), "err EPERM");
  EXPECT_EQ(probe(id, {"ping", FakeInternet::kHostC4}), "err EPERM");
  // Other resolvers and DNS over TLS, even where the address is allowed.
  EXPECT_EQ(probe(id, {"dns", FakeInternet::kDns4, "allowed.test"}), "err EPERM");
  EXPECT_EQ(probe(id, {"dns", FakeInternet::kDns6, "allowed.test"}), "err EPERM");
  EXPECT_EQ(probe(id, {"tcp", FakeInternet::kDns4, "853"}), "err EPERM");
  // The tenant's list cannot open the always-denied set.
  EXPECT_EQ(probe(id, {"tcp", FakeInternet::kMetadata4, "80"}), "err EPERM");
  EXPECT_EQ(probe(id, {"raw"}), "err EPERM");

  // Addresses allowed by name lapse with their TTL (5 s upstream, floor 1 s).
  std::this_thread::sleep_for(7s);
  EXPECT_EQ(probe(id, {"tcp", FakeInternet::kHostB4, "80"}), "err EPERM");

  auto log = events(id);
  EXPECT_NE(log.find("dns-refused"), std::string::npos) << log;
  EXPECT_NE(log.find("name=direct.test"), std::string::npos) << log;
  EXPECT_NE(log.find("dst=203.0.113.11:80 proto=tcp rule=not-allowlisted hook=connect"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("dst=198.51.100.53:53 proto=udp rule=other-resolver hook=sendmsg"),
            std::string::npos)
      << log;
}

TEST_F(NetworkTest, AllowlistEntriesAreCheckedAtCreate) {
  for (const char* bad : {"10.0.0.1/8", "300.1.2.3", "*.", "-bad.test", "1.2.3.4:0",
                          "[2001:db8::1]", "a..b", "198.51.100.0/24:99999"}) {
    auto r =
        agent_->sbx({"create", "--template", "python", "--network", "restricted", "--allow", bad});
    EXPECT_EQ(r.exitCode, 125) << bad;
    EXPECT_NE(r.err.find("sbx: invalidArgument: "), std::string::npos) << bad << ": " << r.err;
  }
  auto r = agent_->sbx({"create", "--template", "python", "--allow", "allowed.test"});
  EXPECT_NE(r.err.find("need network mode 'restricted'"), std::string::npos) << r.err;
}

TEST_F(NetworkTest, PolicyChangesLive) {
  std::string id = sandbox({});
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(probe(id, {"tcp", FakeInternet::kHostA4, "80"}), "err EPERM");
  auto r = agent_->sbx({"net", id, "--mode", "open"});
  ASSERT_EQ(r.exitCode, 0) << r.err;
  EXPECT_EQ(probe(id, {"tcp", FakeInternet::kHostA4, "80"}), "ok " + internet_->hostLinkAddress());
  r = agent_->sbx({"net", id, "--mode", "restricted", "--allow", "203.0.113.0/24"});
  ASSERT_EQ(r.exitCode, 0) << r.err;
  EXPECT_EQ(probe(id, {"tcp", FakeInternet::kHostA4, "80"}), "err EPERM");
  EXPECT_EQ(probe(id, {"tcp", FakeInternet::kHostB4, "80"}), "ok " + internet_->hostLinkAddress());
  r = agent_->sbx({"net", id, "--mode", "off"});
  ASSERT_EQ(r.exitCode, 0) << r.err;
  EXPECT_EQ(probe(id, {"tcp", FakeInternet::kHostB4, "80"}), "err EPERM");
  EXPECT_NE(events(id).find("set-network"), std::string::npos);
}

TEST_F(NetworkTest, TheEgressByteCapCutsTheSandboxOff) {
  std::string id = sandbox({"--network", "open", "--egress-cap", "200K"});
  ASSERT_FALSE(id.empty());
  std::string result = probe(id, {"flood", FakeInternet::kHostA4, "7", "1000"});
  // 1000-byte payloads (1028 bytes on the wire): about 199 fit in 200 KiB.
  int sent = std::stoi(result.substr(5));
  EXPECT_GT(sent, 150) << result;
  EXPECT_LT(sent, 205) << result;
  EXPECT_NE(result.find("EPERM"), std::string::npos) << result;
  EXPECT_EQ(probe(id, {"tcp", FakeInternet::kHostA4, "80"}), "err EPERM");
  auto status = agent_->sbx({"net", id});
  EXPECT_NE(status.out.find("cut off"), std::string::npos) << status.out;
  auto usage = agent_->sbx({"usage", id, "--json"});
  EXPECT_NE(usage.out.find("\"egressBytes\""), std::string::npos) << usage.out;
  std::this_thread::sleep_for(1500ms);  // the audit trail is written behind
  auto log = events(id);
  EXPECT_NE(log.find("egress-cap"), std::string::npos) << log;
  EXPECT_NE(log.find("rule=egress-byte-cap"), std::string::npos) << log;
}

TEST_F(NetworkTest, TcpSettlesAtTheBandwidthCap) {
  internet_->startIperf();
  std::string id = sandbox({"--network", "open", "--egress-mbps", "40"});
  ASSERT_FALSE(id.empty());
  auto r = agent_->sbx(
      {"exec", id, "--", "iperf3", "-c", FakeInternet::kHostA4, "-t", "4", "-O", "1", "-J"});
  ASSERT_EQ(r.exitCode, 0) << r.out << r.err;
  // "sum_received": {... "bits_per_second": N ...}
  size_t at = r.out.find("\"sum_received\"");
  ASSERT_NE(at, std::string::npos) << r.out;
  at = r.out.find("\"bits_per_second\":", at);
  double bps = std::stod(r.out.substr(at + 18));
  EXPECT_GT(bps, 40e6 * 0.9) << bps;
  EXPECT_LT(bps, 40e6 * 1.1) << bps;
}

TEST_F(NetworkTest, PolicyIsEnforcedWhileTheAgentIsDownAndPickedUpAfter) {
  std::string id = sandbox({"--network", "restricted", "--allow", "198.51.100.10:80"});
  ASSERT_FALSE(id.empty());
  auto r = agent_->sbx({"exec", id, "-d", "--", "python3", "/probe.py", "watch",
                        FakeInternet::kHostA4, "80", "/tmp/allowed.log"});
  ASSERT_EQ(r.exitCode, 0) << r.err;
  r = agent_->sbx({"exec", id, "-d", "--", "python3", "/probe.py", "watch", FakeInternet::kHostB4,
                   "80", "/tmp/denied.log"});
  ASSERT_EQ(r.exitCode, 0) << r.err;
  std::this_thread::sleep_for(1s);
  agent_->killHard();
  double downAt = double(std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count()) /
                  1000;
  std::this_thread::sleep_for(2500ms);
  double upAt = downAt + 2.5;
  agent_->startAgain();
  ASSERT_TRUE(agent_->waitReady()) << agent_->log();

  auto linesWhileDown = [&](const std::string& file) {
    std::string text = agent_->sbx({"exec", id, "--", "cat", file}).out;
    std::istringstream in(text);
    std::string line;
    std::vector<std::string> results;
    while (std::getline(in, line)) {
      double t = std::stod(line.substr(0, line.find(' ')));
      if (t > downAt + 0.2 && t < upAt - 0.2) results.push_back(line.substr(line.find(' ') + 1));
    }
    return results;
  };
  auto allowed = linesWhileDown("/tmp/allowed.log");
  auto denied = linesWhileDown("/tmp/denied.log");
  ASSERT_GE(allowed.size(), 3u);
  ASSERT_GE(denied.size(), 3u);
  for (auto& line : allowed) EXPECT_EQ(line, "ok " + internet_->hostLinkAddress());
  for (auto& line : denied) EXPECT_EQ(line, "err EPERM");

  // The restarted agent serves the same policy, counters and DNS.
  auto status = agent_->sbx({"net", id});
  EXPECT_NE(status.out.find("mode:           restricted"), std::string::npos) << status.out;
  EXPECT_NE(status.out.find("198.51.100.10:80"), std::string::npos) << status.out;
  EXPECT_EQ(probe(id, {"tcp", FakeInternet::kHostB4, "80"}), "err EPERM");
  EXPECT_EQ(probe(id, {"tcp", FakeInternet::kHostA4, "80"}), "ok " + internet_->hostLinkAddress());
  // Refusals made while no agent ran reach the audit trail once it is back.
  std::this_thread::sleep_for(1500ms);
  auto log = events(id);
  EXPECT_NE(log.find("dst=203.0.113.10:80"), std::string::npos) << log;
}

// A sandbox claimed from a warm pool (built with no network, owned by no
// tenant) gets the tenant's network at the claim.
class WarmPoolNetworkTest : public NetworkTest {
 protected:
  std::string extraConfig() override {
    return ", \"templates\": [{\"name\": \"python\", \"warmPool\": 1}]";
  }
};

TEST_F(WarmPoolNetworkTest, AClaimedSandboxGetsItsNetwork) {
  // Wait for the pool to fill.
  for (int i = 0; i < 100; ++i) {
    auto info = agent_->sbx({"node"});
    if (info.out.find("python 1/1 idle") != std::string::npos) break;
    std::this_thread::sleep_for(100ms);
  }
  std::string id = sandbox({"--network", "open"});
  ASSERT_FALSE(id.empty());
  auto log = events(id);
  EXPECT_NE(log.find("warm=1"), std::string::npos) << log;
  EXPECT_EQ(probe(id, {"tcp", FakeInternet::kHostA4, "80"}), "ok " + internet_->hostLinkAddress());
  EXPECT_EQ(probe(id, {"tcp", FakeInternet::kMetadata4, "80"}), "err EPERM");
  std::string restricted = sandbox({"--network", "restricted", "--allow", "allowed.test"});
  ASSERT_FALSE(restricted.empty());
  EXPECT_EQ(probe(restricted, {"tcp", "allowed.test", "80"}).substr(0, 3), "ok ");
  EXPECT_EQ(probe(restricted, {"tcp", FakeInternet::kHostB4, "80"}), "err EPERM");
}

}  // namespace
}  // namespace nodeagent::testing
