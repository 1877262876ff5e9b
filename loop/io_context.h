// Everything one loop thread needs: the ring, a KJ event loop on it, and the
// wait scope that makes the loop current. Create it on the thread that runs
// it; members are destroyed in reverse order, the port last.
#pragma once

#include <kj/async.h>

#include "loop/uring_event_port.h"

namespace nodeagent::loop {

struct IoContext {
  IoContext() = default;
  explicit IoContext(unsigned entries) : port(entries) {}

  UringEventPort port;
  kj::EventLoop loop{port};
  kj::WaitScope waitScope{loop};
};

}  // namespace nodeagent::loop
