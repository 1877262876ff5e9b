#include "isolator/sandbox_link.h"

#include <fcntl.h>
#include <linux/if.h>
#include <netlink/route/link.h>
#include <netlink/route/link/veth.h>

#include <kj/debug.h>
#include <kj/io.h>

#include "isolator/netlink.h"

namespace nodeagent::isolator {
namespace {

constexpr char kSandboxInterface[] = "eth0";

kj::AutoCloseFd openNetns(pid_t initPid) {
  auto path = kj::str("/proc/", initPid, "/ns/net");
  int fd = open(path.cStr(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) KJ_FAIL_SYSCALL("open", errno, path);
  return kj::AutoCloseFd(fd);
}

void deleteLink(nl_sock* sock, kj::StringPtr name) {
  NlLink link = findLink(sock, name);
  if (link != nullptr) checkNl(rtnl_link_delete(sock, link.get()), kj::str("deleting ", name));
}

}  // namespace

void attachSandboxLink(pid_t initPid, const SandboxAddressing& where,
                       uint64_t egressBitsPerSecond) {
  kj::AutoCloseFd netns = openNetns(initPid);
  NlSocket host = openRouteSocket();
  deleteLink(host.get(), where.hostVeth.c_str());
  int bridge = linkIndex(host.get(), where.bridge.c_str());

  NlLink veth(rtnl_link_veth_alloc());
  KJ_REQUIRE(veth != nullptr, "rtnl_link_veth_alloc failed");
  rtnl_link_set_name(veth.get(), where.hostVeth.c_str());
  rtnl_link_set_master(veth.get(), bridge);
  rtnl_link_set_flags(veth.get(), IFF_UP);
  NlLink peer(rtnl_link_veth_get_peer(veth.get()));
  rtnl_link_set_name(peer.get(), kSandboxInterface);
  rtnl_link_set_ns_fd(peer.get(), netns);
  checkNl(rtnl_link_add(host.get(), veth.get(), NLM_F_CREATE | NLM_F_EXCL),
          kj::str("creating veth ", where.hostVeth.c_str()));
  KJ_ON_SCOPE_FAILURE(deleteLink(host.get(), where.hostVeth.c_str()));

  runInNetns(netns, [&]() {
    NlSocket sock = openRouteSocket();
    int eth0 = linkIndex(sock.get(), kSandboxInterface);
    // Addresses are the agent's to give: no router advertisements, no SLAAC.
    writeSysctl("/proc/sys/net/ipv6/conf/eth0/accept_ra", "0");
    writeSysctl("/proc/sys/net/ipv6/conf/eth0/autoconf", "0");
    // ping works (ICMP echo sockets) without raw sockets; the packet program
    // judges where the echoes go.
    writeSysctl("/proc/sys/net/ipv4/ping_group_range", "0 4294967294");
    addAddress(sock.get(), eth0,
               kj::str(where.address4.toString().c_str(), "/", unsigned(where.prefix4)));
    KJ_IF_MAYBE (a6, where.address6) {
      addAddress(sock.get(), eth0, kj::str(a6->toString().c_str(), "/", unsigned(where.prefix6)));
    }
    setLinkUp(sock.get(), kSandboxInterface);
    addDefaultRoute(sock.get(), eth0, where.gateway4.toString().c_str());
    KJ_IF_MAYBE (g6, where.gateway6) {
      addDefaultRoute(sock.get(), eth0, g6->toString().c_str());
    }
    if (egressBitsPerSecond != 0) setEgressRate(sock.get(), eth0, egressBitsPerSecond);
  });
}

void detachSandboxLink(const SandboxAddressing& where) {
  NlSocket host = openRouteSocket();
  deleteLink(host.get(), where.hostVeth.c_str());
}

void setSandboxEgressRate(pid_t initPid, uint64_t egressBitsPerSecond) {
  kj::AutoCloseFd netns = openNetns(initPid);
  runInNetns(netns, [&]() {
    NlSocket sock = openRouteSocket();
    setEgressRate(sock.get(), linkIndex(sock.get(), kSandboxInterface), egressBitsPerSecond);
  });
}

}  // namespace nodeagent::isolator
