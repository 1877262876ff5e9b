#include "support/fleet_pki.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <stdexcept>

#include "support/fleet_process.h"

namespace nodeagent::testing {

FleetPki::FleetPki(const std::vector<std::string>& nodeAddresses)
    : nodes_(int(nodeAddresses.size())) {
  std::string tmpl = "/tmp/naflt-pki-" + std::to_string(getpid()) + "-XXXXXX";
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("FleetPki: mkdtemp failed");
  dir_ = tmpl;
  try {
    runOrThrow({"openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=naflt-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                caKey(),
                "-out",
                caCert()});
    for (int i = 0; i < nodes_; ++i) {
      // KJ's TLS client matches the expected host (the peer's IP) against
      // DNS names and, without any, the CN: the CN carries the address; the
      // IP subjectAltName is for every other client.
      issue("node" + std::to_string(i), nodeAddresses[size_t(i)],
            "subjectAltName=IP:" + nodeAddresses[size_t(i)]);
    }
    issue("gw-fleet", "gw-fleet", "extendedKeyUsage=clientAuth");
  } catch (...) {
    removeTree(dir_);
    throw;
  }
}

FleetPki::~FleetPki() {
  removeTree(dir_);
}

std::string FleetPki::nodeCert(int i) const {
  if (i < 0 || i >= nodes_) throw std::out_of_range("FleetPki: no node " + std::to_string(i));
  return dir_ + "/node" + std::to_string(i) + ".crt";
}

std::string FleetPki::nodeKey(int i) const {
  if (i < 0 || i >= nodes_) throw std::out_of_range("FleetPki: no node " + std::to_string(i));
  return dir_ + "/node" + std::to_string(i) + ".key";
}

void FleetPki::issue(const std::string& name, const std::string& commonName,
                     const std::string& extensions) {
  const std::string base = dir_ + "/" + name;
  writeWholeFile(base + ".ext", "basicConstraints=CA:FALSE\n" + extensions + "\n");
  runOrThrow({"openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-nodes", "-subj", "/CN=" + commonName, "-keyout", base + ".key", "-out",
              base + ".csr"});
  runOrThrow({"openssl", "x509", "-req", "-in", base + ".csr", "-CA", caCert(), "-CAkey", caKey(),
              "-CAcreateserial", "-days", "2", "-extfile", base + ".ext", "-out", base + ".crt"});
  unlink((base + ".csr").c_str());
}

std::string randomGossipKey() {
  unsigned char bytes[32];
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  bool ok = fd >= 0 && read(fd, bytes, sizeof bytes) == ssize_t(sizeof bytes);
  if (fd >= 0) close(fd);
  if (!ok) throw std::runtime_error("randomGossipKey: cannot read /dev/urandom");
  std::string hex;
  char digits[3];
  for (unsigned char b : bytes) {
    snprintf(digits, sizeof digits, "%02x", b);
    hex += digits;
  }
  return hex;
}

}  // namespace nodeagent::testing
