// Accepts gateway connections on one address and serves the Node API on each.
#pragma once

#include <kj/async.h>
#include <kj/compat/tls.h>

#include "nodeagent/config.h"
#include "nodeagent/gateway_server.h"

namespace nodeagent {

class GatewayListener {
 public:
  // TCP addresses require `tls` (mutual TLS); unix sockets are local-only.
  GatewayListener(ServerContext& context, const ListenAddress& address,
                  kj::Maybe<kj::TlsContext&> tls);
  KJ_DISALLOW_COPY(GatewayListener);

  kj::Promise<void> run();
  size_t connectionCount() const { return connectionCount_; }

 private:
  kj::Promise<void> acceptLoop();
  kj::Promise<void> serve(kj::AutoCloseFd fd);

  ServerContext& context_;
  kj::String description_;
  kj::AutoCloseFd listenFd_;
  bool isUnix_;
  kj::Maybe<kj::TlsContext&> tls_;
  size_t connectionCount_ = 0;
  struct ErrorLogger : public kj::TaskSet::ErrorHandler {
    void taskFailed(kj::Exception&& e) override;
  } errorLogger_;
  kj::TaskSet connections_;
};

}  // namespace nodeagent
