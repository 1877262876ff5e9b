// Runs asynchronous operations one after another, in the order they were
// added. Cap'n Proto delivers calls on one capability in order but starts each
// handler as soon as it arrives, so handlers that write to one fd or stream
// (stream calls, stdin chunks, uploads) queue their writes here to keep them
// ordered and never concurrent.
#pragma once

#include <kj/async.h>
#include <kj/function.h>

namespace nodeagent::loop {

class SerialQueue {
 public:
  SerialQueue() : tail_(kj::Promise<void>(kj::READY_NOW).fork()) {}
  KJ_DISALLOW_COPY(SerialQueue);

  // Runs `op` after everything added before it has finished. The result
  // resolves when `op` has. Once an operation fails, every later one fails
  // with the same error (a stream with a failed write is broken).
  kj::Promise<void> add(kj::Function<kj::Promise<void>()> op) {
    auto next = tail_.addBranch().then([op = kj::mv(op)]() mutable { return op(); }).fork();
    auto result = next.addBranch();
    tail_ = kj::mv(next);
    return result;
  }

  // Resolves when everything added so far has finished.
  kj::Promise<void> drained() { return tail_.addBranch(); }

 private:
  kj::ForkedPromise<void> tail_;
};

}  // namespace nodeagent::loop
