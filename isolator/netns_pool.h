// Network namespaces made ahead of launches. Making one is the costliest
// single step of a launch (~0.6 ms: the kernel registers a loopback device and
// runs every protocol's per-namespace setup); a thread of the pool's own keeps
// a few ready, so a launch only enters one (LaunchSpec::netnsFd).
//
// A namespace from here belongs to the host's user namespace rather than the
// sandbox's. The sandbox's root never had CAP_NET_ADMIN or CAP_NET_RAW over its
// namespace (init drops both), so it loses nothing there; ports below 1024 stay
// open to it through net.ipv4.ip_unprivileged_port_start=0 in the namespace,
// where it used CAP_NET_BIND_SERVICE before. Each namespace is handed out once.
#pragma once

#include <kj/io.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace nodeagent::isolator {

// Remembers the calling thread's network namespace and puts the thread back
// there when destroyed. If it cannot, the process aborts: a thread left in a
// sandbox's namespace would do the agent's later work there, and would keep
// that namespace alive after its sandbox.
class ThreadNetnsHome {
 public:
  ThreadNetnsHome();
  ~ThreadNetnsHome();
  KJ_DISALLOW_COPY(ThreadNetnsHome);

 private:
  kj::AutoCloseFd home_;
};

// Makes a network namespace set up as a sandbox's (sandbox_netns.h) and returns
// an fd that holds it. The calling thread passes through it and returns to its
// own namespace (or the process aborts).
kj::AutoCloseFd makeSandboxNetns();

class NetnsPool {
 public:
  explicit NetnsPool(size_t spares);
  ~NetnsPool();  // stops the thread; the namespaces nobody took go with their fds
  KJ_DISALLOW_COPY(NetnsPool);

  // A ready namespace, or an invalid fd when none is (the launch then makes
  // its own). Never blocks; wakes the thread to make a replacement.
  kj::AutoCloseFd take();

  // How many are ready; waits up to `timeout` for `count` (tests, benchmarks).
  size_t waitReady(size_t count, std::chrono::milliseconds timeout);

  // Why the last attempt to make one failed ("" if it did not).
  std::string lastError();

 private:
  void run();

  const size_t spares_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<kj::AutoCloseFd> ready_;
  bool stopping_ = false;
  std::string lastError_;
  std::chrono::steady_clock::time_point lastTake_;
  std::thread thread_;  // last: starts once everything above exists
};

}  // namespace nodeagent::isolator
