// The gateway API through a C++ client against the real agent (needs root):
// concurrency, pipelining, limits and misbehaving clients.
#include <sys/socket.h>
#include <sys/un.h>

#include <map>
#include <set>
#include <sstream>

#include <kj/debug.h>

#include "e2e/agent_harness.h"
#include "e2e/output_collector.h"
#include "loop/io_context.h"
#include "nodeagent/api_error.h"
#include "nodeagent/config.h"
#include "nodeagent/rpc_endpoint.h"
#include "support/privileged.h"

namespace nodeagent::testing {
namespace {

class ApiTest : public SharedAgentTest<ApiTest> {
 protected:
  kj::Own<RpcConnection> connect(loop::IoContext& io, uint64_t maxMessage = 8 << 20) {
    return connectToNode(io.port, parseListenAddress(agent_->target()), nullptr, maxMessage)
        .wait(io.waitScope);
  }

  static api::Sandbox::Client create(api::Node::Client node, kj::WaitScope& ws) {
    auto req = node.createRequest();
    req.initSpec().setTemplate("python");
    req.getSpec().setTenant("api");
    return req.send().wait(ws).getSandbox();
  }
};

TEST_F(ApiTest, CreateAndExecPipelinedInOneRoundTrip) {
  loop::IoContext io;
  auto conn = connect(io);
  auto node = conn->bootstrap().castAs<api::Node>();
  auto createReq = node.createRequest();
  createReq.initSpec().setTemplate("python");
  createReq.getSpec().setTenant("api");
  auto created = createReq.send();
  std::string out, err;
  auto exec = created.getSandbox().execRequest();
  auto argv = exec.initRequest().initArgv(3);
  argv.set(0, "python3");
  argv.set(1, "-c");
  argv.set(2, "print('pipelined')");
  exec.setOutput(kj::heap<Collector>(&out, &err));
  auto response = exec.send().getProcess().waitRequest().send().wait(io.waitScope);
  auto status = response.getStatus();
  EXPECT_EQ(status.getReason(), api::ExitReason::EXITED);
  EXPECT_EQ(status.getCode(), 0);
  EXPECT_EQ(out, "pipelined\n");
  created.getSandbox().killRequest().send().wait(io.waitScope);
}

TEST_F(ApiTest, ThirtyTwoConcurrentExecs) {
  loop::IoContext io;
  auto conn = connect(io);
  auto node = conn->bootstrap().castAs<api::Node>();
  auto sandbox = create(node, io.waitScope);
  constexpr int kCount = 32;
  std::vector<std::string> outs(kCount), errs(kCount);
  kj::Vector<kj::Promise<void>> all;
  std::vector<int> codes(kCount, -1);
  for (int i = 0; i < kCount; ++i) {
    auto req = sandbox.execRequest();
    auto argv = req.initRequest().initArgv(3);
    argv.set(0, "python3");
    argv.set(1, "-c");
    argv.set(2, kj::str("import sys; print(", i, "); print(", i, "*2, file=sys.stderr); sys.exit(",
                        i % 7, ")"));
    req.setOutput(kj::heap<Collector>(&outs[i], &errs[i]));
    all.add(req.send().getProcess().waitRequest().send().then(
        [&codes, i](auto&& r) { codes[i] = r.getStatus().getCode(); }));
  }
  kj::joinPromises(all.releaseAsArray()).wait(io.waitScope);
  for (int i = 0; i < kCount; ++i) {
    EXPECT_EQ(outs[i], std::to_string(i) + "\n");
    EXPECT_EQ(errs[i], std::to_string(i * 2) + "\n");
    EXPECT_EQ(codes[i], i % 7);
  }
  sandbox.killRequest().send().wait(io.waitScope);
}

// Creates launch on a worker thread, several under way at once: each gets a
// uid range of its own (reserved when its launch starts, not when it is
// ready), and every one of them serves its first (pipelined) exec.
TEST_F(ApiTest, ConcurrentCreatesEachGetTheirOwnUidRange) {
  loop::IoContext io;
  auto conn = connect(io);
  auto node = conn->bootstrap().castAs<api::Node>();
  constexpr int kCreates = 6;
  kj::Vector<kj::Promise<void>> all;
  std::vector<api::Sandbox::Client> created;
  std::vector<std::string> uidMaps(kCreates), errs(kCreates);
  for (int i = 0; i < kCreates; ++i) {
    auto req = node.createRequest();
    req.initSpec().setTemplate("python");
    req.getSpec().setTenant("api-concurrent");
    req.getSpec().setDiskBytes(48 << 20);  // no warm pool's size: each one is a launch
    auto sent = req.send();
    created.push_back(sent.getSandbox());
    auto exec = sent.getSandbox().execRequest();
    auto argv = exec.initRequest().initArgv(3);
    argv.set(0, "cat");
    argv.set(1, "/proc/self/uid_map");
    argv.set(2, "/proc/self/gid_map");
    exec.setOutput(kj::heap<Collector>(&uidMaps[size_t(i)], &errs[size_t(i)]));
    all.add(exec.send().getProcess().waitRequest().send().then(
        [](auto&& r) { EXPECT_EQ(r.getStatus().getCode(), 0); }));
  }
  kj::joinPromises(all.releaseAsArray()).wait(io.waitScope);
  // Each map's host side: "inside outside count" per line, the uid map's
  // lines then the gid map's.
  std::set<std::string> uids, gids;
  for (auto& maps : uidMaps) {
    std::istringstream in(maps);
    std::string uidInside, uidOutside, uidCount, gidInside, gidOutside, gidCount;
    in >> uidInside >> uidOutside >> uidCount >> gidInside >> gidOutside >> gidCount;
    EXPECT_FALSE(gidOutside.empty()) << maps;
    EXPECT_EQ(uidOutside, gidOutside) << "uid and gid ranges are the sandbox's alike\n" << maps;
    uids.insert(uidOutside);
    gids.insert(gidOutside);
  }
  EXPECT_EQ(uids.size(), size_t(kCreates)) << "two sandboxes share a uid range";
  EXPECT_EQ(gids.size(), size_t(kCreates)) << "two sandboxes share a gid range";
  for (auto& sandbox : created) sandbox.killRequest().send().wait(io.waitScope);
}

TEST_F(ApiTest, OversizedMessageClosesOnlyThatConnection) {
  loop::IoContext io;
  auto conn = connect(io);
  auto node = conn->bootstrap().castAs<api::Node>();
  auto sandbox = create(node, io.waitScope);
  auto files = sandbox.filesRequest().send().getFiles();
  auto writeReq = files.writeRequest();
  writeReq.setPath("/tmp/huge");
  auto sink = writeReq.send().getSink();
  auto big = sink.writeRequest();
  big.initData(12 << 20);  // over the agent's 8 MiB message limit
  auto result = big.send().then([]() { return true; }, [](kj::Exception&&) { return false; });
  auto done = sink.doneRequest().send().then([](auto&&) { return true; },
                                             [](kj::Exception&&) { return false; });
  EXPECT_FALSE(result.wait(io.waitScope) && done.wait(io.waitScope));

  // A new connection is served, and the sandbox is intact without the file.
  auto conn2 = connect(io);
  auto node2 = conn2->bootstrap().castAs<api::Node>();
  auto list = node2.listRequest().send().wait(io.waitScope);
  EXPECT_GE(list.getSandboxes().size(), 1u);
  auto info = node2.infoRequest().send().wait(io.waitScope);
  EXPECT_EQ(info.getInfo().getMaxMessageBytes(), 8u << 20);
}

TEST_F(ApiTest, ClientThatDisconnectsMidUploadLeavesNoFile) {
  kj::String id;
  {
    loop::IoContext io;
    auto conn = connect(io);
    auto node = conn->bootstrap().castAs<api::Node>();
    auto req = node.createRequest();
    req.initSpec().setTemplate("python");
    req.getSpec().setTenant("api");
    auto created = req.send().wait(io.waitScope);
    id = kj::str(created.getId());
    auto files = created.getSandbox().filesRequest().send().getFiles();
    auto w = files.writeRequest();
    w.setPath("/tmp/partial");
    auto sink = w.send().getSink();
    for (int i = 0; i < 4; ++i) {
      auto chunk = sink.writeRequest();
      chunk.initData(64 << 10);
      chunk.send().wait(io.waitScope);
    }
    // Drop the connection without done().
  }
  {
    loop::IoContext io;
    auto conn = connect(io);
    auto node = conn->bootstrap().castAs<api::Node>();
    auto open = node.openRequest();
    open.setId(id);
    auto sandbox = open.send().getSandbox();
    auto files = sandbox.filesRequest().send().getFiles();
    auto list = files.listRequest();
    list.setPath("/tmp");
    // The upload's temporary goes away once the agent notices the disconnect.
    bool clean = false;
    for (int attempt = 0; attempt < 50 && !clean; ++attempt) {
      auto entries = list.send().wait(io.waitScope).getEntries();
      clean = entries.size() == 0;
      if (!clean) io.port.timer().afterDelay(20 * kj::MILLISECONDS).wait(io.waitScope);
    }
    EXPECT_TRUE(clean);
    auto stat = files.statRequest();
    stat.setPath("/tmp/partial");
    auto failed =
        stat.send().then([](auto&&) -> kj::Maybe<kj::Exception> { return nullptr; },
                         [](kj::Exception&& e) -> kj::Maybe<kj::Exception> { return kj::mv(e); });
    KJ_IF_MAYBE (e, failed.wait(io.waitScope)) {
      EXPECT_EQ(apiErrorCode(*e), api::ErrorCode::NOT_FOUND) << e->getDescription().cStr();
    } else {
      ADD_FAILURE() << "a half-uploaded file appeared";
    }
    sandbox.killRequest().send().wait(io.waitScope);
  }
}

TEST_F(ApiTest, ClientThatDisconnectsMidOutputDoesNotHurtTheAgent) {
  kj::String id;
  {
    loop::IoContext io;
    auto conn = connect(io);
    auto node = conn->bootstrap().castAs<api::Node>();
    auto req = node.createRequest();
    req.initSpec().setTemplate("python");
    req.getSpec().setTenant("api");
    auto created = req.send().wait(io.waitScope);
    id = kj::str(created.getId());
    std::string out, err;
    auto exec = created.getSandbox().execRequest();
    auto argv = exec.initRequest().initArgv(1);
    argv.set(0, "yes");
    exec.setOutput(kj::heap<Collector>(&out, &err));
    auto process = exec.send().wait(io.waitScope).getProcess();
    io.port.timer().afterDelay(100 * kj::MILLISECONDS).wait(io.waitScope);
    EXPECT_GT(out.size(), 0u);
  }
  auto r = agent_->sbx({"exec", id.cStr(), "--", "echo", "still here"});
  EXPECT_EQ(r.out, "still here\n");
  agent_->sbx({"kill", id.cStr()});
}

template <typename T>
kj::Maybe<api::ErrorCode> errorOf(kj::Promise<T>&& promise, kj::WaitScope& ws) {
  return promise
      .then([](auto&&) -> kj::Maybe<api::ErrorCode> { return nullptr; },
            [](kj::Exception&& e) -> kj::Maybe<api::ErrorCode> {
              KJ_IF_MAYBE (code, apiErrorCode(e)) {
                return *code;
              }
              return api::ErrorCode::INTERNAL;
            })
      .wait(ws);
}

TEST_F(ApiTest, FilesListStatMkdirRemove) {
  loop::IoContext io;
  auto conn = connect(io);
  auto node = conn->bootstrap().castAs<api::Node>();
  auto sandbox = create(node, io.waitScope);
  auto files = sandbox.filesRequest().send().getFiles();

  auto mkdir = files.mkdirRequest();
  mkdir.setPath("/work/a/b");
  mkdir.setParents(true);
  mkdir.send().wait(io.waitScope);
  auto again = files.mkdirRequest();
  again.setPath("/work");
  EXPECT_EQ(errorOf(again.send(), io.waitScope), api::ErrorCode::ALREADY_EXISTS);

  auto write = files.writeRequest();
  write.setPath("/work/a/hello.txt");
  write.setMode(0600);
  auto sink = write.send().getSink();
  auto chunk = sink.writeRequest();
  chunk.setData(kj::StringPtr("hello").asBytes());
  chunk.send().wait(io.waitScope);
  sink.doneRequest().send().wait(io.waitScope);

  auto list = files.listRequest();
  list.setPath("/work/a");
  auto listed = list.send().wait(io.waitScope);
  std::map<std::string, api::FileInfo::Type> seen;
  for (auto e : listed.getEntries()) seen[e.getName().cStr()] = e.getType();
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen["b"], api::FileInfo::Type::DIRECTORY);
  EXPECT_EQ(seen["hello.txt"], api::FileInfo::Type::FILE);

  auto stat = files.statRequest();
  stat.setPath("/work/a/hello.txt");
  auto st = stat.send().wait(io.waitScope);
  EXPECT_EQ(st.getInfo().getSize(), 5u);
  EXPECT_EQ(st.getInfo().getMode(), 0600u);

  auto missing = files.statRequest();
  missing.setPath("/work/nope");
  EXPECT_EQ(errorOf(missing.send(), io.waitScope), api::ErrorCode::NOT_FOUND);
  auto escape = files.listRequest();
  escape.setPath("/work/../../etc");
  EXPECT_EQ(errorOf(escape.send(), io.waitScope), api::ErrorCode::INVALID_PATH);

  auto notEmpty = files.removeRequest();
  notEmpty.setPath("/work");
  EXPECT_EQ(errorOf(notEmpty.send(), io.waitScope), api::ErrorCode::INVALID_PATH);
  auto remove = files.removeRequest();
  remove.setPath("/work");
  remove.setRecursive(true);
  remove.send().wait(io.waitScope);
  auto gone = files.statRequest();
  gone.setPath("/work");
  EXPECT_EQ(errorOf(gone.send(), io.waitScope), api::ErrorCode::NOT_FOUND);

  // Reading a directory is a typed error, not a hang or a crash.
  auto read = files.readRequest();
  read.setPath("/etc");
  struct Sink final : public api::ByteSink::Server {};
  read.setSink(kj::heap<Sink>());
  EXPECT_EQ(errorOf(read.send(), io.waitScope), api::ErrorCode::INVALID_PATH);
  sandbox.killRequest().send().wait(io.waitScope);
}

TEST_F(ApiTest, GarbageOnTheSocketIsRefused) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  strcpy(addr.sun_path, agent_->socketPath().c_str());
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  // A segment table claiming a 2 GiB message, then junk.
  uint32_t header[2] = {0, 0x10000000};
  ASSERT_EQ(send(fd, header, sizeof(header), MSG_NOSIGNAL), ssize_t(sizeof(header)));
  char junk[4096];
  memset(junk, 0xAB, sizeof(junk));
  (void)!send(fd, junk, sizeof(junk), MSG_NOSIGNAL);  // the agent may have hung up already
  char buf[256];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) {
  }
  EXPECT_EQ(n, 0) << "the agent closes the connection";
  close(fd);
  EXPECT_EQ(agent_->sbx({"ls"}).exitCode, 0);
}

}  // namespace
}  // namespace nodeagent::testing

namespace nodeagent::testing {
namespace {

// A node at its maxSandboxes refuses a create with limitExceeded and loses
// nothing; a kill makes room for the very next create, even one sent right
// behind the kill (whose sandbox the kernel may still be tearing down).
TEST(NodeLimitTest, AtItsMaximumCreatesAreRefusedUntilAKillMakesRoom) {
  NODEAGENT_REQUIRE_ROOT();
  AgentProcess agent({}, true, ", \"maxSandboxes\": 2");
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  loop::IoContext io;
  auto conn = connectToNode(io.port, parseListenAddress(agent.target()), nullptr, 8 << 20)
                  .wait(io.waitScope);
  auto node = conn->bootstrap().castAs<api::Node>();
  auto createRequest = [&]() {
    auto req = node.createRequest();
    req.initSpec().setTemplate("python");
    req.getSpec().setTenant("limits");
    return req;
  };
  auto first = createRequest().send().wait(io.waitScope);
  auto second = createRequest().send().wait(io.waitScope);
  for (int i = 0; i < 3; ++i) {
    auto refused = errorOf(createRequest().send(), io.waitScope);
    ASSERT_TRUE(refused != nullptr);
    EXPECT_EQ(KJ_ASSERT_NONNULL(refused), api::ErrorCode::LIMIT_EXCEEDED);
  }
  // The refusals cost nothing: both sandboxes still serve.
  int code = -1;
  for (auto* created : {&first, &second}) {
    auto exec = created->getSandbox().execRequest();
    exec.initRequest().initArgv(1).set(0, "true");
    code = exec.send().getProcess().waitRequest().send().wait(io.waitScope).getStatus().getCode();
    EXPECT_EQ(code, 0);
  }
  // Kill and create in one write: the create waits out the teardown.
  auto killed = first.getSandbox().killRequest().send();
  auto third = createRequest().send();
  killed.wait(io.waitScope);
  auto made = third.wait(io.waitScope);
  EXPECT_NE(std::string(made.getId().cStr()), std::string(first.getId().cStr()));
  auto exec = made.getSandbox().execRequest();
  exec.initRequest().initArgv(1).set(0, "true");
  EXPECT_EQ(exec.send().getProcess().waitRequest().send().wait(io.waitScope).getStatus().getCode(),
            0);
  made.getSandbox().killRequest().send().wait(io.waitScope);
  second.getSandbox().killRequest().send().wait(io.waitScope);
}

}  // namespace
}  // namespace nodeagent::testing
