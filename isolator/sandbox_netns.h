// What every sandbox's network namespace gets, whoever makes it (the agent's
// NetnsPool ahead of time, or init in a namespace of its own): loopback up, and
// ports below 1024 open to every uid (net.ipv4.ip_unprivileged_port_start=0),
// so a sandbox behaves the same whether or not its namespace came from the pool
// (where its root has no CAP_NET_BIND_SERVICE over the namespace).
#pragma once

namespace nodeagent::isolator {

// In the calling thread's network namespace; needs CAP_NET_ADMIN over it.
void prepareSandboxNetns();

// Whether the calling thread's namespace has its loopback up (one made ahead
// has; a fresh one has not).
bool loopbackIsUp();

}  // namespace nodeagent::isolator
