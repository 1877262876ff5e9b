#include "nodeagent/config.h"

#include <gtest/gtest.h>
#include <kj/debug.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace nodeagent {
namespace {

// A JSON file under $TMPDIR, removed at the end.
class TempFile {
 public:
  explicit TempFile(const std::string& contents) {
    const char* base = std::getenv("TMPDIR");
    path_ = std::string(base != nullptr ? base : "/tmp") + "/config_test.XXXXXX";
    int fd = mkstemp(path_.data());
    KJ_REQUIRE(fd >= 0, strerror(errno));
    KJ_REQUIRE(write(fd, contents.data(), contents.size()) == ssize_t(contents.size()));
    close(fd);
  }
  ~TempFile() { unlink(path_.c_str()); }
  const char* path() const { return path_.c_str(); }

 private:
  std::string path_;
};

// The description of the exception `fn` throws; fails the test if none.
template <typename Fn>
std::string errorOf(Fn&& fn) {
  KJ_IF_MAYBE (e, kj::runCatchingExceptions(kj::fwd<Fn>(fn))) {
    return e->getDescription().cStr();
  }
  ADD_FAILURE() << "no exception";
  return "";
}

#define EXPECT_CONTAINS(haystack, needle) \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)

LoadedConfig fromArgs(std::vector<const char*> args) {
  args.insert(args.begin(), "nodeagent");
  return loadConfigFromArgs(int(args.size()), args.data());
}

TEST(ConfigTest, DefaultsWithoutAFile) {
  auto config = loadConfig(nullptr);
  auto c = config.get();
  EXPECT_EQ(c.getStateDir(), "/var/lib/nodeagent");
  ASSERT_EQ(c.getListen().size(), 1u);
  EXPECT_EQ(c.getListen()[0], "unix:/run/nodeagent.sock");
  EXPECT_EQ(c.getUidBase(), 200000000u);
  EXPECT_EQ(c.getUidRangeSize(), 65536u);
  EXPECT_EQ(c.getMaxSandboxes(), 1000u);
  EXPECT_EQ(c.getLogLevel(), "info");
  EXPECT_TRUE(config.file == nullptr);
  validateConfig(c);

  auto fromNoArgs = fromArgs({});
  EXPECT_EQ(fromNoArgs.get().getStateDir(), "/var/lib/nodeagent");
}

TEST(ConfigTest, LedgerAndLimits) {
  auto defaults = loadConfig(nullptr);
  EXPECT_EQ(defaults.get().getLedger().getIntervalSeconds(), 60u);
  EXPECT_EQ(defaults.get().getLimits().getTenantRequestCap(), 0u);
  TempFile file(R"({"ledger": {"intervalSeconds": 1}, "limits": {"tenantRequestCap": "500"}})");
  auto config = loadConfig(kj::StringPtr(file.path()));
  EXPECT_EQ(config.get().getLedger().getIntervalSeconds(), 1u);
  EXPECT_EQ(config.get().getLimits().getTenantRequestCap(), 500u);
  validateConfig(config.get());
  config.root.getLedger().setIntervalSeconds(0);
  EXPECT_CONTAINS(errorOf([&] { validateConfig(config.get()); }), "ledger.intervalSeconds");
}

TEST(ConfigTest, FileOverridesDefaults) {
  TempFile file(R"({
    "stateDir": "/srv/nodeagent",
    "uidRangeSize": 1000,
    "maxMessageBytes": "1048576",
    "tls": {"certFile": "/etc/na/cert.pem"},
    "templates": [{"name": "big", "memoryBytes": 2147483648}, {"name": "small-2"}]
  })");
  auto config = loadConfig(kj::StringPtr(file.path()));
  auto c = config.get();
  EXPECT_EQ(c.getStateDir(), "/srv/nodeagent");
  EXPECT_EQ(c.getUidRangeSize(), 1000u);
  EXPECT_EQ(c.getMaxMessageBytes(), 1048576u);
  EXPECT_EQ(c.getTls().getCertFile(), "/etc/na/cert.pem");
  // Fields the file leaves out keep their defaults, also inside lists.
  EXPECT_EQ(c.getListen()[0], "unix:/run/nodeagent.sock");
  EXPECT_EQ(c.getCgroupRoot(), "nodeagent");
  ASSERT_EQ(c.getTemplates().size(), 2u);
  EXPECT_EQ(c.getTemplates()[0].getMemoryBytes(), 2147483648u);
  EXPECT_EQ(c.getTemplates()[0].getUsrDir(), "/usr");
  EXPECT_EQ(c.getTemplates()[1].getTimeoutSeconds(), 300u);
  KJ_IF_MAYBE (name, config.file) {
    EXPECT_EQ(*name, file.path());
  } else {
    ADD_FAILURE();
  }
  validateConfig(c);
}

TEST(ConfigTest, FlagsOverrideTheFile) {
  TempFile file(R"({"stateDir": "/srv/a", "listen": ["unix:/srv/a.sock"], "logLevel": "warn",
                    "maxSandboxes": 7})");
  auto config =
      fromArgs({"--config", file.path(), "--state-dir=/srv/b", "--listen", "tcp:127.0.0.1:7000",
                "--listen=unix:/tmp/b.sock", "--log-level", "debug"});
  auto c = config.get();
  EXPECT_EQ(c.getStateDir(), "/srv/b");
  ASSERT_EQ(c.getListen().size(), 2u);
  EXPECT_EQ(c.getListen()[0], "tcp:127.0.0.1:7000");
  EXPECT_EQ(c.getListen()[1], "unix:/tmp/b.sock");
  EXPECT_EQ(c.getLogLevel(), "debug");
  EXPECT_EQ(c.getMaxSandboxes(), 7u);  // from the file; no flag for it

  // Without --listen the file's list stays.
  auto kept = fromArgs({"--config", file.path()});
  ASSERT_EQ(kept.get().getListen().size(), 1u);
  EXPECT_EQ(kept.get().getListen()[0], "unix:/srv/a.sock");
}

TEST(ConfigTest, UnknownFieldsAreNamed) {
  TempFile top(R"({"stateDirectory": "/x"})");
  auto error = errorOf([&] { loadConfig(kj::StringPtr(top.path())); });
  EXPECT_CONTAINS(error, top.path());
  EXPECT_CONTAINS(error, "unknown field \"stateDirectory\"");
  EXPECT_CONTAINS(error, "stateDir");  // the list of valid names

  TempFile nested(R"({"tls": {"cert": "x"}, "templates": [{"name": "a"}, {"mem": 1}]})");
  error = errorOf([&] { loadConfig(kj::StringPtr(nested.path())); });
  EXPECT_CONTAINS(error, "\"tls.cert\"");
  EXPECT_CONTAINS(error, "\"templates[1].mem\"");
}

TEST(ConfigTest, MalformedJsonNamesTheFile) {
  TempFile file(R"({"stateDir": "/x",)");
  auto error = errorOf([&] { loadConfig(kj::StringPtr(file.path())); });
  EXPECT_CONTAINS(error, file.path());
  EXPECT_CONTAINS(error, "malformed JSON");

  TempFile array(R"(["not", "an", "object"])");
  EXPECT_CONTAINS(errorOf([&] { loadConfig(kj::StringPtr(array.path())); }), "JSON object");
}

TEST(ConfigTest, WrongTypeNamesTheFile) {
  TempFile file(R"({"uidRangeSize": "lots"})");
  EXPECT_CONTAINS(errorOf([&] { loadConfig(kj::StringPtr(file.path())); }), file.path());
}

TEST(ConfigTest, MissingFileGivenExplicitlyIsAnError) {
  auto error = errorOf([&] { fromArgs({"--config", "/nonexistent/nodeagent.json"}); });
  EXPECT_CONTAINS(error, "/nonexistent/nodeagent.json");
  EXPECT_CONTAINS(error, "No such file");
}

TEST(ConfigTest, BadFlags) {
  EXPECT_CONTAINS(errorOf([&] { fromArgs({"--frobnicate"}); }), "--frobnicate");
  EXPECT_CONTAINS(errorOf([&] { fromArgs({"--state-dir"}); }), "needs a value");
  EXPECT_CONTAINS(errorOf([&] { fromArgs({"--listen", "tcp:localhost"}); }), "tcp:localhost");
  EXPECT_CONTAINS(errorOf([&] { fromArgs({"--log-level", "loud"}); }), "loud");
  EXPECT_CONTAINS(errorOf([&] { fromArgs({"--state-dir", "relative/dir"}); }), "absolute");
}

TEST(ConfigTest, ParseListenAddress) {
  auto unix = parseListenAddress("unix:/run/nodeagent.sock");
  EXPECT_EQ(unix.kind, ListenAddress::Kind::kUnix);
  EXPECT_EQ(unix.path, "/run/nodeagent.sock");

  auto tcp = parseListenAddress("tcp:gw-1.example.com:7000");
  EXPECT_EQ(tcp.kind, ListenAddress::Kind::kTcp);
  EXPECT_EQ(tcp.host, "gw-1.example.com");
  EXPECT_EQ(tcp.port, 7000);

  auto v6 = parseListenAddress("tcp:[::1]:0");
  EXPECT_EQ(v6.host, "::1");
  EXPECT_EQ(v6.port, 0);
  EXPECT_EQ(parseListenAddress("tcp:0.0.0.0:65535").port, 65535);

  for (const char* bad : {"", "unix:", "udp:1.2.3.4:5", "tcp:1.2.3.4",
                          "tcp:1.2.3.4:", "tcp:1.2.3.4:65536", "tcp:1.2.3.4:-1", "tcp:::1:80",
                          "tcp:[xyz]:80", "tcp::80", "tcp:a b:80", "/run/nodeagent.sock"}) {
    EXPECT_CONTAINS(errorOf([&] { parseListenAddress(bad); }), std::string("\"") + bad + "\"");
  }
  std::string longPath = "unix:/" + std::string(200, 'x');
  EXPECT_CONTAINS(errorOf([&] { parseListenAddress(longPath); }), "too long");
}

TEST(ConfigTest, ValidateListsEveryProblem) {
  auto config = loadConfig(nullptr);
  auto c = config.root;
  c.setStateDir("var/lib");
  c.setUidRangeSize(0);
  c.setLogLevel("verbose");
  auto listen = c.initListen(2);
  listen.set(0, "unix:/ok.sock");
  listen.set(1, "unix:relative.sock");
  auto templates = c.initTemplates(3);
  templates[0].setName("py");
  templates[1].setName("py");
  templates[2].setName("Bad_Name");
  templates[2].setPidsMax(0);

  auto error = errorOf([&] { validateConfig(config.get()); });
  EXPECT_CONTAINS(error, "stateDir");
  EXPECT_CONTAINS(error, "uidRangeSize");
  EXPECT_CONTAINS(error, "verbose");
  EXPECT_CONTAINS(error, "listen[1]");
  EXPECT_CONTAINS(error, "\"py\" repeats templates[0]");
  EXPECT_CONTAINS(error, "Bad_Name");
  EXPECT_CONTAINS(error, "limits must be > 0");
  EXPECT_EQ(error.find("listen[0]"), std::string::npos) << error;

  c.setStateDir("/var/lib/x");
  c.setUidRangeSize(1);
  c.setUidBase(4294967000u);
  c.setMaxSandboxes(1000);
  EXPECT_CONTAINS(errorOf([&] { validateConfig(config.get()); }), "32-bit");
}

TEST(ConfigTest, WarmPoolsFitMaxSandboxes) {
  auto config = loadConfig(nullptr);
  auto c = config.root;
  c.setMaxSandboxes(10);
  auto templates = c.initTemplates(2);
  templates[0].setName("a");
  templates[0].setWarmPool(6);
  templates[1].setName("b");
  templates[1].setWarmPool(4);
  validateConfig(config.get());
  templates[1].setWarmPool(5);
  EXPECT_CONTAINS(errorOf([&] { validateConfig(config.get()); }), "warm pools (11)");
}

TEST(ConfigTest, EffectiveTemplates) {
  auto config = loadConfig(nullptr);
  auto builtins = effectiveTemplates(config.get());
  ASSERT_EQ(builtins.size(), 1u);
  auto python = builtins[0];
  EXPECT_EQ(python.getName(), "python");
  EXPECT_EQ(python.getUsrDir(), "/usr");
  EXPECT_EQ(python.getMemoryBytes(), 512u << 20);
  EXPECT_EQ(python.getCpuMillis(), 1000u);
  EXPECT_EQ(python.getPidsMax(), 256u);
  EXPECT_EQ(python.getDiskBytes(), 1u << 30);
  EXPECT_EQ(python.getTimeoutSeconds(), 300u);

  TempFile file(R"({"templates": [{"name": "node", "usrDir": "/opt/node/usr"}]})");
  auto configured = loadConfig(kj::StringPtr(file.path()));
  auto templates = effectiveTemplates(configured.get());
  ASSERT_EQ(templates.size(), 1u);
  EXPECT_EQ(templates[0].getName(), "node");
  EXPECT_EQ(templates[0].getUsrDir(), "/opt/node/usr");
}

}  // namespace
}  // namespace nodeagent
