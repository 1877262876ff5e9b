#include "loop/uring_event_port.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <kj/async.h>
#include <kj/mutex.h>
#include <kj/vector.h>
#include <atomic>
#include <cstring>
#include <thread>

#include "loop/io_context.h"
#include "loop/test_util.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

namespace nodeagent::loop::test {
namespace {

TEST(UringEventPort, SetsUpRing) {
  IoContext ctx;
  // This kernel (6.x) accepts the preferred flags; older ones fall back.
  EXPECT_NE(ctx.port.setupFlags() & IORING_SETUP_DEFER_TASKRUN, 0u);
  EXPECT_EQ(ctx.port.pendingOperations(), 0u);
}

TEST(UringEventPort, RefusesUseFromAnotherThread) {
  UringEventPort port(8);
  if ((port.setupFlags() & IORING_SETUP_SINGLE_ISSUER) == 0) GTEST_SKIP() << "no SINGLE_ISSUER";
  kj::Maybe<kj::Exception> error;
  std::thread other([&]() { error = kj::runCatchingExceptions([&]() { port.poll(); }); });
  other.join();
  KJ_IF_MAYBE (e, error) {
    EXPECT_NE(strstr(e->getDescription().cStr(), "other than the one"), nullptr);
  } else {
    ADD_FAILURE() << "poll() from another thread succeeded";
  }
}

TEST(UringEventPort, TimersFireInOrder) {
  IoContext ctx;
  kj::Timer& timer = ctx.port.timer();
  kj::Vector<int> order;
  kj::TimePoint start = timer.now();
  auto builder = kj::heapArrayBuilder<kj::Promise<void>>(4);
  for (int ms : {30, 10, 20, 0}) {
    // .then() is lazy in KJ; evaluate eagerly so the callbacks run as timers fire.
    builder.add(timer.afterDelay(ms * kj::MILLISECONDS)
                    .then([&order, ms]() { order.add(ms); })
                    .eagerlyEvaluate(nullptr));
  }
  kj::joinPromises(builder.finish()).wait(ctx.waitScope);
  ASSERT_EQ(order.size(), 4u);
  EXPECT_EQ(order[0], 0);
  EXPECT_EQ(order[1], 10);
  EXPECT_EQ(order[2], 20);
  EXPECT_EQ(order[3], 30);
  EXPECT_GE(timer.now() - start, 30 * kj::MILLISECONDS);
}

TEST(UringEventPort, AfterDelaySleepsInTheRing) {
  IoContext ctx;
  // KJ measures delays from timer.now(), the time the loop last looked at
  // the clock, not from the moment of the call.
  auto before = ctx.port.timer().now();
  ctx.port.timer().afterDelay(50 * kj::MILLISECONDS).wait(ctx.waitScope);
  auto elapsed = kj::systemPreciseMonotonicClock().now() - before;
  EXPECT_GE(elapsed, 50 * kj::MILLISECONDS);
  EXPECT_LT(elapsed, 2 * kj::SECONDS);
  EXPECT_GE(ctx.port.timer().now() - before, 50 * kj::MILLISECONDS);
}

TEST(UringEventPort, TimeoutAfter) {
  IoContext ctx;
  auto pipe = makePipe();
  kj::byte buf[16];
  // Nothing is written: the read times out and is cancelled.
  auto slow = ctx.port.timer().timeoutAfter(20 * kj::MILLISECONDS,
                                            ctx.port.read(pipe.a.get(), kj::arrayPtr(buf, 16)));
  EXPECT_ANY_THROW(slow.wait(ctx.waitScope));
  EXPECT_TRUE(drainPort(ctx));

  // A fast promise wins against the timeout.
  KJ_SYSCALL(::write(pipe.b.get(), "x", 1));
  auto fast = ctx.port.timer().timeoutAfter(5 * kj::SECONDS,
                                            ctx.port.read(pipe.a.get(), kj::arrayPtr(buf, 16)));
  EXPECT_EQ(fast.wait(ctx.waitScope), 1u);
  EXPECT_EQ(buf[0], 'x');
}

TEST(UringEventPort, DroppedReadIsCancelled) {
  IoContext ctx;
  auto pipe = makePipe();
  {
    // The caller's buffer dies right after the promise: the request must not
    // write into it (ASan would report it) and must free its own buffer only
    // once the kernel has given the request back.
    auto buf = kj::heapArray<kj::byte>(4096);
    auto promise = ctx.port.read(pipe.a.get(), buf);
    ctx.waitScope.poll();
    EXPECT_EQ(ctx.port.pendingOperations(), 1u);
  }
  EXPECT_EQ(ctx.port.pendingOperations(), 1u);  // cancel queued, not yet answered
  EXPECT_TRUE(drainPort(ctx));

  // The cancelled read consumed nothing.
  KJ_SYSCALL(::write(pipe.b.get(), "hello", 5));
  kj::byte buf[16];
  EXPECT_EQ(ctx.port.read(pipe.a.get(), kj::arrayPtr(buf, 16)).wait(ctx.waitScope), 5u);
  EXPECT_EQ(kj::heapString(reinterpret_cast<char*>(buf), 5), "hello");
  EXPECT_EQ(ctx.port.pendingOperations(), 0u);
}

TEST(UringEventPort, DroppedBeforeSubmitIsCancelled) {
  IoContext ctx;
  auto pipe = makePipe();
  for (int i = 0; i < 100; ++i) {
    kj::byte buf[8];
    // Never submitted to the kernel before the cancel follows it.
    auto promise = ctx.port.read(pipe.a.get(), kj::arrayPtr(buf, 8));
  }
  EXPECT_TRUE(drainPort(ctx));
}

TEST(UringEventPort, DestroyWithRequestsInFlight) {
  int before = countOpenFds();
  auto pipe = makePipe();
  {
    IoContext ctx;
    auto buf = kj::heapArray<kj::byte>(64);
    {
      auto promise = ctx.port.read(pipe.a.get(), buf);
      ctx.waitScope.poll();
    }
    // The port waits for the kernel to give the cancelled read back.
  }
  pipe = {};
  EXPECT_EQ(countOpenFds(), before);
}

TEST(UringEventPort, FullSubmissionQueue) {
  IoContext ctx(4);  // four SQEs, eight CQEs: both queues overflow constantly
  constexpr int kPairs = 100;
  constexpr int kPerPair = 50;
  kj::Vector<FdPair> pairs;
  for (int i = 0; i < kPairs; ++i) pairs.add(makeSocketPair());

  auto bufs = kj::heapArray<kj::byte>(kPairs * kPerPair);
  auto builder = kj::heapArrayBuilder<kj::Promise<size_t>>(2 * kPairs * kPerPair);
  kj::byte one = 1;
  for (int i = 0; i < kPairs; ++i) {
    for (int j = 0; j < kPerPair; ++j) {
      builder.add(ctx.port.recv(pairs[i].a.get(), kj::arrayPtr(&bufs[i * kPerPair + j], 1)));
      builder.add(ctx.port.send(pairs[i].b.get(), kj::arrayPtr(&one, 1)));
    }
  }
  EXPECT_EQ(ctx.port.pendingOperations(), unsigned(2 * kPairs * kPerPair));
  auto results = kj::joinPromises(builder.finish()).wait(ctx.waitScope);
  size_t total = 0;
  for (size_t n : results) total += n;
  EXPECT_EQ(total, size_t(2 * kPairs * kPerPair));
  for (kj::byte b : bufs) ASSERT_EQ(b, 1);
  EXPECT_EQ(ctx.port.pendingOperations(), 0u);
}

TEST(UringEventPort, ThousandsOfConcurrentTimersAndPolls) {
  IoContext ctx(32);
  constexpr int kCount = 3000;
  auto pipe = makePipe();
  int fired = 0;
  auto builder = kj::heapArrayBuilder<kj::Promise<void>>(2 * kCount);
  for (int i = 0; i < kCount; ++i) {
    builder.add(
        ctx.port.timer().afterDelay((i % 7) * kj::MILLISECONDS).then([&fired]() { ++fired; }));
    builder.add(ctx.port.pollIn(pipe.a.get()).then([&fired](short revents) {
      EXPECT_TRUE(revents & POLLIN);
      ++fired;
    }));
  }
  auto all = kj::joinPromises(builder.finish());
  ctx.waitScope.poll();
  EXPECT_EQ(ctx.port.pendingOperations(), unsigned(kCount));
  KJ_SYSCALL(::write(pipe.b.get(), "x", 1));
  all.wait(ctx.waitScope);
  EXPECT_EQ(fired, 2 * kCount);
  EXPECT_EQ(ctx.port.pendingOperations(), 0u);
}

TEST(UringEventPort, ManyDroppedOperationsOnASmallRing) {
  IoContext ctx(4);
  auto pair = makeSocketPair();
  kj::byte buf[1];
  {
    auto builder = kj::heapArrayBuilder<kj::Promise<size_t>>(2000);
    for (int i = 0; i < 2000; ++i) builder.add(ctx.port.recv(pair.a.get(), kj::arrayPtr(buf, 1)));
    auto promises = builder.finish();
    ctx.waitScope.poll();
  }
  EXPECT_TRUE(drainPort(ctx));
}

TEST(UringEventPort, NonBlockingFdIsRetriedAfterPoll) {
  IoContext ctx;
  auto pipe = makePipe(O_NONBLOCK);
  kj::byte buf[8];
  auto promise = ctx.port.read(pipe.a.get(), kj::arrayPtr(buf, 8));
  ctx.waitScope.poll();
  EXPECT_FALSE(promise.poll(ctx.waitScope));
  KJ_SYSCALL(::write(pipe.b.get(), "abc", 3));
  EXPECT_EQ(promise.wait(ctx.waitScope), 3u);
  EXPECT_EQ(buf[2], 'c');
}

TEST(UringEventPort, ErrorsCarryErrnoAndContext) {
  IoContext ctx;
  kj::byte buf[8];
  auto pipe = makePipe();
  int bad = pipe.a.get();
  pipe = {};  // now closed
  KJ_IF_MAYBE (e, kj::runCatchingExceptions(
                      [&]() { ctx.port.read(bad, kj::arrayPtr(buf, 8)).wait(ctx.waitScope); })) {
    EXPECT_TRUE(e->getDescription().startsWith(kj::str("read(fd ", bad, ")")))
        << e->getDescription().cStr();
    EXPECT_NE(strstr(e->getDescription().cStr(), "EBADF"), nullptr);
  } else {
    ADD_FAILURE() << "read on a closed fd succeeded";
  }

  // A peer that went away is a DISCONNECTED exception.
  auto pair = makeSocketPair();
  pair.b = {};
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                 for (int i = 0; i < 4; ++i) {
                   ctx.port.send(pair.a.get(), kj::arrayPtr(buf, 8)).wait(ctx.waitScope);
                 }
               })) {
    EXPECT_EQ(e->getType(), kj::Exception::Type::DISCONNECTED);
  } else {
    ADD_FAILURE() << "send to a closed peer succeeded";
  }
}

TEST(UringEventPort, PidfdBecomesReadableWhenChildExits) {
  IoContext ctx;
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    usleep(50 * 1000);
    _exit(7);
  }
  int pidfd = int(syscall(SYS_pidfd_open, pid, 0));
  ASSERT_GE(pidfd, 0);
  kj::AutoCloseFd owned(pidfd);
  short revents = ctx.port.pollIn(pidfd).wait(ctx.waitScope);
  EXPECT_TRUE(revents & POLLIN);
  siginfo_t info;
  memset(&info, 0, sizeof(info));
  ASSERT_EQ(waitid(idtype_t(P_PIDFD), id_t(pidfd), &info, WEXITED | WNOHANG), 0);
  EXPECT_EQ(info.si_pid, pid);
  EXPECT_EQ(info.si_code, CLD_EXITED);
  EXPECT_EQ(info.si_status, 7);
}

TEST(UringEventPort, ReadsASignalfd) {
  // The daemon reads SIGTERM/SIGINT this way.
  sigset_t mask, old;
  sigemptyset(&mask);
  sigaddset(&mask, SIGUSR2);
  ASSERT_EQ(pthread_sigmask(SIG_BLOCK, &mask, &old), 0);
  {
    IoContext ctx;
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    ASSERT_GE(sfd, 0);
    kj::AutoCloseFd owned(sfd);
    signalfd_siginfo info;
    auto reading =
        ctx.port.read(sfd, kj::arrayPtr(reinterpret_cast<kj::byte*>(&info), sizeof(info)));
    ctx.waitScope.poll();
    EXPECT_FALSE(reading.poll(ctx.waitScope));
    KJ_SYSCALL(kill(getpid(), SIGUSR2));
    EXPECT_EQ(reading.wait(ctx.waitScope), sizeof(info));
    EXPECT_EQ(info.ssi_signo, unsigned(SIGUSR2));
  }
  ASSERT_EQ(pthread_sigmask(SIG_SETMASK, &old, nullptr), 0);
}

TEST(UringEventPort, BusyPollStillSleepsAndWakes) {
  IoContext ctx;
  ctx.port.setBusyPoll(2 * kj::MILLISECONDS);
  auto pipe = makePipe();
  kj::byte buf[4];
  // Data that comes while spinning, and data that comes after the spin gave up.
  for (int delayMs : {0, 1, 20}) {
    int writeFd = pipe.b.get();
    std::thread writer([writeFd, delayMs]() {
      usleep(delayMs * 1000);
      KJ_SYSCALL(::write(writeFd, "ok", 2));
    });
    EXPECT_EQ(ctx.port.read(pipe.a.get(), kj::arrayPtr(buf, 4)).wait(ctx.waitScope), 2u);
    writer.join();
  }
  // A timer shorter than the spin budget still fires on time, a longer one too.
  auto before = ctx.port.timer().now();
  ctx.port.timer().afterDelay(500 * kj::MICROSECONDS).wait(ctx.waitScope);
  ctx.port.timer().afterDelay(10 * kj::MILLISECONDS).wait(ctx.waitScope);
  EXPECT_GE(ctx.port.timer().now() - before, 10 * kj::MILLISECONDS);
  EXPECT_EQ(ctx.port.pendingOperations(), 0u);
}

TEST(UringEventPort, ExecutorWakesTheRingFromAnotherThread) {
  IoContext ctx;
  const kj::Executor& executor = kj::getCurrentThreadExecutor();
  auto paf = kj::newPromiseAndFulfiller<int>();
  std::atomic<bool> ran{false};
  std::thread other([&]() {
    usleep(20 * 1000);  // let the loop thread go to sleep in the ring
    executor.executeSync([&]() {
      ran = true;
      paf.fulfiller->fulfill(42);
    });
  });
  // No timer is pending: without a wake-up this would sleep forever.
  EXPECT_EQ(paf.promise.wait(ctx.waitScope), 42);
  other.join();
  EXPECT_TRUE(ran);
}

TEST(UringEventPort, CrossThreadFulfiller) {
  IoContext ctx;
  for (int i = 0; i < 50; ++i) {
    auto paf = kj::newPromiseAndCrossThreadFulfiller<int>();
    std::thread other([&paf, i]() {
      if (i % 2 == 0) usleep(1000);
      paf.fulfiller->fulfill(int(i));
    });
    EXPECT_EQ(paf.promise.wait(ctx.waitScope), i);
    other.join();
  }
}

TEST(UringEventPort, ExecuteAsyncBetweenTwoUringThreads) {
  // Two loops on two rings, calling each other.
  struct Server {
    const kj::Executor* executor = nullptr;
    kj::Own<kj::CrossThreadPromiseFulfiller<void>> stop;
  };
  kj::MutexGuarded<Server> shared;
  std::thread server([&]() {
    IoContext ctx;
    auto paf = kj::newPromiseAndCrossThreadFulfiller<void>();
    {
      auto lock = shared.lockExclusive();
      lock->executor = &kj::getCurrentThreadExecutor();
      lock->stop = kj::mv(paf.fulfiller);
    }
    paf.promise.wait(ctx.waitScope);
  });
  const kj::Executor* executor = nullptr;
  while (executor == nullptr) {
    executor = shared.lockShared()->executor;
    if (executor == nullptr) usleep(1000);
  }
  {
    IoContext ctx;
    int sum = 0;
    for (int i = 0; i < 100; ++i) {
      sum += executor->executeAsync([i]() { return i; }).wait(ctx.waitScope);
    }
    EXPECT_EQ(sum, 4950);
  }
  shared.lockExclusive()->stop->fulfill();
  server.join();
}

}  // namespace
}  // namespace nodeagent::loop::test
