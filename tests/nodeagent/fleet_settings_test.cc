// A fleet member's settings: the gossip keyring file (gossip_keys.h), the
// peer address parsing (udp_transport.h) and the gossip tunables from the
// config (gossip_config.h). Real files in a temporary directory, real sealing.
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include <kj/debug.h>

#include "nodeagent/api_error.h"
#include "nodeagent/config.h"
#include "nodeagent/fleet/gossip_config.h"
#include "nodeagent/fleet/gossip_keys.h"
#include "nodeagent/fleet/udp_transport.h"

namespace nodeagent::fleet {
namespace {

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/fleet-keys-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { (void)!system(("rm -rf '" + path_ + "'").c_str()); }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string readFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void writeFile(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

std::string hexKey() {
  auto key = cluster::Keyring::generateKey();
  std::string out;
  char b[3];
  for (auto byte : key) {
    snprintf(b, sizeof(b), "%02x", byte);
    out += b;
  }
  return out;
}

kj::Maybe<api::ErrorCode> errorOf(kj::Function<void()> f) {
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { f(); })) {
    return apiErrorCode(*e);
  }
  ADD_FAILURE() << "expected an API error";
  return nullptr;
}

const kj::byte kHello[] = {'h', 'e', 'l', 'l', 'o'};

TEST(GossipKeys, AMissingFileGetsANewPrivateKey) {
  TempDir dir;
  std::string path = dir.file("gossip.keys");
  GossipKeys keys(kj::str(path.c_str()));
  std::string text = readFile(path);
  ASSERT_EQ(text.size(), 65u);  // 64 hex digits and a newline
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(keys.ids().size(), 1u);
  // A second start reads the same key back.
  GossipKeys again(kj::str(path.c_str()));
  EXPECT_EQ(again.primaryId(), keys.primaryId());
  auto sealed = keys.keyring().seal(kHello);
  EXPECT_TRUE(again.keyring().open(sealed) != nullptr);
}

TEST(GossipKeys, MalformedFilesAreRefusedNamingTheLine) {
  TempDir dir;
  std::string path = dir.file("gossip.keys");
  writeFile(path, "# fleet key\n" + hexKey() + "\nnot-a-key\n");
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { GossipKeys keys(kj::str(path.c_str())); })) {
    EXPECT_NE(e->getDescription().findFirst('3'), nullptr) << e->getDescription().cStr();
    EXPECT_NE(std::string(e->getDescription().cStr()).find("64-hex-digit"), std::string::npos);
  } else {
    ADD_FAILURE() << "a malformed line was accepted";
  }
  writeFile(path, "# only a comment\n\n");
  EXPECT_TRUE(kj::runCatchingExceptions([&]() { GossipKeys keys(kj::str(path.c_str())); }) !=
              nullptr);
  // Comments, blank lines and CRLF are fine.
  std::string k1 = hexKey(), k2 = hexKey();
  writeFile(path, "# rotated 2026-11\r\n" + k1 + "\r\n\r\n" + k2 + "\n");
  GossipKeys keys(kj::str(path.c_str()));
  EXPECT_EQ(keys.ids().size(), 2u);
}

TEST(GossipKeys, RotationStepsPersistAndKeepOldPacketsReadable) {
  TempDir dir;
  std::string path = dir.file("gossip.keys");
  std::string k1 = hexKey(), k2 = hexKey();
  writeFile(path, k1 + "\n");
  GossipKeys keys(kj::str(path.c_str()));
  auto oldId = keys.primaryId();
  auto sealedWithOld = keys.keyring().seal(kHello);

  keys.add(k2.c_str());
  EXPECT_EQ(keys.primaryId(), oldId);  // adding does not switch sealing
  ASSERT_EQ(keys.ids().size(), 2u);
  kj::String newId = kj::str(keys.ids()[1]);
  keys.add(k2.c_str());  // again: nothing changes
  EXPECT_EQ(keys.ids().size(), 2u);

  keys.use(newId);
  EXPECT_EQ(keys.primaryId(), newId);
  EXPECT_EQ(readFile(path), k2 + "\n" + k1 + "\n");
  // A node still on the old key and one on the new understand each other.
  EXPECT_TRUE(keys.keyring().open(sealedWithOld) != nullptr);
  GossipKeys oldNode(kj::str(dir.file("old.keys").c_str()));
  oldNode.add(k1.c_str());
  EXPECT_TRUE(oldNode.keyring().open(keys.keyring().seal(kHello)) == nullptr);

  keys.remove(oldId);
  EXPECT_EQ(readFile(path), k2 + "\n");
  EXPECT_TRUE(keys.keyring().open(sealedWithOld) == nullptr);
  GossipKeys restarted(kj::str(path.c_str()));
  EXPECT_EQ(restarted.primaryId(), newId);
}

TEST(GossipKeys, BadRequestsAreTypedAndChangeNothing) {
  TempDir dir;
  std::string path = dir.file("gossip.keys");
  GossipKeys keys(kj::str(path.c_str()));
  std::string before = readFile(path);
  auto primary = keys.primaryId();
  EXPECT_EQ(errorOf([&]() { keys.add("zz"); }), api::ErrorCode::INVALID_ARGUMENT);
  EXPECT_EQ(errorOf([&]() { keys.add(kj::str(hexKey().substr(2).c_str(), "zz")); }),
            api::ErrorCode::INVALID_ARGUMENT);
  EXPECT_EQ(errorOf([&]() { keys.use("0123456789abcdef"); }), api::ErrorCode::NOT_FOUND);
  EXPECT_EQ(errorOf([&]() { keys.remove("0123456789abcdef"); }), api::ErrorCode::NOT_FOUND);
  EXPECT_EQ(errorOf([&]() { keys.remove(primary); }), api::ErrorCode::INVALID_ARGUMENT);
  EXPECT_EQ(readFile(path), before);
  EXPECT_EQ(keys.primaryId(), primary);
  // The ring is bounded.
  for (size_t i = 1; i < cluster::Keyring::kMaxKeys; ++i) keys.add(hexKey().c_str());
  EXPECT_EQ(errorOf([&]() { keys.add(hexKey().c_str()); }), api::ErrorCode::LIMIT_EXCEEDED);
  EXPECT_EQ(keys.ids().size(), cluster::Keyring::kMaxKeys);
}

TEST(FleetAddress, ParsesIpv4AndBracketedIpv6AndRefusesTheRest) {
  socklen_t len = 0;
  auto v4 = parseHostPort("10.231.0.10:7946", &len);
  ASSERT_TRUE(v4 != nullptr);
  EXPECT_EQ(len, sizeof(sockaddr_in));
  auto v6 = parseHostPort("[fd00::1]:7946", &len);
  ASSERT_TRUE(v6 != nullptr);
  EXPECT_EQ(len, sizeof(sockaddr_in6));
  for (const char* bad :
       {"", "10.0.0.1", "10.0.0.1:", "10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1:79x",
        "host.example:7946", "fd00::1:7946", "[fd00::1]7946", "[fd00::1:7946", "10.0.0.1:123456"}) {
    EXPECT_TRUE(parseHostPort(bad, &len) == nullptr) << bad;
  }
}

cluster::Config configFrom(const std::string& json, TempDir& dir) {
  std::string path = dir.file("config.json");
  writeFile(path, json);
  auto loaded = loadConfig(kj::StringPtr(path.c_str()));
  return gossipConfig(loaded.get().getCluster());
}

TEST(GossipConfig, ProfilesAndFieldByFieldTuning) {
  TempDir dir;
  auto fast = configFrom("{}", dir);
  EXPECT_EQ(fast.probeIntervalNs, cluster::Config::fastLan().probeIntervalNs);
  auto ml = configFrom(R"({"cluster": {"profile": "memberlist"}})", dir);
  EXPECT_EQ(ml.probeIntervalNs, cluster::Config::memberlist().probeIntervalNs);
  EXPECT_EQ(ml.suspicionMult, cluster::Config::memberlist().suspicionMult);
  auto tuned = configFrom(
      R"({"cluster": {"tuning": {"probeIntervalMillis": 800, "gossipNodes": 5,
          "suspicionMult": 2.5, "reapMillis": 120000}}})",
      dir);
  EXPECT_EQ(tuned.probeIntervalNs, 800'000'000);
  EXPECT_EQ(tuned.gossipNodes, 5u);
  EXPECT_EQ(tuned.suspicionMult, 2.5);
  EXPECT_EQ(tuned.reapNs, 120'000'000'000);
  // Untouched fields keep the profile's.
  EXPECT_EQ(tuned.probeTimeoutNs, cluster::Config::fastLan().probeTimeoutNs);
  EXPECT_EQ(tuned.gossipIntervalNs, cluster::Config::fastLan().gossipIntervalNs);
}

TEST(GossipConfig, ValuesTheProtocolCannotRunWithAreRefused) {
  TempDir dir;
  for (const char* bad : {R"({"cluster": {"profile": "wan"}})",
                          R"({"cluster": {"tuning": {"probeTimeoutMillis": 900}}})",
                          R"({"cluster": {"tuning": {"packetBudgetBytes": 100}}})"}) {
    EXPECT_TRUE(kj::runCatchingExceptions([&]() { configFrom(bad, dir); }) != nullptr) << bad;
  }
}

}  // namespace
}  // namespace nodeagent::fleet
