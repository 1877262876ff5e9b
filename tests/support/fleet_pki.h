// Throwaway TLS material for a fleet, made with the openssl command in a
// temporary directory (removed by the destructor):
//
//   ca.crt / ca.key            a self-signed CA (CN naflt-ca, P-256)
//   node<i>.crt / node<i>.key  CN and subjectAltName=IP: the address of node i,
//                              no extendedKeyUsage: good as TLS server and client
//   gw-fleet.crt / .key        a gateway client certificate (CN gw-fleet,
//                              extendedKeyUsage=clientAuth)
//
// Also makes gossip keys: 32 random bytes as 64 hex digits.
#pragma once

#include <string>
#include <vector>

namespace nodeagent::testing {

class FleetPki {
 public:
  // One node certificate per address, in order. Throws std::runtime_error.
  explicit FleetPki(const std::vector<std::string>& nodeAddresses);
  ~FleetPki();
  FleetPki(const FleetPki&) = delete;
  FleetPki& operator=(const FleetPki&) = delete;

  const std::string& dir() const { return dir_; }
  std::string caCert() const { return dir_ + "/ca.crt"; }
  std::string caKey() const { return dir_ + "/ca.key"; }
  std::string nodeCert(int i) const;
  std::string nodeKey(int i) const;
  std::string gatewayCert() const { return dir_ + "/gw-fleet.crt"; }
  std::string gatewayKey() const { return dir_ + "/gw-fleet.key"; }

  // Signs one more certificate with this CA: <dir>/<name>.crt and .key, with
  // `extensions` as openssl extfile lines (e.g. "subjectAltName=IP:10.231.0.99").
  // For tests of wrong names, expired roles and the like.
  void issue(const std::string& name, const std::string& commonName, const std::string& extensions);

 private:
  std::string dir_;
  int nodes_ = 0;
};

// 32 bytes from /dev/urandom as 64 lowercase hex digits.
std::string randomGossipKey();

}  // namespace nodeagent::testing
