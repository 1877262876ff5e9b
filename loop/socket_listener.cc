// wrapListenFd() and connectSocket(): the two ways a socket stream starts.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <kj/debug.h>

#include "loop/fd_streams.h"

namespace nodeagent::loop {
namespace {

// Cap'n Proto sends small messages and waits for answers: no Nagle delay.
void setNoDelay(int fd) {
  int one = 1;
  KJ_SYSCALL(::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)));
}

bool isInetSocket(int fd) {
  sockaddr_storage addr;
  socklen_t len = sizeof(addr);
  KJ_SYSCALL(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len));
  return addr.ss_family == AF_INET || addr.ss_family == AF_INET6;
}

class Listener final : public kj::ConnectionReceiver {
 public:
  Listener(UringEventPort& port, kj::AutoCloseFd fd)
      : port_(port), fd_(kj::mv(fd)), inet_(isInetSocket(fd_.get())) {}

  kj::Promise<kj::Own<kj::AsyncIoStream>> accept() override {
    return port_.acceptFd(fd_.get()).then([this](kj::AutoCloseFd connection) {
      if (inet_) setNoDelay(connection.get());
      return wrapSocketFd(port_, kj::mv(connection));
    });
  }

  uint getPort() override {
    sockaddr_storage addr;
    socklen_t len = sizeof(addr);
    KJ_SYSCALL(::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&addr), &len));
    switch (addr.ss_family) {
      case AF_INET:
        return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
      case AF_INET6:
        return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
      default:
        return 0;
    }
  }

  void getsockopt(int level, int option, void* value, uint* length) override {
    socklen_t len = *length;
    KJ_SYSCALL(::getsockopt(fd_.get(), level, option, value, &len));
    *length = len;
  }
  void setsockopt(int level, int option, const void* value, uint length) override {
    KJ_SYSCALL(::setsockopt(fd_.get(), level, option, value, length));
  }
  void getsockname(struct sockaddr* addr, uint* length) override {
    socklen_t len = *length;
    KJ_SYSCALL(::getsockname(fd_.get(), addr, &len));
    *length = len;
  }

 private:
  UringEventPort& port_;
  kj::AutoCloseFd fd_;
  bool inet_;
};

}  // namespace

kj::Own<kj::ConnectionReceiver> wrapListenFd(UringEventPort& port, kj::AutoCloseFd fd) {
  return kj::heap<Listener>(port, kj::mv(fd));
}

kj::Promise<kj::Own<kj::AsyncIoStream>> connectSocket(UringEventPort& port,
                                                      const struct sockaddr* addr, socklen_t len) {
  return kj::evalNow([&]() {
    int fd;
    KJ_SYSCALL(fd = ::socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    kj::AutoCloseFd socket(fd);
    if (addr->sa_family == AF_INET || addr->sa_family == AF_INET6) setNoDelay(fd);
    auto connected = port.connect(fd, addr, len);  // copies addr
    return connected.then(
        [&port, socket = kj::mv(socket)]() mutable { return wrapSocketFd(port, kj::mv(socket)); });
  });
}

}  // namespace nodeagent::loop
