// A node's own timers, so the Env needs only one alarm per node: the node
// asks Env::wakeAt(nextDue()) and runs what is due when woken.
#pragma once

#include <stdint.h>

#include <kj/function.h>
#include <map>
#include <utility>

namespace nodeagent::cluster {

class TimerQueue {
 public:
  using Id = std::pair<int64_t, uint64_t>;  // (due time, tie-breaker); never reused

  Id add(int64_t atNs, kj::Function<void()> fn);
  void cancel(const Id& id) { timers_.erase(id); }
  // Runs every timer due at or before `nowNs`, in due order, including ones
  // added while running.
  void runDue(int64_t nowNs);
  int64_t nextDue() const;  // INT64_MAX when empty
  size_t size() const { return timers_.size(); }
  void clear() { timers_.clear(); }

 private:
  std::map<Id, kj::Function<void()>> timers_;
  uint64_t next_ = 0;
};

}  // namespace nodeagent::cluster
