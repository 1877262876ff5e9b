#include "cluster/timer_queue.h"

#include <limits>

namespace nodeagent::cluster {

TimerQueue::Id TimerQueue::add(int64_t atNs, kj::Function<void()> fn) {
  Id id{atNs, next_++};
  timers_.emplace(id, kj::mv(fn));
  return id;
}

void TimerQueue::runDue(int64_t nowNs) {
  while (!timers_.empty() && timers_.begin()->first.first <= nowNs) {
    auto fn = kj::mv(timers_.begin()->second);
    timers_.erase(timers_.begin());
    fn();
  }
}

int64_t TimerQueue::nextDue() const {
  return timers_.empty() ? std::numeric_limits<int64_t>::max() : timers_.begin()->first.first;
}

}  // namespace nodeagent::cluster
