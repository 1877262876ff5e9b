#include "nodeagent/rpc_endpoint.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <kj/debug.h>
#include <kj/filesystem.h>

#include "loop/fd_streams.h"

namespace nodeagent {
namespace {

kj::String readWholeFile(kj::StringPtr path) {
  auto fs = kj::newDiskFilesystem();
  auto file = fs->getRoot().openFile(fs->getCurrentPath().eval(path));
  return file->readAllText();
}

sockaddr_un unixAddress(kj::StringPtr path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  KJ_REQUIRE(path.size() < sizeof(addr.sun_path), "unix socket path too long", path);
  memcpy(addr.sun_path, path.begin(), path.size());
  return addr;
}

}  // namespace

// Resolves a numeric or named TCP host; the first address wins.
sockaddr_storage tcpAddress(const ListenAddress& address, socklen_t* len) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* result = nullptr;
  kj::String port = kj::str(address.port);
  int rc = getaddrinfo(address.host.cStr(), port.cStr(), &hints, &result);
  KJ_REQUIRE(rc == 0, "cannot resolve", address.host, gai_strerror(rc));
  KJ_DEFER(freeaddrinfo(result));
  sockaddr_storage storage{};
  memcpy(&storage, result->ai_addr, result->ai_addrlen);
  *len = result->ai_addrlen;
  return storage;
}

capnp::ReaderOptions readerOptionsFor(uint64_t maxMessageBytes) {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = maxMessageBytes / sizeof(capnp::word);
  return options;
}

kj::Own<kj::TlsContext> newMutualTlsContext(const TlsFiles& files, kj::Timer& timer) {
  kj::TlsContext::Options options;
  options.timer = timer;
  options.acceptTimeout = 10 * kj::SECONDS;
  options.useSystemTrustStore = false;
  options.verifyClients = true;
  auto ca = kj::heap<kj::TlsCertificate>(readWholeFile(files.caFile));
  auto keypair =
      kj::heap<kj::TlsKeypair>(kj::TlsKeypair{kj::TlsPrivateKey(readWholeFile(files.keyFile)),
                                              kj::TlsCertificate(readWholeFile(files.certFile))});
  options.trustedCertificates = kj::arrayPtr(ca.get(), 1);
  options.defaultKeypair = *keypair;
  options.minVersion = kj::TlsVersion::TLS_1_2;
  return kj::heap<kj::TlsContext>(kj::mv(options)).attach(kj::mv(ca), kj::mv(keypair));
}

kj::AutoCloseFd bindListenSocket(const ListenAddress& address) {
  if (address.kind == ListenAddress::Kind::kUnix) {
    int fd;
    KJ_SYSCALL(fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    kj::AutoCloseFd sock(fd);
    sockaddr_un addr = unixAddress(address.path);
    // A socket file left by an agent that died: replace it only if nobody
    // answers on it, so two agents never share one path. A killed agent's
    // io_uring can keep its listening socket open a little while after the
    // process is gone (the kernel tears the ring down in the background), so
    // a listener must keep answering for a while to count as another agent.
    struct stat st;
    if (lstat(address.path.cStr(), &st) == 0 && S_ISSOCK(st.st_mode)) {
      constexpr int kProbes = 300, kProbeIntervalMicros = 10000;  // 3 s in all
      bool inUse = true;
      for (int i = 0; i < kProbes && inUse; ++i) {
        if (i > 0) usleep(kProbeIntervalMicros);
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        inUse = connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
        close(probe);
      }
      KJ_REQUIRE(!inUse, "another agent is listening on", address.path);
      unlink(address.path.cStr());
    }
    mode_t old = umask(0177);  // the socket file is created 0600
    int rc = bind(sock, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    int error = errno;
    umask(old);
    if (rc < 0) KJ_FAIL_SYSCALL("bind", error, address.path);
    KJ_SYSCALL(listen(sock, 512));
    return sock;
  }
  socklen_t len;
  sockaddr_storage addr = tcpAddress(address, &len);
  int fd;
  KJ_SYSCALL(fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  kj::AutoCloseFd sock(fd);
  int one = 1;
  KJ_SYSCALL(setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)));
  KJ_SYSCALL(bind(sock, reinterpret_cast<sockaddr*>(&addr), len), address.host, address.port);
  KJ_SYSCALL(listen(sock, 512));
  return sock;
}

RpcConnection::RpcConnection(kj::Own<kj::AsyncIoStream> stream, capnp::rpc::twoparty::Side side,
                             uint64_t maxMessageBytes,
                             kj::Maybe<capnp::Capability::Client> bootstrap)
    : stream_(kj::mv(stream)),
      network_(*stream_, side, readerOptionsFor(maxMessageBytes)),
      rpc_(bootstrap == nullptr ? capnp::makeRpcClient(network_)
                                : capnp::makeRpcServer(network_, KJ_ASSERT_NONNULL(bootstrap))) {}

capnp::Capability::Client RpcConnection::bootstrap() {
  capnp::word scratch[4];
  memset(scratch, 0, sizeof(scratch));
  capnp::MallocMessageBuilder message(scratch);
  auto vatId = message.getRoot<capnp::rpc::twoparty::VatId>();
  vatId.setSide(network_.getSide() == capnp::rpc::twoparty::Side::CLIENT
                    ? capnp::rpc::twoparty::Side::SERVER
                    : capnp::rpc::twoparty::Side::CLIENT);
  return rpc_.bootstrap(vatId);
}

kj::Promise<kj::Own<RpcConnection>> connectToNode(loop::UringEventPort& port,
                                                  const ListenAddress& address,
                                                  kj::Maybe<kj::TlsContext&> tls,
                                                  uint64_t maxMessageBytes) {
  kj::Promise<kj::Own<kj::AsyncIoStream>> stream = nullptr;
  if (address.kind == ListenAddress::Kind::kUnix) {
    sockaddr_un addr = unixAddress(address.path);
    stream = loop::connectSocket(port, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  } else {
    socklen_t len;
    sockaddr_storage addr = tcpAddress(address, &len);
    stream = loop::connectSocket(port, reinterpret_cast<sockaddr*>(&addr), len);
    KJ_IF_MAYBE (t, tls) {
      kj::String host = kj::str(address.host);
      stream = stream.then([t, host = kj::mv(host)](kj::Own<kj::AsyncIoStream> s) {
        return t->wrapClient(kj::mv(s), host);
      });
    }
  }
  return stream.then([maxMessageBytes](kj::Own<kj::AsyncIoStream> s) {
    return kj::heap<RpcConnection>(kj::mv(s), capnp::rpc::twoparty::Side::CLIENT, maxMessageBytes,
                                   nullptr);
  });
}

}  // namespace nodeagent
