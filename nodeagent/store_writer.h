// Writes to the Store from a thread of its own, so the event loop never waits
// on fsync. Changes queued together share one LMDB transaction (group commit);
// each change still commits whole or not at all.
//
// Ordering: changes commit in the order they were submitted. A change that
// has been submitted but not yet committed is lost if the agent dies; the
// agent reconciles on start (a sandbox whose record never reached the store
// is found in the cgroup tree).
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include <kj/function.h>

#include "nodeagent/store.h"

namespace nodeagent {

class StoreWriter {
 public:
  explicit StoreWriter(Store& store);
  ~StoreWriter();  // commits everything queued, then stops
  KJ_DISALLOW_COPY(StoreWriter);

  using Change = kj::Function<void(Store::WriteTxn&)>;

  // Queues `change`; it runs on the writer thread inside a write transaction.
  // It must own everything it touches.
  void submit(Change change);

  // Blocks until every change submitted before the call has committed.
  void flush();

  uint64_t committedChanges() const;

 private:
  void run();
  void commit(kj::Vector<Change>& batch);

  Store& store_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable drained_;
  std::deque<Change> queue_;
  uint64_t submitted_ = 0;
  uint64_t committed_ = 0;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace nodeagent
