#include "isolator/host_network.h"

#include <errno.h>
#include <netlink/errno.h>
#include <netlink/route/link.h>
#include <netlink/route/link/bridge.h>
#include <nftables/libnftables.h>

#include <kj/debug.h>

#include <algorithm>

#include "isolator/netlink.h"

namespace nodeagent::isolator {
namespace {

struct NftContext {
  nft_ctx* ctx;
  NftContext() : ctx(nft_ctx_new(NFT_CTX_DEFAULT)) {
    KJ_REQUIRE(ctx != nullptr, "nft_ctx_new failed");
    nft_ctx_buffer_error(ctx);
    nft_ctx_buffer_output(ctx);
  }
  ~NftContext() { nft_ctx_free(ctx); }
  KJ_DISALLOW_COPY(NftContext);

  // Runs a ruleset (one atomic transaction); throws with nft's message.
  void run(const std::string& commands, bool mayFail = false) {
    if (nft_run_cmd_from_buffer(ctx, commands.c_str()) != 0 && !mayFail) {
      KJ_FAIL_REQUIRE("nftables refused the rules", nft_ctx_get_error_buffer(ctx), commands);
    }
  }
};

std::string natRules(const HostNetworkConfig& c) {
  std::string table = natTableName(c.bridge);
  std::string bridge = "\"" + c.bridge + "\"";
  std::string rules;
  // Declaring then deleting makes the replace work whether or not it existed.
  rules += "table inet " + table + " {}\n";
  rules += "delete table inet " + table + "\n";
  rules += "table inet " + table + " {\n";
  rules += "  chain postrouting {\n";
  rules += "    type nat hook postrouting priority srcnat; policy accept;\n";
  if (c.nat) {
    rules += "    ip saddr " + c.pool4.toString() + " oifname != " + bridge + " masquerade\n";
    KJ_IF_MAYBE (p6, c.pool6) {
      rules += "    ip6 saddr " + p6->toString() + " oifname != " + bridge + " masquerade\n";
    }
  }
  rules += "  }\n";
  rules += "  chain forward {\n";
  rules += "    type filter hook forward priority filter; policy accept;\n";
  // Replies reach sandboxes; nothing else is forwarded to them.
  rules += "    oifname " + bridge + " ct state established,related accept\n";
  rules += "    oifname " + bridge + " drop\n";
  rules += "  }\n";
  rules += "}\n";
  return rules;
}

}  // namespace

std::string natTableName(kj::StringPtr bridge) {
  return "nodeagent_" + std::string(bridge.cStr());
}

kj::Own<HostNetwork> HostNetwork::setUp(const HostNetworkConfig& config) {
  KJ_REQUIRE(!config.bridge.empty() && config.bridge.size() <= 9, "bridge name must be 1-9 chars",
             config.bridge);
  KJ_REQUIRE(config.pool4.isV4() && config.pool4.familyLength() <= 30,
             "ipv4Pool must be an IPv4 prefix of /30 or wider", config.pool4.toString());
  KJ_IF_MAYBE (p6, config.pool6) {
    KJ_REQUIRE(!p6->isV4() && p6->length() <= 120,
               "ipv6Pool must be an IPv6 prefix of /120 or wider", p6->toString());
  }
  auto host = kj::heap<HostNetwork>(config);
  NlSocket sock = openRouteSocket();
  if (findLink(sock.get(), config.bridge.c_str()) == nullptr) {
    checkNl(rtnl_link_bridge_add(sock.get(), config.bridge.c_str()),
            kj::str("creating bridge ", config.bridge.c_str()), NLE_EXIST);
  }
  int bridge = linkIndex(sock.get(), config.bridge.c_str());
  addAddress(sock.get(), bridge,
             kj::str(host->gateway4().toString().c_str(), "/", config.pool4.familyLength()));
  KJ_IF_MAYBE (g6, host->gateway6()) {
    KJ_IF_MAYBE (p6, config.pool6) {
      addAddress(sock.get(), bridge, kj::str(g6->toString().c_str(), "/", p6->familyLength()));
    }
  }
  setLinkUp(sock.get(), config.bridge.c_str());
  writeSysctl("/proc/sys/net/ipv4/ip_forward", "1");
  if (config.pool6 != nullptr) writeSysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1");
  NftContext nft;
  nft.run(natRules(config));
  return host;
}

void HostNetwork::tearDown(kj::StringPtr bridge) {
  NftContext nft;
  std::string table = natTableName(bridge);
  nft.run("table inet " + table + " {}\ndelete table inet " + table + "\n", true);
  NlSocket sock = openRouteSocket();
  NlLink link = findLink(sock.get(), bridge);
  if (link != nullptr) checkNl(rtnl_link_delete(sock.get(), link.get()), "deleting the bridge");
}

kj::Maybe<IpAddress> HostNetwork::gateway6() const {
  KJ_IF_MAYBE (p6, config_.pool6) {
    return p6->address().plus(1);
  }
  return nullptr;
}

uint32_t HostNetwork::capacity() const {
  // The network address, the gateway and (IPv4) broadcast are not sandboxes'.
  uint64_t n = config_.pool4.size() - 3;
  KJ_IF_MAYBE (p6, config_.pool6) {
    n = std::min(n, p6->size() - 2);
  }
  return uint32_t(std::min<uint64_t>(n, 1u << 20));
}

SandboxAddressing HostNetwork::addressing(uint32_t index) const {
  KJ_REQUIRE(index >= 1 && index <= capacity(), "sandbox address index out of the pool", index);
  SandboxAddressing a;
  a.hostVeth = config_.bridge + "v" + std::to_string(index);
  a.bridge = config_.bridge;
  a.gateway4 = gateway4();
  a.address4 = a.gateway4.plus(index);
  a.prefix4 = config_.pool4.familyLength();
  KJ_IF_MAYBE (p6, config_.pool6) {
    IpAddress g6 = p6->address().plus(1);
    a.gateway6 = g6;
    a.address6 = g6.plus(index);
    a.prefix6 = p6->familyLength();
  }
  return a;
}

}  // namespace nodeagent::isolator
