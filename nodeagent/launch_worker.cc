#include "nodeagent/launch_worker.h"

#include <signal.h>

namespace nodeagent {

LaunchWorker::LaunchWorker() {
  thread_ = kj::heap<kj::Thread>([this]() {
    // Signals are the main thread's (a signalfd reads them there).
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, nullptr);
    kj::EventLoop loop;
    kj::WaitScope waitScope(loop);
    auto stop = kj::newPromiseAndCrossThreadFulfiller<void>();
    *started_.lockExclusive() =
        Handles{kj::getCurrentThreadExecutor().addRef(), kj::mv(stop.fulfiller)};
    stop.promise.wait(waitScope);
  });
  auto handles = started_.when([](const kj::Maybe<Handles>& h) { return h != nullptr; },
                               [](kj::Maybe<Handles>& h) { return kj::mv(KJ_ASSERT_NONNULL(h)); });
  executor_ = kj::mv(handles.executor);
  stop_ = kj::mv(handles.stop);
}

LaunchWorker::~LaunchWorker() noexcept(false) {
  stop_->fulfill();
  thread_ = nullptr;  // joins
}

}  // namespace nodeagent
