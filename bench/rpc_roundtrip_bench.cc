// Cap'n Proto echo round trip over a unix socketpair, on KJ's own epoll
// UnixEventPort and on the io_uring UringEventPort.
//
// CrossThread: client and server each run their own event loop on their own
// thread, so every call is a real socket round trip with a sleeping peer.
// SameThread: both vats share one loop (no thread wake-ups, just the I/O path).
//
// Cross-thread numbers depend on how fast an idle CPU wakes up: a socket
// wakes an epoll waiter as a "sync" wake-up (the scheduler may run it on the
// sender's CPU), an io_uring waiter is woken on its own CPU. On a VM with
// idle vCPUs that is much slower; compare with `taskset -c 0` to see the
// ring's own cost, and see the BusyPoll variant.
//
//   rpc_roundtrip_bench --benchmark_format=json
#include <benchmark/benchmark.h>
#include <capnp/rpc-twoparty.h>
#include <sys/socket.h>

#include <kj/async-io.h>
#include <kj/debug.h>
#include <thread>

#include "bench/bench_echo.capnp.h"
#include "loop/fd_streams.h"
#include "loop/io_context.h"

namespace nodeagent::bench {
namespace {

enum class Port { kEpoll, kUring, kUringBusyPoll };

// What kUringBusyPoll spins before sleeping (UringEventPort::setBusyPoll).
constexpr kj::Duration kBusyPoll = 50 * kj::MICROSECONDS;

class EchoImpl final : public BenchEcho::Server {
 protected:
  kj::Promise<void> echo(EchoContext context) override {
    context.getResults().setData(context.getParams().getData());
    return kj::READY_NOW;
  }
};

struct SocketPair {
  kj::AutoCloseFd client;
  kj::AutoCloseFd server;
};

SocketPair makeSocketPair() {
  int fds[2];
  KJ_SYSCALL(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds));
  return {kj::AutoCloseFd(fds[0]), kj::AutoCloseFd(fds[1])};
}

// Runs `body(stream, waitScope)` on a fresh event loop of the given kind.
template <typename Body>
void onLoop(Port port, kj::AutoCloseFd fd, Body&& body) {
  if (port != Port::kEpoll) {
    loop::IoContext ctx;
    if (port == Port::kUringBusyPoll) ctx.port.setBusyPoll(kBusyPoll);
    auto stream = loop::wrapSocketFd(ctx.port, kj::mv(fd));
    body(*stream, ctx.waitScope);
  } else {
    auto io = kj::setupAsyncIo();
    auto stream = io.lowLevelProvider->wrapSocketFd(kj::mv(fd));
    body(*stream, io.waitScope);
  }
}

void serve(kj::AsyncIoStream& stream, kj::WaitScope& waitScope) {
  capnp::TwoPartyVatNetwork network(stream, capnp::rpc::twoparty::Side::SERVER);
  auto server = capnp::makeRpcServer(network, kj::heap<EchoImpl>());
  network.onDisconnect().wait(waitScope);
}

void call(BenchEcho::Client& echo, kj::ArrayPtr<const kj::byte> payload, kj::WaitScope& waitScope) {
  auto request = echo.echoRequest();
  request.setData(payload);
  auto response = request.send().wait(waitScope);
  if (response.getData().size() != payload.size()) KJ_FAIL_ASSERT("short echo");
}

void crossThread(benchmark::State& state, Port port) {
  auto pair = makeSocketPair();
  // A raw fd crosses into the thread: AutoCloseFd's destructor may throw,
  // which std::thread's callable must not.
  std::thread server(
      [port, fd = pair.server.release()]() { onLoop(port, kj::AutoCloseFd(fd), serve); });
  auto payload = kj::heapArray<kj::byte>(size_t(state.range(0)));
  memset(payload.begin(), 'p', payload.size());
  onLoop(port, kj::mv(pair.client), [&](kj::AsyncIoStream& stream, kj::WaitScope& waitScope) {
    capnp::TwoPartyClient client(stream);
    auto echo = client.bootstrap().castAs<BenchEcho>();
    call(echo, payload, waitScope);  // bootstrap and warm up outside the timing
    for (auto _ : state) call(echo, payload, waitScope);
  });
  server.join();
  state.SetItemsProcessed(state.iterations());
}

void sameThread(benchmark::State& state, Port port) {
  auto pair = makeSocketPair();
  auto payload = kj::heapArray<kj::byte>(size_t(state.range(0)));
  memset(payload.begin(), 'p', payload.size());
  auto run = [&](kj::AsyncIoStream& clientStream, kj::AsyncIoStream& serverStream,
                 kj::WaitScope& waitScope) {
    capnp::TwoPartyVatNetwork network(serverStream, capnp::rpc::twoparty::Side::SERVER);
    auto server = capnp::makeRpcServer(network, kj::heap<EchoImpl>());
    capnp::TwoPartyClient client(clientStream);
    auto echo = client.bootstrap().castAs<BenchEcho>();
    call(echo, payload, waitScope);
    for (auto _ : state) call(echo, payload, waitScope);
  };
  if (port == Port::kUring) {
    loop::IoContext ctx;
    auto c = loop::wrapSocketFd(ctx.port, kj::mv(pair.client));
    auto s = loop::wrapSocketFd(ctx.port, kj::mv(pair.server));
    run(*c, *s, ctx.waitScope);
  } else {
    auto io = kj::setupAsyncIo();
    auto c = io.lowLevelProvider->wrapSocketFd(kj::mv(pair.client));
    auto s = io.lowLevelProvider->wrapSocketFd(kj::mv(pair.server));
    run(*c, *s, io.waitScope);
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_CrossThread_Epoll(benchmark::State& state) {
  crossThread(state, Port::kEpoll);
}
void BM_CrossThread_Uring(benchmark::State& state) {
  crossThread(state, Port::kUring);
}
void BM_CrossThread_UringBusyPoll(benchmark::State& state) {
  crossThread(state, Port::kUringBusyPoll);
}
void BM_SameThread_Epoll(benchmark::State& state) {
  sameThread(state, Port::kEpoll);
}
void BM_SameThread_Uring(benchmark::State& state) {
  sameThread(state, Port::kUring);
}

// Argument: payload bytes per call (and back).
BENCHMARK(BM_CrossThread_Epoll)->Arg(16)->Arg(16 * 1024)->UseRealTime();
BENCHMARK(BM_CrossThread_Uring)->Arg(16)->Arg(16 * 1024)->UseRealTime();
// Not a like-for-like comparison: both threads spin up to 50us before sleeping.
BENCHMARK(BM_CrossThread_UringBusyPoll)->Arg(16)->Arg(16 * 1024)->UseRealTime();
BENCHMARK(BM_SameThread_Epoll)->Arg(16)->Arg(16 * 1024)->UseRealTime();
BENCHMARK(BM_SameThread_Uring)->Arg(16)->Arg(16 * 1024)->UseRealTime();

}  // namespace
}  // namespace nodeagent::bench

BENCHMARK_MAIN();
