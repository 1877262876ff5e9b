// Gateways over TCP with mutual TLS (needs root, and the openssl command to
// make a throwaway CA).
#include <netinet/in.h>
#include <sys/socket.h>

#include <fstream>

#include "e2e/agent_harness.h"
#include "support/privileged.h"

namespace nodeagent::testing {
namespace {

int freeLoopbackPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  int port = ntohs(addr.sin_port);
  close(fd);
  return port;
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    NODEAGENT_REQUIRE_ROOT();
    char tmpl[] = "/tmp/nodeagent-tls-XXXXXX";
    dir_ = mkdtemp(tmpl);
    // A CA, a server cert for 127.0.0.1, a gateway cert, and a stranger's
    // cert from another CA.
    std::string script =
        "set -e; cd " + dir_ +
        "\n"
        "gen() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
        "-days 1 -subj /CN=$2 -keyout $1.key -out $1.crt $3 2>/dev/null; }\n"
        "gen ca test-ca\n"
        "gen otherca other-ca\n"
        "sign() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=$2 "
        "-keyout $1.key -out $1.csr 2>/dev/null; printf \"$4\" > $1.ext; "
        "openssl x509 -req -in $1.csr -CA $3.crt -CAkey $3.key -CAcreateserial -days 1 "
        "-extfile $1.ext -out $1.crt 2>/dev/null; }\n"
        "sign server 127.0.0.1 ca 'subjectAltName=IP:127.0.0.1\\n'\n"
        "sign gateway gw-1 ca 'extendedKeyUsage=clientAuth\\n'\n"
        "sign stranger gw-evil otherca 'extendedKeyUsage=clientAuth\\n'\n";
    auto r = runCommand({"/bin/sh", "-c", script});
    ASSERT_EQ(r.exitCode, 0) << r.err;
    port_ = freeLoopbackPort();
    tlsConfig_ = ", \"tls\": {\"certFile\": \"" + dir_ + "/server.crt\", \"keyFile\": \"" + dir_ +
                 "/server.key\", \"caFile\": \"" + dir_ + "/ca.crt\"}";
  }
  void TearDown() override {
    if (!dir_.empty()) (void)!system(("rm -rf '" + dir_ + "'").c_str());
  }

  std::string dir_;
  std::string tlsConfig_;
  int port_ = 0;
};

TEST_F(TlsTest, GatewayWithCertificateIsServedOthersAreNot) {
  std::string tcp = "tcp:127.0.0.1:" + std::to_string(port_);
  AgentProcess agent({"--listen", tcp}, false, tlsConfig_);
  std::vector<std::string> base = {binDir() + "/sbx", "--connect", tcp};
  auto withCert = [&](const std::string& who, std::vector<std::string> cmd) {
    std::vector<std::string> argv = base;
    argv.insert(argv.end(), {"--tls-cert", dir_ + "/" + who + ".crt", "--tls-key",
                             dir_ + "/" + who + ".key", "--tls-ca", dir_ + "/ca.crt"});
    argv.insert(argv.end(), cmd.begin(), cmd.end());
    return runCommand(argv);
  };
  CommandResult ok;
  for (int i = 0; i < 200; ++i) {
    ok = withCert("gateway", {"ls"});
    if (ok.exitCode == 0) break;
    usleep(25000);
  }
  ASSERT_EQ(ok.exitCode, 0) << ok.err << agent.log();

  auto run = withCert("gateway", {"run", "--template", "python", "--", "echo", "over tls"});
  EXPECT_EQ(run.out, "over tls\n") << run.err;

  auto stranger = withCert("stranger", {"ls"});
  EXPECT_NE(stranger.exitCode, 0);
  std::vector<std::string> plain = base;
  plain.push_back("ls");
  auto noCert = runCommand(plain);
  EXPECT_NE(noCert.exitCode, 0);
  EXPECT_NE(noCert.err.find("tls"), std::string::npos) << noCert.err;

  // The audit log names the gateway by its certificate.
  EXPECT_NE(agent.log().find("tls:CN=gw-1"), std::string::npos) << agent.log();
}

}  // namespace
}  // namespace nodeagent::testing
