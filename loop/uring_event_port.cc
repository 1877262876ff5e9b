#include "loop/uring_event_port.h"

#include <errno.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <kj/debug.h>

#include "loop/errno_exception.h"
#include "loop/uring_op.h"

namespace nodeagent::loop {
namespace {

// user_data: bits 0-31 slot index, bits 32-62 generation (never 0 for a
// request), bit 63 set on the cancel request aimed at that request. Values
// with generation 0 are the port's own requests.
constexpr uint64_t kWakeTag = 1;
constexpr uint64_t kIgnoreTag = 2;
constexpr uint64_t kCancelBit = uint64_t(1) << 63;
constexpr uint32_t kMaxGeneration = 0x7fffffff;

// Cap on one sleep; KJ's timer clamps longer waits to this.
constexpr uint64_t kMaxSleepNs = uint64_t(3600) * 1000000000;

// How long the destructor waits for the kernel to give back cancelled requests.
constexpr kj::Duration kShutdownGrace = 10 * kj::SECONDS;

// Newest first: a kernel that does not know a flag refuses with EINVAL.
// SINGLE_ISSUER + DEFER_TASKRUN: completions are only posted when this thread
// enters the kernel asking for events, so no IPIs or task-work interruptions.
constexpr unsigned kSetupAttempts[] = {
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_COOP_TASKRUN |
        IORING_SETUP_SUBMIT_ALL,
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL,
    IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL,
    0,
};

uint64_t encode(uint32_t index, uint32_t generation) {
  return (uint64_t(generation) << 32) | index;
}

__kernel_timespec toTimespec(uint64_t ns) {
  __kernel_timespec ts;
  ts.tv_sec = int64_t(ns / 1000000000);
  ts.tv_nsec = int64_t(ns % 1000000000);
  return ts;
}

// Results of io_uring_enter that only mean "look at the completion queue".
bool isTransientEnterError(int r) {
  return r == -ETIME || r == -EINTR || r == -EBUSY || r == -EAGAIN;
}

[[noreturn]] void enterFailed(int r, kj::StringPtr what) {
  // With IORING_SETUP_SINGLE_ISSUER another thread touching the ring gets EEXIST.
  KJ_REQUIRE(r != -EEXIST, "io_uring used from a thread other than the one that created it");
  kj::throwFatalException(errnoException(-r, what));
}

}  // namespace

UringEventPort::UringEventPort(unsigned entries)
    : clock_(kj::systemPreciseMonotonicClock()), timer_(clock_.now()) {
  KJ_REQUIRE(entries > 0, "io_uring needs at least one submission entry");
  int r = -EINVAL;
  for (unsigned flags : kSetupAttempts) {
    io_uring_params params;
    memset(&params, 0, sizeof(params));
    params.flags = flags;
    r = io_uring_queue_init_params(entries, &ring_.raw, &params);
    if (r == 0) {
      setupFlags_ = flags;
      KJ_REQUIRE(params.features & IORING_FEAT_NODROP,
                 "kernel may drop io_uring completions; need IORING_FEAT_NODROP (5.5+)");
      break;
    }
    if (r != -EINVAL) break;
  }
  if (r != 0) kj::throwFatalException(errnoException(-r, "io_uring_queue_init_params"));
  ring_.live = true;

  // Blocking on purpose: the ring waits for it to become readable. With
  // O_NONBLOCK the read would just complete with -EAGAIN.
  int efd = eventfd(0, EFD_CLOEXEC);
  if (efd < 0) kj::throwFatalException(errnoException(errno, "eventfd"));
  wakeFd_ = kj::AutoCloseFd(efd);
  armWake();
}

UringEventPort::~UringEventPort() {
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { shutdown(); })) {
    KJ_LOG(ERROR, "io_uring event port shutdown failed", *e);
  }
}

void UringEventPort::shutdown() {
  shuttingDown_ = true;
  for (Slot& slot : slots_) {
    if (slot.op.get() == nullptr) continue;
    UringOp& op = *slot.op;
    if (op.sink != nullptr) {
      KJ_LOG(ERROR, "io_uring request outlived its event port; its promise never resolves", op.name,
             op.fd);
      op.sink->orphan();
      op.sink = nullptr;
    }
    if (op.inKernel && !op.cancelSubmitted) submitCancel(op);
  }
  if (wakeArmed_) {
    io_uring_sqe* sqe = getSqe();
    io_uring_prep_cancel64(sqe, kWakeTag, 0);
    io_uring_sqe_set_data64(sqe, kIgnoreTag);
  }

  // Buffers of cancelled requests must outlive the kernel's use of them.
  kj::TimePoint deadline = clock_.now() + kShutdownGrace;
  while ((liveOps_ > 0 || wakeArmed_) && clock_.now() < deadline) {
    io_uring_cqe* cqe = nullptr;
    __kernel_timespec ts = toTimespec(100 * 1000 * 1000);
    int r = io_uring_submit_and_wait_timeout(&ring_.raw, &cqe, 1, &ts, nullptr);
    if (r < 0 && !isTransientEnterError(r)) enterFailed(r, "io_uring_submit_and_wait_timeout");
    drainCompletions();
    handleCompletions();
  }
  if (liveOps_ > 0 || wakeArmed_) {
    // The kernel may still write into these; leaking is the only safe choice.
    KJ_LOG(ERROR, "kernel did not finish cancelled io_uring requests; leaking them", liveOps_);
    new kj::Vector<Slot>(kj::mv(slots_));
    new kj::Own<uint64_t>(kj::mv(wakeBuffer_));
    ring_.live = false;
  }
}

bool UringEventPort::wait() {
  // Something already arrived (a full ring was drained, or a wake-up): don't sleep.
  if (!backlog_.empty() || woken_) return poll();
  if (busyPoll_ > 0 * kj::NANOSECONDS && busyPollForCompletions()) return finishTurn();

  io_uring_cqe* cqe = nullptr;
  int r;
  KJ_IF_MAYBE (ns, timer_.timeoutToNextEvent(clock_.now(), kj::NANOSECONDS, kMaxSleepNs)) {
    __kernel_timespec ts = toTimespec(*ns);
    r = io_uring_submit_and_wait_timeout(&ring_.raw, &cqe, 1, &ts, nullptr);
  } else {
    r = io_uring_submit_and_wait_timeout(&ring_.raw, &cqe, 1, nullptr, nullptr);
  }
  if (r < 0 && !isTransientEnterError(r)) enterFailed(r, "io_uring_submit_and_wait_timeout");
  return finishTurn();
}

bool UringEventPort::poll() {
  // One enter: submit what is queued and, with DEFER_TASKRUN, run the
  // deferred work that posts completions. Never sleeps.
  int r = io_uring_submit_and_get_events(&ring_.raw);
  if (r < 0 && !isTransientEnterError(r)) enterFailed(r, "io_uring_submit_and_get_events");
  return finishTurn();
}

// True once a completion is ready; false when the budget (or the time to
// the next timer event) ran out.
bool UringEventPort::busyPollForCompletions() {
  kj::TimePoint until = clock_.now() + busyPoll_;
  KJ_IF_MAYBE (next, timer_.nextEvent()) {
    if (*next < until) until = *next;
  }
  do {
    int r = io_uring_submit_and_get_events(&ring_.raw);
    if (r < 0 && !isTransientEnterError(r)) enterFailed(r, "io_uring_submit_and_get_events");
    if (io_uring_cq_ready(&ring_.raw) > 0 || io_uring_cq_has_overflow(&ring_.raw)) return true;
  } while (clock_.now() < until);
  return false;
}

bool UringEventPort::finishTurn() {
  drainCompletions();
  handleCompletions();
  timer_.advanceTo(clock_.now());
  return takeWoken();
}

void UringEventPort::wake() const {
  uint64_t one = 1;
  // A blocking eventfd only refuses once 2^64-2 wake-ups are pending.
  KJ_SYSCALL(::write(wakeFd_.get(), &one, sizeof(one)));
}

bool UringEventPort::takeWoken() {
  bool woken = woken_;
  woken_ = false;
  return woken;
}

void UringEventPort::launch(kj::Own<UringOp> op, OpSink& sink) {
  KJ_REQUIRE(!shuttingDown_, "io_uring event port is shutting down");
  // Take the SQE first: if the ring is broken this throws before the port
  // owns anything.
  io_uring_sqe* sqe = getSqe();

  uint32_t index;
  if (freeSlots_.empty()) {
    index = slots_.size();
    slots_.add();
  } else {
    index = freeSlots_.back();
    freeSlots_.removeLast();
  }
  Slot& slot = slots_[index];
  slot.generation = slot.generation >= kMaxGeneration ? 1 : slot.generation + 1;
  op->userData = encode(index, slot.generation);
  op->sink = &sink;
  op->prepare(sqe);
  io_uring_sqe_set_data64(sqe, op->userData);
  op->inKernel = true;
  slot.op = kj::mv(op);
  ++liveOps_;
}

void UringEventPort::abandon(UringOp& op) {
  op.sink = nullptr;
  if (!op.inKernel) {
    retire(op);
    return;
  }
  if (op.cancelSubmitted) return;
  // Runs in a promise's destructor, so it must not throw. If no cancel can be
  // queued the request simply runs to completion and is reclaimed then.
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { submitCancel(op); })) {
    KJ_LOG(ERROR, "could not cancel io_uring request", op.name, op.fd, *e);
  }
}

io_uring_sqe* UringEventPort::getSqe() {
  for (unsigned attempt = 0;; ++attempt) {
    if (io_uring_sqe* sqe = io_uring_get_sqe(&ring_.raw)) return sqe;
    // The submission queue is full: hand the batch to the kernel to make room.
    int r = io_uring_submit(&ring_.raw);
    if (r > 0 || r == -EINTR) continue;
    if (r == 0 || r == -EBUSY || r == -EAGAIN) {
      // The kernel took nothing: completions are backed up (older kernels
      // refuse submissions then) or it is short of memory. Empty the
      // completion queue into the backlog and try again.
      KJ_REQUIRE(attempt < 10000, "io_uring submission queue is stuck", r);
      io_uring_get_events(&ring_.raw);
      drainCompletions();
      continue;
    }
    enterFailed(r, "io_uring_submit");
  }
}

void UringEventPort::submitOp(UringOp& op) {
  io_uring_sqe* sqe = getSqe();
  if (op.pollEvents != 0) {
    io_uring_prep_poll_add(sqe, op.fd, op.pollEvents);
  } else {
    op.prepare(sqe);
  }
  io_uring_sqe_set_data64(sqe, op.userData);
  op.inKernel = true;
}

void UringEventPort::submitCancel(UringOp& op) {
  io_uring_sqe* sqe = getSqe();
  io_uring_prep_cancel64(sqe, op.userData, 0);
  io_uring_sqe_set_data64(sqe, op.userData | kCancelBit);
  op.cancelSubmitted = true;
}

void UringEventPort::armWake() {
  io_uring_sqe* sqe = getSqe();
  io_uring_prep_read(sqe, wakeFd_.get(), wakeBuffer_.get(), sizeof(uint64_t), 0);
  io_uring_sqe_set_data64(sqe, kWakeTag);
  wakeArmed_ = true;
}

bool UringEventPort::drainCompletions() {
  bool any = false;
  for (;;) {
    unsigned head;
    unsigned count = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_.raw, head, cqe) {
      // liburing's own timeout (kernels without EXT_ARG) carries this tag.
      if (cqe->user_data != LIBURING_UDATA_TIMEOUT) {
        backlog_.add(Completion{cqe->user_data, cqe->res, cqe->flags});
      }
      ++count;
    }
    if (count > 0) {
      io_uring_cq_advance(&ring_.raw, count);
      any = true;
      continue;
    }
    // Completions that did not fit wait in the kernel (IORING_FEAT_NODROP)
    // until someone asks for events.
    if (!io_uring_cq_has_overflow(&ring_.raw)) break;
    io_uring_get_events(&ring_.raw);
  }
  return any;
}

void UringEventPort::handleCompletions() {
  // handle() may append (resubmitting into a full ring drains it), so index.
  for (size_t i = 0; i < backlog_.size(); ++i) {
    Completion c = backlog_[i];
    handle(c);
  }
  backlog_.clear();
}

void UringEventPort::handle(const Completion& c) {
  if (c.userData == kWakeTag) {
    wakeArmed_ = false;
    if (c.res < 0 && c.res != -ECANCELED && c.res != -EINTR && c.res != -EAGAIN) {
      KJ_LOG(ERROR, "eventfd read failed", c.res);
    }
    woken_ = true;  // spurious wake-ups are allowed
    if (!shuttingDown_) armWake();
    return;
  }
  // A cancel request's own completion tells us nothing we need: the
  // cancelled request still posts its completion.
  if ((c.userData & kCancelBit) != 0 || c.userData == kIgnoreTag) return;

  uint32_t index = uint32_t(c.userData);
  uint32_t generation = uint32_t(c.userData >> 32);
  if (index >= slots_.size()) return;
  Slot& slot = slots_[index];
  if (slot.op.get() == nullptr || slot.generation != generation) return;
  UringOp& op = *slot.op;

  bool more = (c.flags & IORING_CQE_F_MORE) != 0;
  if (!more) op.inKernel = false;
  int32_t res = c.res;

  if (op.sink == nullptr) {
    // Abandoned: only reclaim, once the kernel is done with it.
    if (!more) {
      if (op.pollEvents == 0) op.discard(res);
      retire(op);
    }
    return;
  }

  bool resubmit = false;
  if (op.pollEvents != 0) {
    // The readiness poll before a retry finished.
    op.pollEvents = 0;
    if (res >= 0) {
      KJ_IF_MAYBE (result, op.afterPoll()) {
        res = *result;
      } else {
        resubmit = true;
      }
    }
  } else if (res == -EINTR) {
    resubmit = true;
  } else if (short events = op.pollBeforeRetry(res)) {
    op.pollEvents = events;
    resubmit = true;
  } else if (!op.isFinal(res)) {
    if (more) return;
    resubmit = true;  // the kernel ended a multishot request early
  }
  if (resubmit) {
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { submitOp(op); })) {
      OpSink& sink = *op.sink;
      op.sink = nullptr;
      sink.reject(kj::mv(*e));
      retire(op);
    }
    return;
  }

  OpSink& sink = *op.sink;
  op.sink = nullptr;
  if (res >= 0) {
    op.finish(res);
    sink.fulfill(res);
  } else {
    sink.reject(errnoException(-res, op.name, op.fd));
  }
  if (more) {
    // A multishot request outlives its answer; stop it and reclaim later.
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { submitCancel(op); })) {
      KJ_LOG(ERROR, "could not cancel io_uring request", op.name, op.fd, *e);
    }
  } else {
    retire(op);
  }
}

void UringEventPort::retire(UringOp& op) {
  uint32_t index = uint32_t(op.userData);
  slots_[index].op = nullptr;  // frees the request and the memory it owned
  freeSlots_.add(index);
  --liveOps_;
}

}  // namespace nodeagent::loop
