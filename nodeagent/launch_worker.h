// A thread of its own for the blocking part of starting a sandbox: making its
// cgroups, cloning init into fresh namespaces and waiting while init builds
// the root filesystem. That takes milliseconds, which the agent's event loop
// spends serving every other sandbox's requests instead.
#pragma once

#include <kj/async.h>
#include <kj/memory.h>
#include <kj/mutex.h>
#include <kj/thread.h>

namespace nodeagent {

class LaunchWorker {
 public:
  // Starts the thread (and waits until it takes work).
  LaunchWorker();
  // Lets work already queued finish, then joins the thread. Promises from
  // run() must be gone before (destroying one waits for its work to end).
  ~LaunchWorker() noexcept(false);
  KJ_DISALLOW_COPY(LaunchWorker);

  // Runs `work` on the worker thread; the promise resolves (or rejects with
  // what `work` threw) on the calling thread's event loop. Work runs one at a
  // time, in the order it was given.
  template <typename Work>
  auto run(Work&& work) {
    return executor_->executeAsync(kj::fwd<Work>(work));
  }

 private:
  struct Handles {
    kj::Own<const kj::Executor> executor;
    kj::Own<kj::CrossThreadPromiseFulfiller<void>> stop;
  };
  kj::MutexGuarded<kj::Maybe<Handles>> started_;
  kj::Own<const kj::Executor> executor_;
  kj::Own<kj::CrossThreadPromiseFulfiller<void>> stop_;
  kj::Own<kj::Thread> thread_;  // last: joined first
};

}  // namespace nodeagent
