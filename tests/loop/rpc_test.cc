// Cap'n Proto RPC with both vats on the io_uring port.
#include <capnp/rpc-twoparty.h>
#include <gtest/gtest.h>

#include <thread>

#include "loop/fd_streams.h"
#include "loop/io_context.h"
#include "loop/test_util.h"
#include "tests/loop/echo.capnp.h"

namespace nodeagent::loop::test {
namespace {

class EchoImpl final : public Echo::Server {
 public:
  int calls = 0;

 protected:
  kj::Promise<void> echo(EchoContext context) override {
    ++calls;
    context.getResults().setText(context.getParams().getText());
    return kj::READY_NOW;
  }
};

TEST(Rpc, EchoOverSocketPairInOneThread) {
  IoContext ctx;
  auto pair = makeSocketPair();
  auto serverStream = wrapSocketFd(ctx.port, kj::mv(pair.a));
  auto clientStream = wrapSocketFd(ctx.port, kj::mv(pair.b));

  auto impl = kj::heap<EchoImpl>();
  EchoImpl& server = *impl;
  capnp::TwoPartyVatNetwork serverNetwork(*serverStream, capnp::rpc::twoparty::Side::SERVER);
  auto rpcServer = capnp::makeRpcServer(serverNetwork, kj::mv(impl));

  capnp::TwoPartyClient client(*clientStream);
  auto echo = client.bootstrap().castAs<Echo>();
  for (int i = 0; i < 100; ++i) {
    auto request = echo.echoRequest();
    auto text = kj::str("hello ", i);
    request.setText(text);
    EXPECT_EQ(request.send().wait(ctx.waitScope).getText(), text);
  }

  // Pipelined: many calls in flight at once, and one large payload.
  kj::Vector<capnp::RemotePromise<Echo::EchoResults>> calls;
  for (int i = 0; i < 200; ++i) {
    auto request = echo.echoRequest();
    request.setText(kj::str(i));
    calls.add(request.send());
  }
  for (int i = 0; i < 200; ++i) {
    EXPECT_EQ(calls[i].wait(ctx.waitScope).getText(), kj::str(i));
  }
  auto request = echo.echoRequest();
  auto big = kj::heapString(3 * 1024 * 1024);
  memset(big.begin(), 'z', big.size());
  request.setText(big);
  EXPECT_EQ(request.send().wait(ctx.waitScope).getText().size(), big.size());
  EXPECT_EQ(server.calls, 301);
}

TEST(Rpc, EchoAcrossThreads) {
  auto pair = makeSocketPair();
  int serverFd = pair.a.release();
  std::thread serverThread([serverFd]() {
    IoContext ctx;
    auto stream = wrapSocketFd(ctx.port, kj::AutoCloseFd(serverFd));
    capnp::TwoPartyVatNetwork network(*stream, capnp::rpc::twoparty::Side::SERVER);
    auto rpcServer = capnp::makeRpcServer(network, kj::heap<EchoImpl>());
    network.onDisconnect().wait(ctx.waitScope);
  });
  {
    IoContext ctx;
    auto stream = wrapSocketFd(ctx.port, kj::mv(pair.b));
    capnp::TwoPartyClient client(*stream);
    auto echo = client.bootstrap().castAs<Echo>();
    for (int i = 0; i < 200; ++i) {
      auto request = echo.echoRequest();
      request.setText("ping");
      EXPECT_EQ(request.send().wait(ctx.waitScope).getText(), "ping");
    }
  }
  serverThread.join();
}

}  // namespace
}  // namespace nodeagent::loop::test
