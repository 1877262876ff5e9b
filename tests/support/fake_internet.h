// A "fake internet" for network egress-policy tests, built only from network
// namespaces and addresses this fixture creates. Needs root.
//
//   host netns (the test, the agent, its sandboxes)
//   ---------------------------------------------
//    routes: 198.51.100.0/24  203.0.113.0/24  169.254.169.254/32  10.123.0.0/24
//            2001:db8:1::/48  2001:db8:2::/48        via the inet link address
//    na<tag>h  198.18.<n>.1/30   2001:db8:ffff:<n>::1/64
//        |
//        | veth
//        |
//    na<tag>i  198.18.<n>.2/30   2001:db8:ffff:<n>::2/64   default route -> host
//   netns "na-<tag>-inet"
//    lo: every service address below (/32, /128; no dummy module needed)
//      198.51.100.10  2001:db8:1::10   public host A  (allowed.test)
//      203.0.113.10   2001:db8:2::10   public host B  (www/api.example.test, other.test)
//      203.0.113.11                    public host C  (direct.test)
//      169.254.169.254                 stand-in cloud metadata server (metadata.test)
//      10.123.0.10                     stand-in RFC1918 service (private.test)
//      198.51.100.53  2001:db8:1::53   upstream DNS resolver (dnsmasq, port 53)
//    servers (child processes, killed at teardown):
//      TCP 80 on every service address:
//        GET /whoami -> "<peer address>\n", GET / -> "fake-internet <server address>\n"
//      UDP 7 on every service address: echo, reply = "<peer address> <payload>"
//      TCP 853 on 198.51.100.53: accepts and closes (a DNS-over-TLS stand-in)
//      UDP+TCP 53 on the resolver addresses: dnsmasq, answers for the names above,
//        alias.test CNAME allowed.test, NXDOMAIN for other *.test, never forwards
//      TCP 5201 on 198.51.100.10: iperf3 server, only after startIperf()
//
// Traffic from the host netns itself reaches the servers directly (source = host
// link address). Traffic from sandboxes is forwarded by the host, which needs
// net.ipv4.ip_forward / net.ipv6.conf.all.forwarding = 1 and NAT (or routes back):
// the fixture does NOT set host sysctls, the agent under test does. The inet
// netns answers on its own local addresses and needs no forwarding.
//
// Names are derived from Options::tag, so leftovers of a crashed run with the
// same tag are removed at start(). The service prefixes are host-global, so only
// one FakeInternet can be up at a time on a host (tests using it: RUN_SERIAL).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <sys/types.h>

namespace nodeagent::testing {

class FakeInternet {
 public:
  struct Options {
    // [a-z0-9], 1..10 characters: interface names are "na<tag>h"/"na<tag>i".
    std::string tag = "fi0";
    // 0..255: selects the link subnets 198.18.<n>.0/30 and 2001:db8:ffff:<n>::/64.
    int linkIndex = 0;
    // TTL of every answer of the upstream resolver.
    uint32_t dnsTtlSeconds = 5;
  };

  // Service addresses (see the sketch above).
  static constexpr const char* kHostA4 = "198.51.100.10";
  static constexpr const char* kHostA6 = "2001:db8:1::10";
  static constexpr const char* kHostB4 = "203.0.113.10";
  static constexpr const char* kHostB6 = "2001:db8:2::10";
  static constexpr const char* kHostC4 = "203.0.113.11";
  static constexpr const char* kMetadata4 = "169.254.169.254";
  static constexpr const char* kPrivate4 = "10.123.0.10";
  static constexpr const char* kDns4 = "198.51.100.53";
  static constexpr const char* kDns6 = "2001:db8:1::53";
  static constexpr uint16_t kHttpPort = 80;
  static constexpr uint16_t kEchoPort = 7;
  static constexpr uint16_t kDnsPort = 53;
  static constexpr uint16_t kDotPort = 853;
  static constexpr uint16_t kIperfPort = 5201;

  // Creates everything and returns once every server accepts. Throws
  // std::runtime_error (with server logs) on failure, after tearing down.
  static std::unique_ptr<FakeInternet> start(Options options);
  // Kills the servers, removes routes, veth and netns.
  ~FakeInternet();
  FakeInternet(const FakeInternet&) = delete;
  FakeInternet& operator=(const FakeInternet&) = delete;

  // Every address that carries the HTTP and UDP echo servers.
  static std::vector<std::string> serviceAddresses();
  // The prefixes routed from the host into the inet netns.
  static std::vector<std::string> routedPrefixes();

  std::string dnsV4() const { return kDns4; }
  std::string dnsV6() const { return kDns6; }
  uint32_t dnsTtlSeconds() const { return options_.dnsTtlSeconds; }
  // Host end of the link; what /whoami reports for traffic from (or NATed by) the host.
  std::string hostLinkAddress() const;
  std::string hostLinkAddress6() const;
  std::string inetLinkAddress() const;
  std::string inetLinkAddress6() const;
  std::string netnsName() const;
  std::string hostVeth() const;

  // Starts the iperf3 server on kHostA4:kIperfPort (idempotent), returns when listening.
  void startIperf();

  struct CommandResult {
    int exitCode = -1;   // -1 if killed by a signal or not run
    std::string output;  // stdout and stderr together
  };
  // Runs argv (searched in PATH) inside the inet netns and waits for it.
  CommandResult execInNetns(const std::vector<std::string>& argv) const;
  // Runs argv in the caller's netns and waits for it.
  static CommandResult run(const std::vector<std::string>& argv);

  // Stale objects named after `tag`: processes in its netns, netns, veth (and with
  // it the routes through it), server log directories /tmp/na-<tag>-inet-*.
  static void removeLeftovers(const std::string& tag);

 private:
  explicit FakeInternet(Options options);
  void setUp();
  void tearDown();
  pid_t spawn(const std::string& name, const std::vector<std::string>& argv);
  void waitListening(pid_t pid, const std::string& name, const char* proto, uint16_t port,
                     int count);
  std::string logsTail() const;

  Options options_;
  std::string logDir_;
  std::vector<std::pair<std::string, pid_t>> children_;
  std::vector<std::vector<std::string>> routes_;  // "ip" argv tails that were added
  bool linkCreated_ = false;
  bool netnsCreated_ = false;
  bool iperfStarted_ = false;
};

// Small clients for use from the test's own netns (they never resolve names).

struct HttpResponse {
  int status = 0;  // 0: no HTTP response, see error
  std::string body;
  std::string error;
};
HttpResponse httpGet(const std::string& address, uint16_t port, const std::string& path,
                     std::chrono::milliseconds timeout = std::chrono::seconds(3));

// Sends one datagram and returns the reply, or "" with `error` set.
std::string udpExchange(const std::string& address, uint16_t port, const std::string& payload,
                        std::string* error = nullptr,
                        std::chrono::milliseconds timeout = std::chrono::seconds(3));

struct DnsRecord {
  std::string name;
  uint16_t type = 0;  // 1 A, 5 CNAME, 28 AAAA
  uint32_t ttl = 0;
  std::string value;  // address text for A/AAAA, target name for CNAME, hex otherwise
};
struct DnsResult {
  int rcode = -1;  // -1: no answer, see error
  std::vector<DnsRecord> answers;
  std::string error;
};
// One recursive-desired query over UDP.
DnsResult dnsQuery(const std::string& server, const std::string& name, uint16_t type,
                   uint16_t port = 53, std::chrono::milliseconds timeout = std::chrono::seconds(3));

}  // namespace nodeagent::testing
