#include "loop/fd_passing.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>

#include "loop/io_context.h"
#include "loop/test_util.h"

namespace nodeagent::loop::test {
namespace {

// Checks that `writeEnd` (received) and `readEnd` (kept) are the same pipe.
void expectSamePipe(int writeEnd, int readEnd) {
  KJ_SYSCALL(::write(writeEnd, "!", 1));
  char c = 0;
  KJ_SYSCALL(::read(readEnd, &c, 1));
  EXPECT_EQ(c, '!');
}

TEST(FdPassing, SendsFdsBothWays) {
  IoContext ctx;
  auto pair = makeSocketPair(SOCK_SEQPACKET);
  auto pipe1 = makePipe();
  auto pipe2 = makePipe();

  int fds[] = {pipe1.b.get(), pipe2.b.get()};
  sendWithFds(ctx.port, pair.a.get(), bytesOf("spawn"), kj::arrayPtr(fds, 2)).wait(ctx.waitScope);
  auto msg = receiveWithFds(ctx.port, pair.b.get(), 64, 4).wait(ctx.waitScope);
  EXPECT_EQ(kj::heapString(msg.bytes.asChars()), "spawn");
  ASSERT_EQ(msg.fds.size(), 2u);
  EXPECT_EQ(fcntl(msg.fds[0].get(), F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
  expectSamePipe(msg.fds[0].get(), pipe1.a.get());
  expectSamePipe(msg.fds[1].get(), pipe2.a.get());

  // And back, receiving first.
  auto receiving = receiveWithFds(ctx.port, pair.a.get(), 64, 1);
  ctx.waitScope.poll();
  int back[] = {msg.fds[1].get()};
  sendWithFds(ctx.port, pair.b.get(), bytesOf("pidfd"), kj::arrayPtr(back, 1)).wait(ctx.waitScope);
  auto reply = receiving.wait(ctx.waitScope);
  EXPECT_EQ(kj::heapString(reply.bytes.asChars()), "pidfd");
  ASSERT_EQ(reply.fds.size(), 1u);
  expectSamePipe(reply.fds[0].get(), pipe2.a.get());

  // Plain messages keep their boundaries.
  sendWithFds(ctx.port, pair.a.get(), bytesOf("one"), nullptr).wait(ctx.waitScope);
  sendWithFds(ctx.port, pair.a.get(), bytesOf("two"), nullptr).wait(ctx.waitScope);
  auto one = receiveWithFds(ctx.port, pair.b.get(), 64, 4).wait(ctx.waitScope);
  auto two = receiveWithFds(ctx.port, pair.b.get(), 64, 4).wait(ctx.waitScope);
  EXPECT_EQ(kj::heapString(one.bytes.asChars()), "one");
  EXPECT_EQ(kj::heapString(two.bytes.asChars()), "two");
  EXPECT_EQ(one.fds.size(), 0u);
}

TEST(FdPassing, TruncatedBytesAreRejected) {
  IoContext ctx;
  auto pair = makeSocketPair(SOCK_SEQPACKET);
  auto pipe = makePipe();
  int before = countOpenFds();
  int fds[] = {pipe.b.get()};
  char big[100];
  memset(big, 'x', sizeof(big));
  sendWithFds(ctx.port, pair.a.get(), kj::arrayPtr(reinterpret_cast<kj::byte*>(big), 100),
              kj::arrayPtr(fds, 1))
      .wait(ctx.waitScope);
  EXPECT_ANY_THROW(receiveWithFds(ctx.port, pair.b.get(), 10, 4).wait(ctx.waitScope));
  EXPECT_EQ(countOpenFds(), before);  // the fd that arrived was closed
}

TEST(FdPassing, TooManyFdsAreRejectedAndClosed) {
  IoContext ctx;
  auto pair = makeSocketPair(SOCK_SEQPACKET);
  auto pipe = makePipe();
  int before = countOpenFds();
  int fds[] = {pipe.a.get(), pipe.b.get(), pipe.b.get()};
  sendWithFds(ctx.port, pair.a.get(), bytesOf("many"), kj::arrayPtr(fds, 3)).wait(ctx.waitScope);
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                 receiveWithFds(ctx.port, pair.b.get(), 64, 1).wait(ctx.waitScope);
               })) {
    EXPECT_NE(strstr(e->getDescription().cStr(), "more fds"), nullptr);
  } else {
    ADD_FAILURE() << "control truncation not reported";
  }
  EXPECT_EQ(countOpenFds(), before);

  // A receiver that accepts no fds at all.
  sendWithFds(ctx.port, pair.a.get(), bytesOf("x"), kj::arrayPtr(fds, 1)).wait(ctx.waitScope);
  EXPECT_ANY_THROW(receiveWithFds(ctx.port, pair.b.get(), 64, 0).wait(ctx.waitScope));
  EXPECT_EQ(countOpenFds(), before);
}

TEST(FdPassing, EofIsAnEmptyMessage) {
  IoContext ctx;
  auto pair = makeSocketPair(SOCK_SEQPACKET);
  auto receiving = receiveWithFds(ctx.port, pair.b.get(), 64, 4);
  ctx.waitScope.poll();
  pair.a = {};
  auto msg = receiving.wait(ctx.waitScope);
  EXPECT_EQ(msg.bytes.size(), 0u);
  EXPECT_EQ(msg.fds.size(), 0u);
}

TEST(FdPassing, DroppedReceiveClosesFdsThatArrived) {
  int before = countOpenFds();
  {
    IoContext ctx;
    auto pair = makeSocketPair(SOCK_SEQPACKET);
    auto pipe = makePipe();
    for (int i = 0; i < 20; ++i) {
      auto receiving = receiveWithFds(ctx.port, pair.b.get(), 64, 4);
      int fds[] = {pipe.a.get(), pipe.b.get()};
      sendWithFds(ctx.port, pair.a.get(), bytesOf("lost"), kj::arrayPtr(fds, 2))
          .wait(ctx.waitScope);
      // The receive may or may not have completed; either way nothing leaks.
    }
    EXPECT_TRUE(drainPort(ctx));
  }
  EXPECT_EQ(countOpenFds(), before);
}

}  // namespace
}  // namespace nodeagent::loop::test
