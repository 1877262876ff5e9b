// The resolver every networked sandbox is given (its resolv.conf names the
// gateway addresses). It answers only what the sandbox's policy allows:
// other names get REFUSED; allowed ones are forwarded to the upstream
// resolvers, and the addresses in the answer are admitted to the sandbox's
// allow map (DnsPolicy::admit) before the answer is released, so the
// connect() that follows is already allowed.
//
// UDP and TCP (RFC 7766 length framing) on port 53 of each listen address.
// Each forwarded UDP query uses a fresh socket (a random source port) and
// the answer must match the query's id and question.
#pragma once

#include <sys/socket.h>

#include <kj/async.h>
#include <kj/io.h>
#include <kj/vector.h>

#include <string>
#include <vector>

#include "loop/uring_event_port.h"
#include "nodeagent/dns_message.h"
#include "util/ip_prefix.h"

namespace nodeagent {

class DnsPolicy {
 public:
  enum class Verdict {
    kRefuse,           // REFUSED, nothing forwarded
    kForward,          // answer as upstream does
    kForwardAndAdmit,  // and admit the answer's addresses first
  };
  virtual ~DnsPolicy() noexcept(false) = default;
  // `name` is as asked (any case, no final dot). Unknown clients: kRefuse.
  virtual Verdict judge(const IpAddress& client, const std::string& name, uint16_t type) = 0;
  virtual void admit(const IpAddress& client, const std::string& name,
                     const std::vector<dns::AnswerAddress>& addresses) = 0;
};

struct DnsUpstream {
  sockaddr_storage address{};
  socklen_t length = 0;
  std::string text;
};

// "ADDR", "ADDR:PORT" or "[V6]:PORT" (port 53 by default); null if malformed.
kj::Maybe<DnsUpstream> parseDnsUpstream(kj::StringPtr text);
// The nameservers of a resolv.conf file.
std::vector<DnsUpstream> upstreamsFromResolvConf(const char* path = "/etc/resolv.conf");

class DnsServer {
 public:
  struct Options {
    std::vector<IpAddress> listen;  // port 53 of each, UDP and TCP
    std::vector<DnsUpstream> upstreams;
    kj::Duration upstreamTimeout = 2 * kj::SECONDS;
    uint16_t port = 53;
  };
  struct Stats {
    uint64_t queries = 0;
    uint64_t refused = 0;
    uint64_t forwarded = 0;
    uint64_t failed = 0;  // SERVFAIL: no upstream answered well
  };

  DnsServer(loop::UringEventPort& port, Options options, DnsPolicy& policy);
  ~DnsServer() noexcept(false);
  KJ_DISALLOW_COPY(DnsServer);

  // Binds every listen address and starts serving; throws if one cannot be bound.
  void start();
  const Stats& stats() const { return stats_; }

 private:
  static constexpr size_t kMaxInFlight = 1024;

  kj::Promise<void> serveUdp(int fd);
  kj::Promise<void> serveTcpListener(int fd);
  kj::Promise<void> serveTcpConnection(kj::AutoCloseFd connection, IpAddress client);
  void handleDatagram(int fd, const sockaddr_storage& from, socklen_t fromLength,
                      kj::Array<kj::byte> query);
  // The reply to `query` from `client`: a refusal, upstream's answer, or SERVFAIL.
  kj::Promise<kj::Array<kj::byte>> answer(IpAddress client, kj::Array<kj::byte> query, bool tcp);
  kj::Promise<kj::Array<kj::byte>> forwardUdp(kj::ArrayPtr<const kj::byte> query,
                                              const dns::Question& question, size_t upstream);
  kj::Promise<kj::Array<kj::byte>> forwardTcp(kj::ArrayPtr<const kj::byte> query,
                                              const dns::Question& question, size_t upstream);
  kj::Promise<kj::Array<kj::byte>> receiveAnswer(int fd, dns::Question question);
  kj::Promise<void> readExactly(int fd, kj::ArrayPtr<kj::byte> buffer);

  loop::UringEventPort& port_;
  Options options_;
  DnsPolicy& policy_;
  kj::Vector<kj::AutoCloseFd> sockets_;
  size_t inFlight_ = 0;
  Stats stats_;
  struct ErrorLogger : public kj::TaskSet::ErrorHandler {
    void taskFailed(kj::Exception&& e) override;
  } errorLogger_;
  kj::TaskSet tasks_;
};

}  // namespace nodeagent
