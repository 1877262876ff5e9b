#include "isolator/netlink.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_addr.h>
#include <netlink/errno.h>
#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <netlink/route/qdisc.h>
#include <netlink/route/qdisc/tbf.h>
#include <netlink/route/route.h>
#include <netlink/route/tc.h>
#include <sched.h>
#include <unistd.h>

#include <kj/debug.h>
#include <kj/io.h>

#include <algorithm>
#include <thread>

namespace nodeagent::isolator {

void NlSockDeleter::operator()(nl_sock* s) const {
  nl_socket_free(s);
}
void NlLinkDeleter::operator()(rtnl_link* l) const {
  rtnl_link_put(l);
}
void NlAddrDeleter::operator()(nl_addr* a) const {
  nl_addr_put(a);
}

void checkNl(int rc, kj::StringPtr what, int tolerated) {
  if (rc >= 0 || (tolerated != 0 && rc == -tolerated)) return;
  KJ_FAIL_REQUIRE("netlink request failed", what, nl_geterror(rc));
}

NlSocket openRouteSocket() {
  NlSocket sock(nl_socket_alloc());
  KJ_REQUIRE(sock != nullptr, "nl_socket_alloc failed");
  checkNl(nl_connect(sock.get(), NETLINK_ROUTE), "connecting a route netlink socket");
  return sock;
}

NlLink findLink(nl_sock* sock, kj::StringPtr name) {
  rtnl_link* link = nullptr;
  if (rtnl_link_get_kernel(sock, 0, name.cStr(), &link) < 0) return nullptr;
  return NlLink(link);
}

int linkIndex(nl_sock* sock, kj::StringPtr name) {
  NlLink link = findLink(sock, name);
  KJ_REQUIRE(link != nullptr, "no such network interface", name);
  return rtnl_link_get_ifindex(link.get());
}

void setLinkUp(nl_sock* sock, kj::StringPtr name) {
  NlLink link = findLink(sock, name);
  KJ_REQUIRE(link != nullptr, "no such network interface", name);
  NlLink change(rtnl_link_alloc());
  rtnl_link_set_flags(change.get(), IFF_UP);
  checkNl(rtnl_link_change(sock, link.get(), change.get(), 0), kj::str("bringing up ", name));
}

static NlAddress parseNlAddress(kj::StringPtr text) {
  nl_addr* parsed = nullptr;
  checkNl(nl_addr_parse(text.cStr(), AF_UNSPEC, &parsed), kj::str("parsing address ", text));
  return NlAddress(parsed);
}

void addAddress(nl_sock* sock, int ifindex, kj::StringPtr addressWithLength) {
  NlAddress local = parseNlAddress(addressWithLength);
  rtnl_addr* addr = rtnl_addr_alloc();
  KJ_DEFER(rtnl_addr_put(addr));
  rtnl_addr_set_ifindex(addr, ifindex);
  checkNl(rtnl_addr_set_local(addr, local.get()), "rtnl_addr_set_local");
  if (nl_addr_get_family(local.get()) == AF_INET6) rtnl_addr_set_flags(addr, IFA_F_NODAD);
  checkNl(rtnl_addr_add(sock, addr, 0), kj::str("adding address ", addressWithLength), NLE_EXIST);
}

void addDefaultRoute(nl_sock* sock, int ifindex, kj::StringPtr gateway) {
  NlAddress via = parseNlAddress(gateway);
  int family = nl_addr_get_family(via.get());
  NlAddress any(nl_addr_alloc(0));
  nl_addr_set_family(any.get(), family);
  nl_addr_set_prefixlen(any.get(), 0);
  rtnl_route* route = rtnl_route_alloc();
  KJ_DEFER(rtnl_route_put(route));
  rtnl_route_set_family(route, uint8_t(family));
  checkNl(rtnl_route_set_dst(route, any.get()), "rtnl_route_set_dst");
  rtnl_nexthop* hop = rtnl_route_nh_alloc();
  rtnl_route_nh_set_ifindex(hop, ifindex);
  rtnl_route_nh_set_gateway(hop, via.get());
  rtnl_route_add_nexthop(route, hop);  // the route owns it now
  checkNl(rtnl_route_add(sock, route, NLM_F_CREATE),
          kj::str("adding a default route via ", gateway), NLE_EXIST);
}

void setEgressRate(nl_sock* sock, int ifindex, uint64_t bitsPerSecond) {
  rtnl_qdisc* qdisc = rtnl_qdisc_alloc();
  KJ_DEFER(rtnl_qdisc_put(qdisc));
  rtnl_tc_set_ifindex(TC_CAST(qdisc), ifindex);
  rtnl_tc_set_parent(TC_CAST(qdisc), TC_H_ROOT);
  rtnl_tc_set_handle(TC_CAST(qdisc), TC_HANDLE(1, 0));
  if (bitsPerSecond == 0) {
    int rc = rtnl_qdisc_delete(sock, qdisc);
    if (rc < 0 && rc != -NLE_OBJ_NOTFOUND && rc != -NLE_NOADDR && rc != -NLE_INVAL) {
      checkNl(rc, "removing the egress rate cap");
    }
    return;
  }
  checkNl(rtnl_tc_set_kind(TC_CAST(qdisc), "tbf"), "tbf");
  uint64_t bytesPerSecond = bitsPerSecond / 8;
  KJ_REQUIRE(bytesPerSecond <= uint64_t(INT32_MAX), "egress rate too high for tbf", bitsPerSecond);
  // The bucket holds a few milliseconds at full rate and at least a 64 KiB
  // GSO packet, so large sends are not split; the queue holds ~100 ms, which
  // is where a local TCP sender feels back-pressure and settles at the rate.
  uint64_t bucket = std::max<uint64_t>(65536 + 1514, bytesPerSecond / 250);
  uint64_t limit = std::clamp<uint64_t>(bytesPerSecond / 10, 2 * bucket, 16u << 20);
  rtnl_qdisc_tbf_set_rate(qdisc, int(bytesPerSecond), int(bucket), 0);
  rtnl_qdisc_tbf_set_limit(qdisc, int(limit));
  checkNl(rtnl_qdisc_add(sock, qdisc, NLM_F_CREATE | NLM_F_REPLACE), "setting the egress rate cap");
}

void runInNetns(int netnsFd, kj::Function<void()> fn) {
  kj::Maybe<kj::Exception> failure;
  std::thread worker([&]() {
    failure = kj::runCatchingExceptions([&]() {
      KJ_SYSCALL(setns(netnsFd, CLONE_NEWNET), "joining a sandbox's network namespace");
      fn();
    });
  });
  worker.join();
  KJ_IF_MAYBE (e, failure) {
    kj::throwFatalException(kj::mv(*e));
  }
}

void writeSysctl(kj::StringPtr path, kj::StringPtr value) {
  int fd = open(path.cStr(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) KJ_FAIL_SYSCALL("open", errno, path);
  kj::AutoCloseFd owned(fd);
  ssize_t n = write(fd, value.cStr(), value.size());
  if (n < 0) KJ_FAIL_SYSCALL("write", errno, path, value);
}

}  // namespace nodeagent::isolator
