// The gateway API's server side: Node, Sandbox, Process, Files and ByteSink
// capabilities over the Supervisor's sandboxes.
#pragma once

#include <kj/string.h>

#include "loop/uring_event_port.h"
#include "nodeagent/supervisor.h"
#include "schema/gateway.capnp.h"

namespace nodeagent {

namespace fleet {
class FleetService;
}

struct ServerContext {
  Supervisor& supervisor;
  loop::UringEventPort& port;
  uint64_t maxFileBytes;
  uint64_t maxMessageBytes;
  kj::Maybe<fleet::FleetService&> fleet = nullptr;  // a fleet member (config `cluster`)
};

// The bootstrap capability of one gateway connection. `actor` names the
// caller in the audit log ("unix:uid=0", "tls:CN=gw-1").
api::Node::Client newNodeServer(ServerContext& context, kj::String actor);

// The Sandbox capability of a live sandbox (a placement hands it back).
api::Sandbox::Client newSandboxServer(ServerContext& context, kj::Own<SandboxRuntime> sandbox,
                                      kj::StringPtr actor);

}  // namespace nodeagent
