#include "support/fleet_network.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace nodeagent::testing {
namespace {

constexpr const char* kNamePrefix = "naflt-";
constexpr const char* kPartitionTable = "naflt_partition";

struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

// A socket created inside another network namespace. A socket keeps the
// namespace it was made in, so a short-lived thread enters the namespace
// (setns affects only the calling thread) and hands the socket back.
int socketInNetns(const std::string& netnsPath, int type) {
  int fd = -1;
  int error = 0;
  std::thread worker([&] {
    int ns = open(netnsPath.c_str(), O_RDONLY | O_CLOEXEC);
    if (ns < 0 || setns(ns, CLONE_NEWNET) != 0) {
      error = errno;
    } else {
      fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
      if (fd < 0) error = errno;
    }
    if (ns >= 0) close(ns);
  });
  worker.join();
  if (fd < 0) {
    throw std::runtime_error("FleetNetwork: no socket in " + netnsPath + ": " + strerror(error));
  }
  return fd;
}

sockaddr_in inetAddress(const std::string& address, uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  if (inet_pton(AF_INET, address.c_str(), &a.sin_addr) != 1) {
    throw std::runtime_error("FleetNetwork: bad address " + address);
  }
  return a;
}

// Kills every process in netns `name`, waits for them, deletes the netns.
void removeNetns(const std::string& name) {
  auto pids = runProcess({"ip", "netns", "pids", name});
  std::istringstream in(pids.out);
  std::vector<pid_t> victims;
  for (pid_t pid; in >> pid;) {
    if (pid == getpid()) continue;
    kill(pid, SIGKILL);
    victims.push_back(pid);
  }
  for (pid_t pid : victims) {
    for (int i = 0; i < 100 && processAlive(pid); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  runProcess({"ip", "netns", "del", name});
}

}  // namespace

FleetNetwork::FleetNetwork(int nodes) : nodes_(nodes) {
  if (nodes < 1 || nodes > kMaxNodes) {
    throw std::runtime_error("FleetNetwork: nodes must be 1.." + std::to_string(kMaxNodes));
  }
  static std::atomic<int> counter{0};
  prefix_ = kNamePrefix + std::to_string(getpid()) + "-" + std::to_string(counter++);
  created_.assign(size_t(nodes), false);
  partitioned_.assign(size_t(nodes), false);
  removeLeftovers();
  try {
    setUp();
  } catch (...) {
    tearDown();
    throw;
  }
}

FleetNetwork::~FleetNetwork() {
  tearDown();
}

void FleetNetwork::checkIndex(int i) const {
  if (i < 0 || i >= nodes_) {
    throw std::out_of_range("FleetNetwork: node " + std::to_string(i) + " of " +
                            std::to_string(nodes_));
  }
}

std::string FleetNetwork::address(int i) const {
  checkIndex(i);
  return "10.231.0." + std::to_string(10 + i);
}
std::string FleetNetwork::netnsName(int i) const {
  checkIndex(i);
  return prefix_ + "-" + std::to_string(i);
}
std::string FleetNetwork::netnsPath(int i) const {
  return "/run/netns/" + netnsName(i);
}
std::string FleetNetwork::hubNetnsName() const {
  return prefix_ + "-hub";
}
std::string FleetNetwork::hubNetnsPath() const {
  return "/run/netns/" + hubNetnsName();
}

void FleetNetwork::setUp() {
  const std::string hub = hubNetnsName();
  runOrThrow({"ip", "netns", "add", hub});
  hubCreated_ = true;
  runOrThrow({"ip", "-n", hub, "-batch", "-"},
             "link set lo up\n"
             "link add br0 type bridge\n"
             "addr add " +
                 hubAddress() +
                 "/24 dev br0\n"
                 "link set br0 up\n");
  std::string ports;
  for (int i = 0; i < nodes_; ++i) {
    runOrThrow({"ip", "netns", "add", netnsName(i)});
    created_[size_t(i)] = true;
    const std::string v = "v" + std::to_string(i);
    ports += "link add " + v + " type veth peer name eth0 netns " + netnsName(i) + "\n";
    ports += "link set " + v + " master br0\n";
    ports += "link set " + v + " up\n";
  }
  runOrThrow({"ip", "-n", hub, "-batch", "-"}, ports);
  for (int i = 0; i < nodes_; ++i) {
    runOrThrow({"ip", "-n", netnsName(i), "-batch", "-"},
               "link set lo up\n"
               "addr add " +
                   address(i) +
                   "/24 dev eth0\n"
                   "link set eth0 up\n");
  }
}

void FleetNetwork::tearDown() {
  for (int i = 0; i < nodes_; ++i) {
    if (created_[size_t(i)]) removeNetns(netnsName(i));
    created_[size_t(i)] = false;
  }
  if (hubCreated_) removeNetns(hubNetnsName());  // with it the bridge and the v<i> ends
  hubCreated_ = false;
}

void FleetNetwork::removeLeftovers() {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/run/netns", ec)) {
    const std::string name = entry.path().filename().string();
    if (!leftoverOfDeadProcess(name, kNamePrefix)) continue;
    removeNetns(name);
  }
}

void FleetNetwork::partition(const std::vector<std::vector<int>>& groups) {
  std::vector<int> groupOf(size_t(nodes_), -1);
  for (size_t g = 0; g < groups.size(); ++g) {
    for (int i : groups[g]) {
      checkIndex(i);
      if (groupOf[size_t(i)] != -1) {
        throw std::runtime_error("FleetNetwork::partition: node " + std::to_string(i) +
                                 " is in two groups");
      }
      groupOf[size_t(i)] = int(g);
    }
  }
  for (int i = 0; i < nodes_; ++i) {
    std::string others;
    for (int j = 0; j < nodes_; ++j) {
      if (groupOf[size_t(i)] != -1 && groupOf[size_t(j)] != -1 &&
          groupOf[size_t(j)] != groupOf[size_t(i)]) {
        others += (others.empty() ? "" : ", ") + address(j);
      }
    }
    // Declaring the table first makes the delete valid whether or not it exists;
    // the whole script is one transaction.
    std::string script = std::string("table inet ") + kPartitionTable + " {}\n" +
                         "delete table inet " + kPartitionTable + "\n";
    if (!others.empty()) {
      script += std::string("table inet ") + kPartitionTable +
                " {\n"
                "  chain input { type filter hook input priority filter; policy accept;\n"
                "    ip saddr { " +
                others +
                " } drop\n  }\n"
                "  chain output { type filter hook output priority filter; policy accept;\n"
                "    ip daddr { " +
                others + " } drop\n  }\n}\n";
    }
    runOrThrow({"nft", "-f", "-"}, script, netnsPath(i));
    partitioned_[size_t(i)] = !others.empty();
  }
}

void FleetNetwork::isolate(int i) {
  checkIndex(i);
  std::vector<int> rest;
  for (int j = 0; j < nodes_; ++j) {
    if (j != i) rest.push_back(j);
  }
  partition({{i}, rest});
}

void FleetNetwork::heal() {
  for (int i = 0; i < nodes_; ++i) {
    if (!partitioned_[size_t(i)]) continue;
    runOrThrow({"nft", "delete", "table", "inet", kPartitionTable}, "", netnsPath(i));
    partitioned_[size_t(i)] = false;
  }
}

CommandOutput FleetNetwork::exec(int i, const std::vector<std::string>& argv,
                                 const std::string& input, int timeoutMs) const {
  return runProcess(argv, input, netnsPath(i), timeoutMs);
}

CommandOutput FleetNetwork::execInHub(const std::vector<std::string>& argv,
                                      const std::string& input, int timeoutMs) const {
  return runProcess(argv, input, hubNetnsPath(), timeoutMs);
}

bool FleetNetwork::reachable(int from, int to, int timeoutMs) const {
  const std::string fromNs = from == -1 ? hubNetnsPath() : netnsPath(from);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeoutMs);
  auto left = [&] {
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    return int(std::max<int64_t>(0, ms.count()));
  };

  Fd listener(socketInNetns(netnsPath(to), SOCK_STREAM | SOCK_NONBLOCK));
  sockaddr_in bound = inetAddress(address(to), 0);
  socklen_t len = sizeof bound;
  if (bind(listener.fd, reinterpret_cast<sockaddr*>(&bound), len) != 0 ||
      listen(listener.fd, 4) != 0 ||
      getsockname(listener.fd, reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
    throw std::runtime_error("FleetNetwork: cannot listen on " + address(to) + ": " +
                             strerror(errno));
  }

  Fd client(socketInNetns(fromNs, SOCK_STREAM | SOCK_NONBLOCK));
  if (connect(client.fd, reinterpret_cast<sockaddr*>(&bound), sizeof bound) != 0 &&
      errno != EINPROGRESS) {
    return false;  // e.g. ENETUNREACH
  }
  pollfd p{client.fd, POLLOUT, 0};
  if (poll(&p, 1, left()) != 1) return false;
  int error = 0;
  socklen_t errorLen = sizeof error;
  if (getsockopt(client.fd, SOL_SOCKET, SO_ERROR, &error, &errorLen) != 0 || error != 0) {
    return false;
  }
  // The connection must have arrived at node `to`'s listener, not elsewhere.
  pollfd q{listener.fd, POLLIN, 0};
  if (poll(&q, 1, std::max(left(), 100)) != 1) return false;
  Fd accepted(accept4(listener.fd, nullptr, nullptr, SOCK_CLOEXEC));
  return accepted.fd >= 0;
}

}  // namespace nodeagent::testing
