#include "nodeagent/store_writer.h"

#include <kj/debug.h>

#include "util/log.h"

namespace nodeagent {

// At most this many changes share one transaction, so one commit stays short.
constexpr size_t kMaxBatch = 256;

StoreWriter::StoreWriter(Store& store) : store_(store), thread_([this]() { run(); }) {}

StoreWriter::~StoreWriter() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_one();
  thread_.join();
}

void StoreWriter::submit(Change change) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(kj::mv(change));
    ++submitted_;
  }
  wake_.notify_one();
}

void StoreWriter::flush() {
  std::unique_lock<std::mutex> lock(mutex_);
  uint64_t target = submitted_;
  drained_.wait(lock, [&]() { return committed_ >= target; });
}

uint64_t StoreWriter::committedChanges() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return committed_;
}

void StoreWriter::run() {
  for (;;) {
    kj::Vector<Change> batch;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&]() { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and everything is committed
      while (!queue_.empty() && batch.size() < kMaxBatch) {
        batch.add(kj::mv(queue_.front()));
        queue_.pop_front();
      }
    }
    commit(batch);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      committed_ += batch.size();
    }
    drained_.notify_all();
  }
}

void StoreWriter::commit(kj::Vector<Change>& batch) {
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                 store_.update([&](Store::WriteTxn& txn) {
                   for (auto& change : batch) change(txn);
                 });
               })) {
    // One bad change must not sink its neighbours: commit them one by one.
    log::warn("store.batch_failed",
              {{"changes", uint64_t(batch.size())}, {"error", e->getDescription().cStr()}});
    for (auto& change : batch) {
      KJ_IF_MAYBE (single, kj::runCatchingExceptions([&]() {
                     store_.update([&](Store::WriteTxn& txn) { change(txn); });
                   })) {
        log::error("store.change_lost", {{"error", single->getDescription().cStr()}});
      }
    }
  }
}

}  // namespace nodeagent
