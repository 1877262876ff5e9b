#include "loop/fd_streams.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/un.h>

#include <kj/async-io.h>
#include <kj/vector.h>
#include <cstring>

#include "loop/io_context.h"
#include "loop/test_util.h"

namespace nodeagent::loop::test {
namespace {

kj::Array<kj::byte> pattern(size_t size, unsigned seed) {
  auto out = kj::heapArray<kj::byte>(size);
  for (size_t i = 0; i < size; ++i) out[i] = kj::byte((i * 131 + seed) & 0xff);
  return out;
}

kj::Promise<void> readSlowly(kj::Timer& timer, kj::AsyncInputStream& in, kj::byte* out,
                             size_t left) {
  if (left == 0) return kj::READY_NOW;
  return timer.afterDelay(200 * kj::MICROSECONDS)
      .then([&in, out, left]() { return in.tryRead(out, 1, kj::min(left, size_t(48 * 1024))); })
      .then([&timer, &in, out, left](size_t n) -> kj::Promise<void> {
        KJ_ASSERT(n > 0, "early EOF");
        return readSlowly(timer, in, out + n, left - n);
      });
}

TEST(FdStreams, WriteLargerThanPipeBufferToASlowReader) {
  IoContext ctx;
  auto pipe = makePipe();
  auto in = wrapInputFd(ctx.port, kj::mv(pipe.a));
  auto out = wrapOutputFd(ctx.port, kj::mv(pipe.b));
  constexpr size_t kSize = 4 * 1024 * 1024;  // 64x the default pipe buffer
  auto data = pattern(kSize, 7);
  auto received = kj::heapArray<kj::byte>(kSize);
  auto writing = out->write(data.begin(), data.size());
  auto reading = readSlowly(ctx.port.timer(), *in, received.begin(), kSize);
  writing.wait(ctx.waitScope);
  reading.wait(ctx.waitScope);
  EXPECT_EQ(memcmp(data.begin(), received.begin(), kSize), 0);
  EXPECT_EQ(ctx.port.pendingOperations(), 0u);
}

TEST(FdStreams, WritePiecesOverSocket) {
  IoContext ctx;
  auto pair = makeSocketPair();
  auto a = wrapSocketFd(ctx.port, kj::mv(pair.a));
  auto b = wrapSocketFd(ctx.port, kj::mv(pair.b));
  auto p1 = pattern(300 * 1024, 1);
  auto p2 = pattern(5, 2);
  auto p3 = pattern(700 * 1024, 3);
  kj::ArrayPtr<const kj::byte> pieces[] = {p1, kj::ArrayPtr<const kj::byte>(), p2, p3};
  auto writing = a->write(kj::arrayPtr(pieces, 4));
  size_t total = p1.size() + p2.size() + p3.size();
  auto received = kj::heapArray<kj::byte>(total);
  b->read(received.begin(), total).wait(ctx.waitScope);
  writing.wait(ctx.waitScope);
  EXPECT_EQ(memcmp(received.begin(), p1.begin(), p1.size()), 0);
  EXPECT_EQ(memcmp(received.begin() + p1.size(), p2.begin(), p2.size()), 0);
  EXPECT_EQ(memcmp(received.begin() + p1.size() + p2.size(), p3.begin(), p3.size()), 0);
}

TEST(FdStreams, ReadWithMinBytesSpansSeveralWrites) {
  IoContext ctx;
  auto pipe = makePipe();
  int writeFd = pipe.b.get();
  auto in = wrapInputFd(ctx.port, kj::mv(pipe.a));
  kj::byte buf[200];
  auto reading = in->tryRead(buf, 100, sizeof(buf));
  kj::Timer& timer = ctx.port.timer();
  kj::Promise<void> writes = kj::READY_NOW;
  for (int i = 0; i < 12; ++i) {
    writes = writes.then([&timer]() { return timer.afterDelay(1 * kj::MILLISECONDS); })
                 .then([writeFd, i]() {
                   char chunk[10];
                   memset(chunk, 'a' + i, sizeof(chunk));
                   KJ_SYSCALL(::write(writeFd, chunk, sizeof(chunk)));
                 });
  }
  size_t n = reading.wait(ctx.waitScope);
  EXPECT_GE(n, 100u);
  EXPECT_LE(n, 120u);
  EXPECT_EQ(buf[0], 'a');
  EXPECT_EQ(buf[99], 'a' + 9);
  writes.wait(ctx.waitScope);
}

TEST(FdStreams, SmallReadsComeFromOneRequest) {
  IoContext ctx;
  auto pair = makeSocketPair();
  auto b = wrapSocketFd(ctx.port, kj::mv(pair.b));
  // Three "messages" arrive at once; reading header-sized pieces must return
  // them in order, exactly.
  KJ_SYSCALL(::write(pair.a.get(), "head0001body-one-head0002body-two-", 34));
  char buf[16];
  EXPECT_EQ(b->tryRead(buf, 8, 8).wait(ctx.waitScope), 8u);
  EXPECT_EQ(kj::heapString(buf, 8), "head0001");
  EXPECT_EQ(b->tryRead(buf, 9, 9).wait(ctx.waitScope), 9u);
  EXPECT_EQ(kj::heapString(buf, 9), "body-one-");
  EXPECT_EQ(b->tryRead(buf, 1, 16).wait(ctx.waitScope), 16u);
  EXPECT_EQ(kj::heapString(buf, 16), "head0002body-two");
  EXPECT_EQ(b->tryRead(buf, 1, 16).wait(ctx.waitScope), 1u);
  EXPECT_EQ(buf[0], '-');
  pair.a = {};
  EXPECT_EQ(b->tryRead(buf, 1, 16).wait(ctx.waitScope), 0u);
}

TEST(FdStreams, TryReadStopsAtEof) {
  IoContext ctx;
  auto pair = makeSocketPair();
  auto a = wrapSocketFd(ctx.port, kj::mv(pair.a));
  auto b = wrapSocketFd(ctx.port, kj::mv(pair.b));
  a->write("abc", 3).wait(ctx.waitScope);
  a->shutdownWrite();
  char buf[16];
  EXPECT_EQ(b->tryRead(buf, 10, sizeof(buf)).wait(ctx.waitScope), 3u);
  EXPECT_EQ(b->tryRead(buf, 1, sizeof(buf)).wait(ctx.waitScope), 0u);
  // The other direction still works after a half-close.
  b->write("xy", 2).wait(ctx.waitScope);
  EXPECT_EQ(a->tryRead(buf, 2, sizeof(buf)).wait(ctx.waitScope), 2u);
}

TEST(FdStreams, RegularFileTracksOffset) {
  IoContext ctx;
  char path[] = "/tmp/nodeagent-loop-test-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  unlink(path);
  kj::AutoCloseFd file(fd);
  int readFd;
  KJ_SYSCALL(readFd = open(kj::str("/proc/self/fd/", fd).cStr(), O_RDONLY | O_CLOEXEC));
  auto out = wrapOutputFd(ctx.port, kj::mv(file));
  auto in = wrapInputFd(ctx.port, kj::AutoCloseFd(readFd));
  out->write("hello ", 6).wait(ctx.waitScope);
  out->write("world", 5).wait(ctx.waitScope);
  EXPECT_EQ(in->readAllText().wait(ctx.waitScope), "hello world");
}

TEST(FdStreams, WhenWriteDisconnectedIgnoresHalfClose) {
  IoContext ctx;
  auto pair = makeSocketPair();
  auto a = wrapSocketFd(ctx.port, kj::mv(pair.a));
  auto disconnected = a->whenWriteDisconnected();
  auto second = a->whenWriteDisconnected();
  KJ_SYSCALL(::shutdown(pair.b.get(), SHUT_WR));
  ctx.port.timer().afterDelay(20 * kj::MILLISECONDS).wait(ctx.waitScope);
  EXPECT_FALSE(disconnected.poll(ctx.waitScope));
  pair.b = {};
  disconnected.wait(ctx.waitScope);
  second.wait(ctx.waitScope);
  EXPECT_TRUE(drainPort(ctx));
}

TEST(FdStreams, WhenWriteDisconnectedOnPipe) {
  IoContext ctx;
  auto pipe = makePipe();
  auto out = wrapOutputFd(ctx.port, kj::mv(pipe.b));
  auto disconnected = out->whenWriteDisconnected();
  ctx.waitScope.poll();
  EXPECT_FALSE(disconnected.poll(ctx.waitScope));
  pipe.a = {};
  disconnected.wait(ctx.waitScope);
}

TEST(FdStreams, ThousandsOfConcurrentStreams) {
  IoContext ctx(64);
  constexpr int kPairs = 500;
  constexpr size_t kSize = 64 * 1024;
  struct Conn {
    kj::Own<kj::AsyncIoStream> a, b;
    kj::Array<kj::byte> sent, received;
  };
  kj::Vector<Conn> conns;
  auto builder = kj::heapArrayBuilder<kj::Promise<void>>(2 * kPairs);
  for (int i = 0; i < kPairs; ++i) {
    auto pair = makeSocketPair();
    conns.add(Conn{wrapSocketFd(ctx.port, kj::mv(pair.a)), wrapSocketFd(ctx.port, kj::mv(pair.b)),
                   pattern(kSize, i), kj::heapArray<kj::byte>(kSize)});
  }
  for (auto& c : conns) {
    builder.add(c.a->write(c.sent.begin(), kSize));
    builder.add(c.b->read(c.received.begin(), kSize));
  }
  kj::joinPromises(builder.finish()).wait(ctx.waitScope);
  for (auto& c : conns) ASSERT_EQ(memcmp(c.sent.begin(), c.received.begin(), kSize), 0);
  EXPECT_EQ(ctx.port.pendingOperations(), 0u);
}

void exchange(IoContext& ctx, kj::AsyncIoStream& client, kj::AsyncIoStream& server) {
  client.write("ping", 4).wait(ctx.waitScope);
  char buf[8];
  server.read(buf, 4).wait(ctx.waitScope);
  EXPECT_EQ(memcmp(buf, "ping", 4), 0);
  server.write("pong!", 5).wait(ctx.waitScope);
  client.read(buf, 5).wait(ctx.waitScope);
  EXPECT_EQ(memcmp(buf, "pong!", 5), 0);
  client.shutdownWrite();
  EXPECT_EQ(server.tryRead(buf, 1, sizeof(buf)).wait(ctx.waitScope), 0u);
}

TEST(FdStreams, AcceptAndConnectOverUnixSocket) {
  IoContext ctx;
  sockaddr_un addr;
  memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  // Abstract namespace: nothing to clean up on disk.
  auto name = kj::str("nodeagent-loop-test-", getpid());
  memcpy(addr.sun_path + 1, name.begin(), name.size());
  socklen_t len = offsetof(sockaddr_un, sun_path) + 1 + name.size();
  int fd;
  KJ_SYSCALL(fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  kj::AutoCloseFd listenFd(fd);
  KJ_SYSCALL(bind(fd, reinterpret_cast<sockaddr*>(&addr), len));
  KJ_SYSCALL(listen(fd, 16));
  auto listener = wrapListenFd(ctx.port, kj::mv(listenFd));
  EXPECT_EQ(listener->getPort(), 0u);

  auto accepted = listener->accept();
  auto client =
      connectSocket(ctx.port, reinterpret_cast<sockaddr*>(&addr), len).wait(ctx.waitScope);
  auto server = accepted.wait(ctx.waitScope);
  exchange(ctx, *client, *server);
}

TEST(FdStreams, AcceptAndConnectOverTcpLoopback) {
  IoContext ctx;
  int fd;
  KJ_SYSCALL(fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  kj::AutoCloseFd listenFd(fd);
  sockaddr_in addr;
  memset(&addr, 0, sizeof(addr));
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  KJ_SYSCALL(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)));
  KJ_SYSCALL(listen(fd, 16));
  auto listener = wrapListenFd(ctx.port, kj::mv(listenFd));
  uint port = listener->getPort();
  ASSERT_NE(port, 0u);

  addr.sin_port = htons(port);
  auto accepted = listener->accept();
  auto client =
      connectSocket(ctx.port, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)).wait(ctx.waitScope);
  auto server = accepted.wait(ctx.waitScope);
  int nodelay = 0;
  uint size = sizeof(nodelay);
  server->getsockopt(IPPROTO_TCP, TCP_NODELAY, &nodelay, &size);
  EXPECT_EQ(nodelay, 1);
  exchange(ctx, *client, *server);

  // Several connections in flight at once.
  kj::Vector<kj::Promise<kj::Own<kj::AsyncIoStream>>> clients;
  kj::Vector<kj::Promise<kj::Own<kj::AsyncIoStream>>> servers;
  for (int i = 0; i < 10; ++i) {
    servers.add(listener->accept());
    clients.add(connectSocket(ctx.port, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)));
  }
  auto c = kj::joinPromises(clients.releaseAsArray()).wait(ctx.waitScope);
  auto s = kj::joinPromises(servers.releaseAsArray()).wait(ctx.waitScope);
  EXPECT_EQ(c.size(), 10u);
  EXPECT_EQ(s.size(), 10u);
}

TEST(FdStreams, ConnectRefusedIsDisconnected) {
  IoContext ctx;
  // Bind a port and close it again without listening: nobody accepts there.
  int fd;
  KJ_SYSCALL(fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr;
  memset(&addr, 0, sizeof(addr));
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  KJ_SYSCALL(bind(fd, reinterpret_cast<sockaddr*>(&addr), len));
  KJ_SYSCALL(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len));
  close(fd);
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                 connectSocket(ctx.port, reinterpret_cast<sockaddr*>(&addr), len)
                     .wait(ctx.waitScope);
               })) {
    EXPECT_EQ(e->getType(), kj::Exception::Type::DISCONNECTED);
  } else {
    ADD_FAILURE() << "connect to a closed port succeeded";
  }
}

TEST(FdStreams, DroppedAcceptDoesNotLeakTheConnection) {
  int before = countOpenFds();
  {
    IoContext ctx;
    int fd;
    KJ_SYSCALL(fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    kj::AutoCloseFd listenFd(fd);
    sockaddr_in addr;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    KJ_SYSCALL(bind(fd, reinterpret_cast<sockaddr*>(&addr), len));
    KJ_SYSCALL(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len));
    KJ_SYSCALL(listen(fd, 16));
    auto listener = wrapListenFd(ctx.port, kj::mv(listenFd));
    for (int i = 0; i < 20; ++i) {
      auto accepted = listener->accept();
      auto client =
          connectSocket(ctx.port, reinterpret_cast<sockaddr*>(&addr), len).wait(ctx.waitScope);
      // Drop the accept whether or not it has completed in the kernel.
      if (i % 2 == 0) ctx.waitScope.poll();
    }
    EXPECT_TRUE(drainPort(ctx));
  }
  EXPECT_EQ(countOpenFds(), before);
}

TEST(FdStreams, NoFdLeaks) {
  int before = countOpenFds();
  {
    IoContext ctx;
    auto pipe = makePipe();
    auto in = wrapInputFd(ctx.port, kj::mv(pipe.a));
    auto out = wrapOutputFd(ctx.port, kj::mv(pipe.b));
    out->write("x", 1).wait(ctx.waitScope);
    char c;
    in->read(&c, 1).wait(ctx.waitScope);

    auto pair = makeSocketPair();
    auto a = wrapSocketFd(ctx.port, kj::mv(pair.a));
    auto b = wrapSocketFd(ctx.port, kj::mv(pair.b));
    auto hangup = a->whenWriteDisconnected();
    auto pendingRead = b->tryRead(&c, 1, 1);

    int fd;
    KJ_SYSCALL(fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    kj::AutoCloseFd listenFd(fd);
    sockaddr_in addr;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    KJ_SYSCALL(bind(fd, reinterpret_cast<sockaddr*>(&addr), len));
    KJ_SYSCALL(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len));
    KJ_SYSCALL(listen(fd, 16));
    auto listener = wrapListenFd(ctx.port, kj::mv(listenFd));
    auto accepted = listener->accept();
    auto client =
        connectSocket(ctx.port, reinterpret_cast<sockaddr*>(&addr), len).wait(ctx.waitScope);
    auto server = accepted.wait(ctx.waitScope);
    auto pendingAccept = listener->accept();
    ctx.waitScope.poll();
    EXPECT_GT(countOpenFds(), before);
  }
  EXPECT_EQ(countOpenFds(), before);
}

}  // namespace
}  // namespace nodeagent::loop::test
