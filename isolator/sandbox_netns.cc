#include "isolator/sandbox_netns.h"

#include <net/if.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <kj/io.h>

#include "isolator/file_util.h"

namespace nodeagent::isolator {
namespace {

short loopbackFlags(int sock, ifreq& ifr) {
  memset(&ifr, 0, sizeof(ifr));
  strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  checkSyscall(ioctl(sock, SIOCGIFFLAGS, &ifr), "SIOCGIFFLAGS", "lo");
  return ifr.ifr_flags;
}

kj::AutoCloseFd inetSocket() {
  return kj::AutoCloseFd(
      checkSyscall(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket", "loopback"));
}

}  // namespace

bool loopbackIsUp() {
  kj::AutoCloseFd sock = inetSocket();
  ifreq ifr;
  return loopbackFlags(sock, ifr) & IFF_UP;
}

void prepareSandboxNetns() {
  kj::AutoCloseFd sock = inetSocket();
  ifreq ifr;
  ifr.ifr_flags = short(loopbackFlags(sock, ifr) | IFF_UP | IFF_RUNNING);
  checkSyscall(ioctl(sock, SIOCSIFFLAGS, &ifr), "SIOCSIFFLAGS", "lo");
  // /proc/sys/net shows the namespace of the thread that opens the file.
  kj::AutoCloseFd sys = openDirectory("/proc/sys/net/ipv4");
  writeFileAt(sys, "ip_unprivileged_port_start", "0", "/proc/sys/net/ipv4");
}

}  // namespace nodeagent::isolator
