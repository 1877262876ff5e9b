// A kj::EventPort whose only blocking point is one io_uring ring.
//
// KJ promises (and so Cap'n Proto RPC) run on it: every I/O operation is an
// io_uring request whose completion fulfils a promise. Dropping the promise
// cancels the request (IORING_OP_ASYNC_CANCEL); the memory the kernel may still
// write into belongs to the request, not to the caller, and lives until the
// kernel has posted the request's last completion.
//
// One port per thread. The ring is created with IORING_SETUP_SINGLE_ISSUER when
// the kernel allows it, so construct, use and destroy the port on the thread
// that runs its event loop. Only wake() may be called from other threads.
#pragma once

#include <liburing.h>
#include <poll.h>
#include <sys/socket.h>

#include <kj/async.h>
#include <kj/io.h>
#include <kj/time.h>
#include <kj/timer.h>
#include <kj/vector.h>
#include <cstdint>

namespace nodeagent::loop {

class UringOp;
class OpSink;
template <typename T>
class OpAdapter;

class UringEventPort final : public kj::EventPort {
 public:
  // `entries` sizes the submission queue; more requests than that may be in
  // flight at once (a full queue is flushed to the kernel and reused).
  explicit UringEventPort(unsigned entries = 256);
  ~UringEventPort();
  KJ_DISALLOW_COPY(UringEventPort);

  // kj::EventPort. setRunnable() keeps the default (does nothing): the loop
  // is run by whoever waits on it, never from here.
  bool wait() override;
  bool poll() override;
  void wake() const override;  // any thread: writes the port's eventfd

  // Driven by the ring: wait() sleeps at most until the next timer event.
  kj::Timer& timer() { return timer_; }

  // Opt-in (default 0: off). Before sleeping, wait() keeps collecting
  // completions without sleeping for up to `duration`, so an answer that
  // arrives soon needs no wake-up. Waking a thread whose CPU went idle is
  // slow, especially on VMs (tens of microseconds); this trades CPU for
  // that latency on request/response paths.
  void setBusyPoll(kj::Duration duration) { busyPoll_ = duration; }

  // Low-level operations. Each resolves to the completion result (>= 0) or
  // rejects with an errno exception naming the operation and fd. Buffers are
  // copied through memory the request owns, so the caller's buffer only has to
  // live as long as the promise; one request moves at most kMaxChunk bytes
  // (a short count, as write(2) may give). offset -1: the file position.
  static constexpr size_t kMaxChunk = 256 * 1024;

  kj::Promise<size_t> read(int fd, kj::ArrayPtr<kj::byte> buf, uint64_t offset = -1);
  kj::Promise<size_t> write(int fd, kj::ArrayPtr<const kj::byte> buf, uint64_t offset = -1);
  kj::Promise<size_t> write(int fd, kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces,
                            uint64_t offset = -1);
  kj::Promise<size_t> recv(int fd, kj::ArrayPtr<kj::byte> buf, int flags = 0);
  kj::Promise<size_t> send(int fd, kj::ArrayPtr<const kj::byte> buf, int flags = MSG_NOSIGNAL);
  kj::Promise<size_t> send(int fd, kj::ArrayPtr<const kj::ArrayPtr<const kj::byte>> pieces,
                           int flags = MSG_NOSIGNAL);
  // The new fd has SOCK_CLOEXEC. With accept(), a promise that resolved but
  // was dropped before anyone read it leaks the fd; acceptFd() cannot.
  kj::Promise<int> accept(int listenFd);
  kj::Promise<kj::AutoCloseFd> acceptFd(int listenFd);
  kj::Promise<void> connect(int fd, const struct sockaddr* addr, socklen_t len);
  kj::Promise<short> pollIn(int fd);  // e.g. a pidfd is readable once its process exited
  kj::Promise<short> pollFd(int fd, short events);  // resolves to the revents seen
  // Resolves once writes on `fd` can no longer succeed (POLLHUP or POLLERR);
  // a peer's half-close (POLLRDHUP) alone does not count.
  kj::Promise<void> onHangup(int fd);
  // `msg` (names, iovecs, control) is copied in and, for recvmsg, copied back
  // (data, msg_namelen, msg_controllen, msg_flags) when the promise resolves;
  // from then on SCM_RIGHTS fds in msg's control buffer are the caller's.
  // Fds that arrive for a recvmsg dropped before it resolved are closed.
  kj::Promise<size_t> recvmsg(int fd, struct msghdr* msg, int flags);
  kj::Promise<size_t> sendmsg(int fd, const struct msghdr* msg, int flags);

  // Requests still owned by the port: in flight, or cancelled and waiting for
  // the kernel's last completion. Internal requests (the wake-up read) are not
  // counted.
  unsigned pendingOperations() const { return liveOps_; }

  // The IORING_SETUP_* flags the kernel accepted.
  unsigned setupFlags() const { return setupFlags_; }

 private:
  template <typename T>
  friend class OpAdapter;

  // A completion taken off the ring but not yet handled. Completions are
  // drained into backlog_ first and handled afterwards, so that making room
  // in a full ring never runs completion handlers in the middle of a submit.
  struct Completion {
    uint64_t userData;
    int32_t res;
    uint32_t flags;
  };

  // The port owns every request from launch until its last completion. The
  // kernel knows a request by index and generation, so a late cancel can never
  // hit a newer request that reused the slot.
  struct Slot {
    kj::Own<UringOp> op;
    uint32_t generation = 0;
  };

  template <typename T>
  kj::Promise<T> start(kj::Own<UringOp> op);
  void launch(kj::Own<UringOp> op, OpSink& sink);
  void abandon(UringOp& op);  // the promise was dropped

  io_uring_sqe* getSqe();
  void submitOp(UringOp& op);
  void submitCancel(UringOp& op);
  void armWake();
  bool drainCompletions();  // ring -> backlog_; true if any
  void handleCompletions();
  void handle(const Completion& c);
  void retire(UringOp& op);
  bool busyPollForCompletions();
  bool finishTurn();
  bool takeWoken();
  void shutdown();

  // Owns the ring; io_uring_queue_exit() unless the port had to leak it.
  struct Ring {
    struct io_uring raw;
    bool live = false;
    Ring() = default;
    KJ_DISALLOW_COPY(Ring);
    ~Ring() {
      if (live) io_uring_queue_exit(&raw);
    }
  };

  Ring ring_;
  unsigned setupFlags_ = 0;
  kj::AutoCloseFd wakeFd_;
  kj::Own<uint64_t> wakeBuffer_ = kj::heap<uint64_t>(0);  // the kernel writes here while wakeArmed_
  bool wakeArmed_ = false;
  bool woken_ = false;
  bool shuttingDown_ = false;

  kj::Vector<Slot> slots_;
  kj::Vector<uint32_t> freeSlots_;
  unsigned liveOps_ = 0;
  kj::Vector<Completion> backlog_;

  const kj::MonotonicClock& clock_;
  kj::TimerImpl timer_;
  kj::Duration busyPoll_ = 0 * kj::NANOSECONDS;
};

}  // namespace nodeagent::loop
