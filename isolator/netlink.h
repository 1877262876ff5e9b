// Small RAII layer over libnl-route for the agent's network set-up: a route
// netlink socket and the objects it hands out, with errors turned into
// kj::Exceptions that say what was being done.
#pragma once

#include <kj/common.h>
#include <kj/function.h>
#include <kj/string.h>

#include <memory>

struct nl_sock;
struct rtnl_link;
struct rtnl_addr;
struct rtnl_route;
struct rtnl_qdisc;
struct nl_addr;

namespace nodeagent::isolator {

struct NlSockDeleter {
  void operator()(nl_sock* s) const;
};
struct NlLinkDeleter {
  void operator()(rtnl_link* l) const;
};
struct NlAddrDeleter {
  void operator()(nl_addr* a) const;
};
using NlSocket = std::unique_ptr<nl_sock, NlSockDeleter>;
using NlLink = std::unique_ptr<rtnl_link, NlLinkDeleter>;
using NlAddress = std::unique_ptr<nl_addr, NlAddrDeleter>;

// A connected NETLINK_ROUTE socket in the calling thread's network namespace
// (it stays in that namespace whatever the thread does next).
NlSocket openRouteSocket();

// Throws with libnl's message unless `rc` is 0 or -`tolerated` (an NLE_* code, e.g.
// NLE_EXIST: libnl reports its own codes, not errno).
void checkNl(int rc, kj::StringPtr what, int tolerated = 0);

// The link called `name`, or null.
NlLink findLink(nl_sock* sock, kj::StringPtr name);
int linkIndex(nl_sock* sock, kj::StringPtr name);  // throws if absent

// Brings `name` up.
void setLinkUp(nl_sock* sock, kj::StringPtr name);

// Adds "ADDR/LEN" to the link (IPv6 without duplicate address detection, so
// it is usable at once). An address already there is fine.
void addAddress(nl_sock* sock, int ifindex, kj::StringPtr addressWithLength);

// Adds a default route via `gateway` ("10.0.0.1" or "fd00::1").
void addDefaultRoute(nl_sock* sock, int ifindex, kj::StringPtr gateway);

// Sets (or replaces) a token bucket root qdisc on the link capping what it
// sends at `bitsPerSecond`; 0 removes it.
void setEgressRate(nl_sock* sock, int ifindex, uint64_t bitsPerSecond);

// Runs `fn` on a short-lived thread that has joined the network namespace
// `netnsFd` (setns only moves the calling thread; the agent's threads stay
// where they are). Exceptions propagate.
void runInNetns(int netnsFd, kj::Function<void()> fn);

// Writes a /proc/sys value (in the calling thread's network namespace for
// the net.* ones).
void writeSysctl(kj::StringPtr path, kj::StringPtr value);

}  // namespace nodeagent::isolator
