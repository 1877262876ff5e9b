// Internal to loop/: one io_uring request and the memory the kernel may touch
// while it is in flight, plus the adapter that ties it to a kj::Promise.
#pragma once

#include <liburing.h>

#include <kj/async.h>
#include <kj/common.h>
#include <kj/exception.h>
#include <kj/io.h>
#include <cstdint>

#include "loop/uring_event_port.h"

namespace nodeagent::loop {

// Where a finished request reports. Implemented by OpAdapter<T>.
class OpSink {
 public:
  virtual void fulfill(int32_t res) = 0;
  virtual void reject(kj::Exception&& e) = 0;
  // The port is going away first; forget the request without resolving.
  virtual void orphan() = 0;

 protected:
  ~OpSink() = default;
};

class UringOp {
 public:
  UringOp(const char* name, int fd) : name(name), fd(fd) {}
  virtual ~UringOp() = default;
  KJ_DISALLOW_COPY(UringOp);

  // Fills `sqe` for the request itself (the port sets user_data).
  virtual void prepare(io_uring_sqe* sqe) = 0;

  // If the request failed with `res` and should be retried once `fd` is ready
  // (a non-blocking fd gives -EAGAIN), the events to poll for; 0 otherwise.
  virtual short pollBeforeRetry(int32_t res) const {
    (void)res;
    return 0;
  }

  // After that poll: nullptr resubmits the request; a value ends it with that
  // result (connect reads SO_ERROR here).
  virtual kj::Maybe<int32_t> afterPoll() { return nullptr; }

  // For multishot requests: whether this completion ends the operation.
  virtual bool isFinal(int32_t res) const {
    (void)res;
    return true;
  }

  // The request succeeded and someone waits: copy results out to the caller.
  virtual void finish(int32_t res) { (void)res; }

  // The request ended but nobody waits any more: release what the kernel
  // handed over (an accepted fd, SCM_RIGHTS fds).
  virtual void discard(int32_t res) { (void)res; }

  const char* const name;
  const int fd;

  // Managed by the port.
  OpSink* sink = nullptr;
  uint64_t userData = 0;
  short pollEvents = 0;  // nonzero while the in-kernel request is the retry poll
  bool inKernel = false;
  bool cancelSubmitted = false;
};

template <typename T>
class OpAdapter final : public OpSink {
 public:
  OpAdapter(kj::PromiseFulfiller<T>& fulfiller, UringEventPort& port, kj::Own<UringOp> op)
      : fulfiller_(fulfiller), port_(port), op_(op.get()) {
    port.launch(kj::mv(op), *this);
  }
  ~OpAdapter() {
    if (op_ != nullptr) port_.abandon(*op_);
  }
  KJ_DISALLOW_COPY(OpAdapter);

  void fulfill(int32_t res) override {
    op_ = nullptr;
    if constexpr (kj::isSameType<T, void>()) {
      (void)res;
      fulfiller_.fulfill();
    } else if constexpr (kj::isSameType<T, kj::AutoCloseFd>()) {
      fulfiller_.fulfill(kj::AutoCloseFd(res));  // closed if nobody takes it
    } else {
      fulfiller_.fulfill(static_cast<T>(res));
    }
  }
  void reject(kj::Exception&& e) override {
    op_ = nullptr;
    fulfiller_.reject(kj::mv(e));
  }
  void orphan() override { op_ = nullptr; }

 private:
  kj::PromiseFulfiller<T>& fulfiller_;
  UringEventPort& port_;
  UringOp* op_;  // owned by the port; null once resolved
};

// A submission that fails outright (a broken ring) becomes a rejected promise.
template <typename T>
kj::Promise<T> UringEventPort::start(kj::Own<UringOp> op) {
  return kj::evalNow([&]() { return kj::newAdaptedPromise<T, OpAdapter<T>>(*this, kj::mv(op)); });
}

}  // namespace nodeagent::loop
