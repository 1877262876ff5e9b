#include "nodeagent/fleet/udp_transport.h"

#include <arpa/inet.h>
#include <sodium.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <kj/debug.h>

#include "util/log.h"

namespace nodeagent::fleet {
namespace {

constexpr size_t kMaxDatagramBytes = 65536;

}  // namespace

kj::Maybe<sockaddr_storage> parseHostPort(kj::StringPtr text, socklen_t* len) {
  kj::String host;
  kj::StringPtr portText;
  if (text.startsWith("[")) {
    KJ_IF_MAYBE (close, text.findFirst(']')) {
      if (*close + 2 > text.size() || text[*close + 1] != ':') return nullptr;
      host = kj::heapString(text.slice(1, *close));
      portText = text.slice(*close + 2);
    } else {
      return nullptr;
    }
  } else {
    KJ_IF_MAYBE (colon, text.findLast(':')) {
      host = kj::heapString(text.slice(0, *colon));
      // An IPv6 address needs its brackets, or its last group reads as the port.
      if (host.findFirst(':') != nullptr) return nullptr;
      portText = text.slice(*colon + 1);
    } else {
      return nullptr;
    }
  }
  if (portText.size() == 0 || portText.size() > 5) return nullptr;
  uint32_t port = 0;
  for (char c : portText) {
    if (c < '0' || c > '9') return nullptr;
    port = port * 10 + uint32_t(c - '0');
  }
  if (port == 0 || port > 65535) return nullptr;
  sockaddr_storage out{};
  auto* v4 = reinterpret_cast<sockaddr_in*>(&out);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&out);
  if (inet_pton(AF_INET, host.cStr(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(uint16_t(port));
    *len = sizeof(sockaddr_in);
  } else if (inet_pton(AF_INET6, host.cStr(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(uint16_t(port));
    *len = sizeof(sockaddr_in6);
  } else {
    return nullptr;
  }
  return out;
}

UdpTransport::UdpTransport(loop::UringEventPort& port, kj::StringPtr bindAddress,
                           const GossipKeys& keys, BulkSender bulk)
    : port_(port),
      keys_(keys),
      bulk_(kj::mv(bulk)),
      buffer_(kj::heapArray<kj::byte>(kMaxDatagramBytes)),
      wakes_(errorLogger_) {
  socklen_t len;
  auto parsed = parseHostPort(bindAddress, &len);
  KJ_IF_MAYBE (addr, parsed) {
    int fd;
    KJ_SYSCALL(fd = socket(addr->ss_family, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    fd_ = kj::AutoCloseFd(fd);
    // Bursts of gossip (a joiner's view, a crash's suspicions) must not be
    // dropped by a small default buffer while the loop is busy.
    int bytes = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
    KJ_SYSCALL(bind(fd, reinterpret_cast<sockaddr*>(addr), len), "cluster.bind", bindAddress);
  } else {
    KJ_FAIL_REQUIRE("cluster.bind must be IP:PORT", bindAddress);
  }
}

UdpTransport::~UdpTransport() noexcept(false) {}

void UdpTransport::start(cluster::Node& node) {
  node_ = node;
  receiving_ = receiveLoop().eagerlyEvaluate([](kj::Exception&& e) {
    log::error("fleet.udp_receive_failed", {{"error", e.getDescription().cStr()}});
  });
}

kj::Promise<void> UdpTransport::receiveLoop() {
  return port_.recv(fd_, buffer_)
      .then(
          [this](size_t n) {
            receiveSealed(buffer_.slice(0, n));
            return receiveLoop();
          },
          [this](kj::Exception&& e) {
            // ICMP errors from a dead peer surface as ECONNREFUSED on the next
            // receive: nothing to do but keep listening.
            log::debug("fleet.udp_receive_error", {{"error", e.getDescription().cStr()}});
            return receiveLoop();
          });
}

void UdpTransport::receiveSealed(kj::ArrayPtr<const kj::byte> sealed) {
  ++received_;
  KJ_IF_MAYBE (plain, keys_.keyring().open(sealed)) {
    KJ_IF_MAYBE (node, node_) {
      node->receive(*plain);
    }
  } else {
    ++rejected_;
  }
}

int64_t UdpTransport::nowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

void UdpTransport::sendSealed(const sockaddr_storage& to, socklen_t len,
                              kj::ArrayPtr<const kj::byte> packet) {
  auto sealed = keys_.keyring().seal(packet);
  // Best effort, as the protocol expects of a datagram: a full socket buffer
  // or an unreachable peer loses the packet.
  (void)sendto(fd_, sealed.begin(), sealed.size(), MSG_DONTWAIT,
               reinterpret_cast<const sockaddr*>(&to), len);
}

void UdpTransport::send(cluster::NodeId to, kj::ArrayPtr<const kj::byte> packet) {
  auto it = book_.find(to);
  if (it == book_.end()) return;
  sendSealed(it->second.sockaddr, it->second.len, packet);
}

void UdpTransport::sendBulk(cluster::NodeId to, kj::ArrayPtr<const kj::byte> packet) {
  auto it = book_.find(to);
  if (it == book_.end()) return;
  bulk_(it->second.address, keys_.keyring().seal(packet));
}

void UdpTransport::sendToAddress(kj::StringPtr address, kj::ArrayPtr<const kj::byte> packet) {
  socklen_t len;
  auto parsed = parseHostPort(address, &len);
  KJ_IF_MAYBE (addr, parsed) {
    sendSealed(*addr, len, packet);
  }
}

void UdpTransport::wakeAt(int64_t atNs) {
  int64_t delay = atNs - nowNs();
  if (delay < 0) delay = 0;
  // Replacing the promise cancels the previous alarm. The wake itself runs
  // as a separate task, so the node may re-arm (replace alarm_) from it.
  alarm_ = port_.timer()
               .afterDelay(delay * kj::NANOSECONDS)
               .then([this]() {
                 wakes_.add(kj::evalLater([this]() {
                   KJ_IF_MAYBE (node, node_) {
                     node->wake();
                   }
                 }));
               })
               .eagerlyEvaluate(nullptr);
}

void UdpTransport::ErrorLogger::taskFailed(kj::Exception&& e) {
  log::error("fleet.wake_failed", {{"error", e.getDescription().cStr()}});
}

uint64_t UdpTransport::random() {
  uint64_t value;
  randombytes_buf(&value, sizeof(value));
  return value;
}

void UdpTransport::learnAddress(cluster::NodeId node, kj::StringPtr address) {
  auto it = book_.find(node);
  if (it != book_.end() && it->second.address == address.cStr()) return;
  Peer peer;
  auto parsed = parseHostPort(address, &peer.len);
  KJ_IF_MAYBE (addr, parsed) {
    peer.sockaddr = *addr;
    peer.address = address.cStr();
    book_[node] = peer;
  }
}

kj::String UdpTransport::addressOf(cluster::NodeId node) {
  auto it = book_.find(node);
  return it == book_.end() ? kj::str() : kj::str(it->second.address);
}

}  // namespace nodeagent::fleet
