#include "nodeagent/dns_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <unistd.h>

#include <kj/debug.h>

#include <kj/function.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "loop/errno_exception.h"
#include "util/log.h"

namespace nodeagent {
namespace {

constexpr kj::Duration kTcpIdleTimeout = 10 * kj::SECONDS;

IpAddress addressOf(const sockaddr_storage& sa) {
  if (sa.ss_family == AF_INET) {
    return IpAddress::fromV4(ntohl(reinterpret_cast<const sockaddr_in&>(sa).sin_addr.s_addr));
  }
  return IpAddress::fromV6(reinterpret_cast<const sockaddr_in6&>(sa).sin6_addr.s6_addr);
}

kj::AutoCloseFd bindSocket(const IpAddress& address, uint16_t port, int type) {
  int family = address.isV4() ? AF_INET : AF_INET6;
  int fd = socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) KJ_FAIL_SYSCALL("socket", errno);
  kj::AutoCloseFd owned(fd);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  // The gateway address may be brand new; do not wait for it to be usable.
  setsockopt(fd, IPPROTO_IP, IP_FREEBIND, &one, sizeof(one));
  sockaddr_storage sa{};
  socklen_t length;
  if (address.isV4()) {
    auto& in = reinterpret_cast<sockaddr_in&>(sa);
    in.sin_family = AF_INET;
    in.sin_port = htons(port);
    in.sin_addr.s_addr = htonl(address.v4());
    length = sizeof(in);
  } else {
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    setsockopt(fd, IPPROTO_IPV6, IPV6_FREEBIND, &one, sizeof(one));
    auto& in6 = reinterpret_cast<sockaddr_in6&>(sa);
    in6.sin6_family = AF_INET6;
    in6.sin6_port = htons(port);
    memcpy(in6.sin6_addr.s6_addr, address.bytes().data(), 16);
    length = sizeof(in6);
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), length) != 0) {
    KJ_FAIL_SYSCALL("bind (the agent's DNS server)", errno, address.toString(), port);
  }
  if (type == SOCK_STREAM) {
    KJ_SYSCALL(listen(fd, 128));
  }
  return owned;
}

bool answers(const dns::Answer& a, const dns::Question& q) {
  return a.id == q.id && a.questionType == q.type && dns::sameName(a.questionName, q.name);
}

kj::Array<kj::byte> framed(kj::ArrayPtr<const kj::byte> message) {
  auto out = kj::heapArray<kj::byte>(message.size() + 2);
  out[0] = kj::byte(message.size() >> 8);
  out[1] = kj::byte(message.size());
  memcpy(out.begin() + 2, message.begin(), message.size());
  return out;
}

}  // namespace

kj::Maybe<DnsUpstream> parseDnsUpstream(kj::StringPtr text) {
  std::string s(text.cStr());
  std::string host = s;
  uint16_t port = 53;
  auto parsePort = [](const std::string& p) -> int {
    if (p.empty() || p.size() > 5) return -1;
    int v = 0;
    for (char c : p) {
      if (c < '0' || c > '9') return -1;
      v = v * 10 + (c - '0');
    }
    return v >= 1 && v <= 65535 ? v : -1;
  };
  if (!s.empty() && s[0] == '[') {
    size_t close = s.find(']');
    if (close == std::string::npos) return nullptr;
    host = s.substr(1, close - 1);
    if (close + 1 < s.size()) {
      if (s[close + 1] != ':') return nullptr;
      int p = parsePort(s.substr(close + 2));
      if (p < 0) return nullptr;
      port = uint16_t(p);
    }
  } else if (std::count(s.begin(), s.end(), ':') == 1) {
    size_t colon = s.find(':');
    host = s.substr(0, colon);
    int p = parsePort(s.substr(colon + 1));
    if (p < 0) return nullptr;
    port = uint16_t(p);
  }
  DnsUpstream up;
  KJ_IF_MAYBE (address, IpAddress::parse(host.c_str())) {
    if (address->isV4()) {
      auto& in = reinterpret_cast<sockaddr_in&>(up.address);
      in.sin_family = AF_INET;
      in.sin_port = htons(port);
      in.sin_addr.s_addr = htonl(address->v4());
      up.length = sizeof(in);
    } else {
      auto& in6 = reinterpret_cast<sockaddr_in6&>(up.address);
      in6.sin6_family = AF_INET6;
      in6.sin6_port = htons(port);
      memcpy(in6.sin6_addr.s6_addr, address->bytes().data(), 16);
      up.length = sizeof(in6);
    }
    up.text = s;
    return up;
  }
  return nullptr;
}

std::vector<DnsUpstream> upstreamsFromResolvConf(const char* path) {
  std::vector<DnsUpstream> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string key, value;
    if (words >> key >> value && key == "nameserver") {
      KJ_IF_MAYBE (up, parseDnsUpstream(value.c_str())) {
        out.push_back(kj::mv(*up));
      }
    }
  }
  return out;
}

void DnsServer::ErrorLogger::taskFailed(kj::Exception&& e) {
  log::warn("dns.task_failed", {{"error", e.getDescription().cStr()}});
}

DnsServer::DnsServer(loop::UringEventPort& port, Options options, DnsPolicy& policy)
    : port_(port), options_(kj::mv(options)), policy_(policy), tasks_(errorLogger_) {}

DnsServer::~DnsServer() noexcept(false) {}

void DnsServer::start() {
  for (const IpAddress& address : options_.listen) {
    auto udp = bindSocket(address, options_.port, SOCK_DGRAM);
    auto tcp = bindSocket(address, options_.port, SOCK_STREAM);
    tasks_.add(serveUdp(udp));
    tasks_.add(serveTcpListener(tcp));
    sockets_.add(kj::mv(udp));
    sockets_.add(kj::mv(tcp));
  }
}

kj::Promise<void> DnsServer::serveUdp(int fd) {
  return port_.pollIn(fd).then([this, fd](short) {
    for (;;) {
      auto buffer = kj::heapArray<kj::byte>(dns::kMaxMessageBytes);
      sockaddr_storage from{};
      socklen_t fromLength = sizeof(from);
      ssize_t n = recvfrom(fd, buffer.begin(), buffer.size(), 0, reinterpret_cast<sockaddr*>(&from),
                           &fromLength);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) break;
        KJ_FAIL_SYSCALL("recvfrom (DNS)", errno);
      }
      if (inFlight_ >= kMaxInFlight) continue;  // overloaded: the client retries
      auto query = kj::heapArray<kj::byte>(buffer.begin(), size_t(n));
      handleDatagram(fd, from, fromLength, kj::mv(query));
    }
    return serveUdp(fd);
  });
}

void DnsServer::handleDatagram(int fd, const sockaddr_storage& from, socklen_t fromLength,
                               kj::Array<kj::byte> query) {
  ++inFlight_;
  tasks_.add(answer(addressOf(from), kj::mv(query), false)
                 .then([fd, from, fromLength](kj::Array<kj::byte> reply) {
                   if (reply.size() == 0) return;
                   sendto(fd, reply.begin(), reply.size(), MSG_DONTWAIT,
                          reinterpret_cast<const sockaddr*>(&from), fromLength);
                 })
                 .attach(kj::defer([this]() { --inFlight_; })));
}

kj::Promise<kj::Array<kj::byte>> DnsServer::answer(IpAddress client, kj::Array<kj::byte> query,
                                                   bool tcp) {
  ++stats_.queries;
  dns::Question question;
  KJ_IF_MAYBE (q, dns::parseQuery(query)) {
    question = kj::mv(*q);
  } else {
    return kj::Array<kj::byte>();  // not a query we answer: dropped
  }
  DnsPolicy::Verdict verdict = policy_.judge(client, question.name, question.type);
  if (verdict == DnsPolicy::Verdict::kRefuse || options_.upstreams.empty()) {
    ++stats_.refused;
    return dns::makeErrorReply(query, question, dns::kRcodeRefused);
  }
  ++stats_.forwarded;
  auto forwarded = tcp ? forwardTcp(query, question, 0) : forwardUdp(query, question, 0);
  return forwarded.then([this, client, verdict, question = kj::mv(question), query = kj::mv(query)](
                            kj::Array<kj::byte> reply) mutable -> kj::Array<kj::byte> {
    if (reply.size() == 0) {
      ++stats_.failed;
      return dns::makeErrorReply(query, question, dns::kRcodeServfail);
    }
    if (verdict == DnsPolicy::Verdict::kForwardAndAdmit) {
      KJ_IF_MAYBE (parsed, dns::parseAnswer(reply)) {
        if (!parsed->addresses.empty()) policy_.admit(client, question.name, parsed->addresses);
      }
    }
    return kj::mv(reply);
  });
}

kj::Promise<kj::Array<kj::byte>> DnsServer::forwardUdp(kj::ArrayPtr<const kj::byte> query,
                                                       const dns::Question& question,
                                                       size_t upstream) {
  if (upstream >= options_.upstreams.size()) return kj::Array<kj::byte>();
  const DnsUpstream& up = options_.upstreams[upstream];
  int fd = socket(up.address.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) KJ_FAIL_SYSCALL("socket", errno);
  auto sock = kj::heap<kj::AutoCloseFd>(fd);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&up.address), up.length) != 0 ||
      send(fd, query.begin(), query.size(), MSG_DONTWAIT) < 0) {
    return forwardUdp(query, question, upstream + 1);
  }
  return receiveAnswer(fd, question)
      .exclusiveJoin(port_.timer().afterDelay(options_.upstreamTimeout).then([]() {
        return kj::Array<kj::byte>();
      }))
      .attach(kj::mv(sock))
      .then([this, query, question,
             upstream](kj::Array<kj::byte> reply) -> kj::Promise<kj::Array<kj::byte>> {
        if (reply.size() > 0) return kj::mv(reply);
        return forwardUdp(query, question, upstream + 1);
      });
}

kj::Promise<kj::Array<kj::byte>> DnsServer::receiveAnswer(int fd, dns::Question question) {
  // Datagrams that do not answer this question are ignored.
  return port_.pollIn(fd).then(
      [this, fd, question = kj::mv(question)](short) mutable -> kj::Promise<kj::Array<kj::byte>> {
        auto buffer = kj::heapArray<kj::byte>(dns::kMaxMessageBytes);
        ssize_t n = recv(fd, buffer.begin(), buffer.size(), MSG_DONTWAIT);
        if (n > 0) {
          auto received = buffer.slice(0, size_t(n));
          KJ_IF_MAYBE (a, dns::parseAnswer(received)) {
            if (answers(*a, question)) return kj::heapArray<kj::byte>(buffer.begin(), size_t(n));
          }
        } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
          return kj::Array<kj::byte>();  // e.g. ECONNREFUSED: try the next one
        }
        return receiveAnswer(fd, kj::mv(question));
      });
}

kj::Promise<void> DnsServer::readExactly(int fd, kj::ArrayPtr<kj::byte> buffer) {
  if (buffer.size() == 0) return kj::READY_NOW;
  return port_.recv(fd, buffer).then([this, fd, buffer](size_t n) mutable -> kj::Promise<void> {
    if (n == 0) return KJ_EXCEPTION(DISCONNECTED, "DNS TCP peer closed");
    return readExactly(fd, buffer.slice(n, buffer.size()));
  });
}

kj::Promise<kj::Array<kj::byte>> DnsServer::forwardTcp(kj::ArrayPtr<const kj::byte> query,
                                                       const dns::Question& question,
                                                       size_t upstream) {
  if (upstream >= options_.upstreams.size()) return kj::Array<kj::byte>();
  const DnsUpstream& up = options_.upstreams[upstream];
  int fd = socket(up.address.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) KJ_FAIL_SYSCALL("socket", errno);
  auto sock = kj::heap<kj::AutoCloseFd>(fd);
  auto request = kj::heap(framed(query));
  auto header = kj::heap<kj::FixedArray<kj::byte, 2>>();
  auto exchange =
      port_.connect(fd, reinterpret_cast<const sockaddr*>(&up.address), up.length)
          .then([this, fd, request = request.get()]() { return port_.send(fd, *request); })
          .then([this, fd, header = header.get()](size_t) { return readExactly(fd, *header); })
          .then([this, fd, header = header.get()]() {
            size_t length = size_t((*header)[0]) << 8 | (*header)[1];
            auto body = kj::heapArray<kj::byte>(length);
            auto read = readExactly(fd, body);
            return read.then([body = kj::mv(body)]() mutable { return kj::mv(body); });
          })
          .then([question](kj::Array<kj::byte> reply) -> kj::Array<kj::byte> {
            KJ_IF_MAYBE (a, dns::parseAnswer(reply)) {
              if (answers(*a, question)) return kj::mv(reply);
            }
            return kj::Array<kj::byte>();
          });
  return exchange
      .exclusiveJoin(port_.timer().afterDelay(options_.upstreamTimeout).then([]() {
        return kj::Array<kj::byte>();
      }))
      .attach(kj::mv(sock), kj::mv(request), kj::mv(header))
      .then([](kj::Array<kj::byte> reply) { return kj::mv(reply); },
            [](kj::Exception&&) { return kj::Array<kj::byte>(); })
      .then([this, query, question,
             upstream](kj::Array<kj::byte> reply) -> kj::Promise<kj::Array<kj::byte>> {
        if (reply.size() > 0) return kj::mv(reply);
        return forwardTcp(query, question, upstream + 1);
      });
}

kj::Promise<void> DnsServer::serveTcpListener(int fd) {
  return port_.acceptFd(fd).then([this, fd](kj::AutoCloseFd connection) {
    sockaddr_storage peer{};
    socklen_t length = sizeof(peer);
    if (getpeername(connection, reinterpret_cast<sockaddr*>(&peer), &length) == 0 &&
        inFlight_ < kMaxInFlight) {
      IpAddress client = addressOf(peer);
      tasks_.add(serveTcpConnection(kj::mv(connection), client));
    }
    return serveTcpListener(fd);
  });
}

kj::Promise<void> DnsServer::serveTcpConnection(kj::AutoCloseFd connection, IpAddress client) {
  int fd = connection;
  auto header = kj::heap<kj::FixedArray<kj::byte, 2>>();
  auto* headerPtr = header.get();
  auto one = readExactly(fd, *headerPtr)
                 .then([this, fd, headerPtr, client]() {
                   size_t length = size_t((*headerPtr)[0]) << 8 | (*headerPtr)[1];
                   auto query = kj::heapArray<kj::byte>(length);
                   auto read = readExactly(fd, query);
                   return read.then([this, client, query = kj::mv(query)]() mutable {
                     ++inFlight_;
                     return answer(client, kj::mv(query), true).attach(kj::defer([this]() {
                       --inFlight_;
                     }));
                   });
                 })
                 .then([this, fd](kj::Array<kj::byte> reply) -> kj::Promise<bool> {
                   if (reply.size() == 0) return false;  // malformed: hang up
                   auto out = kj::heap(framed(reply));
                   auto sent = port_.send(fd, *out);
                   return sent.attach(kj::mv(out)).then([](size_t) { return true; });
                 });
  return one.exclusiveJoin(port_.timer().afterDelay(kTcpIdleTimeout).then([]() { return false; }))
      .attach(kj::mv(header))
      .then(
          [this, connection = kj::mv(connection), client](bool more) mutable -> kj::Promise<void> {
            if (!more) return kj::READY_NOW;
            return serveTcpConnection(kj::mv(connection), client);
          },
          [](kj::Exception&&) {});
}

}  // namespace nodeagent
