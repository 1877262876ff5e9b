#include "isolator/netns_pool.h"

#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>

#include <kj/debug.h>

#include "isolator/file_util.h"
#include "isolator/sandbox_netns.h"

namespace nodeagent::isolator {
namespace {

// After a failure (say, user.max_net_namespaces reached) the thread waits this
// long before it tries again; launches make their own meanwhile.
constexpr std::chrono::seconds kRetryDelay{1};

// A replacement is made this long after the last take, not at once: making one
// keeps a CPU busy for most of a millisecond, and right after a take that is
// the CPU the launch that took it (or its first exec) wants.
constexpr std::chrono::milliseconds kRefillDelay{20};

}  // namespace

ThreadNetnsHome::ThreadNetnsHome() {
  int fd = checkSyscall(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC), "open",
                        "/proc/thread-self/ns/net");
  home_ = kj::AutoCloseFd(fd);
}

ThreadNetnsHome::~ThreadNetnsHome() {
  if (setns(home_, CLONE_NEWNET) != 0) {
    KJ_LOG(FATAL, "cannot return to the agent's network namespace", strerror(errno));
    abort();
  }
}

kj::AutoCloseFd makeSandboxNetns() {
  ThreadNetnsHome home;
  checkSyscall(unshare(CLONE_NEWNET), "unshare", "CLONE_NEWNET");
  prepareSandboxNetns();
  int fd = checkSyscall(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC), "open",
                        "/proc/thread-self/ns/net");
  return kj::AutoCloseFd(fd);
}

NetnsPool::NetnsPool(size_t spares) : spares_(spares), thread_([this]() { run(); }) {}

NetnsPool::~NetnsPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  thread_.join();
}

kj::AutoCloseFd NetnsPool::take() {
  kj::AutoCloseFd out;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (ready_.empty()) return out;
    out = kj::mv(ready_.back());
    ready_.pop_back();
    lastTake_ = std::chrono::steady_clock::now();
  }
  changed_.notify_all();
  return out;
}

size_t NetnsPool::waitReady(size_t count, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait_for(lock, timeout, [&]() { return ready_.size() >= count; });
  return ready_.size();
}

std::string NetnsPool::lastError() {
  std::lock_guard<std::mutex> lock(mutex_);
  return lastError_;
}

void NetnsPool::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    changed_.wait(lock, [&]() { return stopping_ || ready_.size() < spares_; });
    if (stopping_) return;
    // Takes push the refill back; an empty pool refills at once.
    while (!stopping_ && !ready_.empty() &&
           std::chrono::steady_clock::now() < lastTake_ + kRefillDelay) {
      changed_.wait_until(lock, lastTake_ + kRefillDelay);
    }
    if (stopping_) return;
    lock.unlock();
    kj::AutoCloseFd made;
    std::string error;
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { made = makeSandboxNetns(); })) {
      error = e->getDescription().cStr();
    }
    lock.lock();
    if (made.get() >= 0) {
      ready_.push_back(kj::mv(made));
      lastError_.clear();
      changed_.notify_all();
    } else {
      lastError_ = error;
      changed_.wait_for(lock, kRetryDelay, [&]() { return stopping_; });
    }
  }
}

}  // namespace nodeagent::isolator
