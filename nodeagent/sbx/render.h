// How sbx prints API results: aligned text for people, JSON for programs.
#pragma once

#include <kj/string.h>

#include "schema/gateway.capnp.h"

namespace nodeagent::sbx {

kj::String renderListTable(capnp::List<api::SandboxInfo>::Reader sandboxes);
kj::String renderListJson(capnp::List<api::SandboxInfo>::Reader sandboxes);
kj::String renderInfoText(api::SandboxInfo::Reader info);
kj::String renderInfoJson(api::SandboxInfo::Reader info);
kj::String renderUsageText(api::Usage::Reader usage);
kj::String renderUsageJson(api::Usage::Reader usage);
kj::String renderProcessesTable(capnp::List<api::ProcessInfo>::Reader processes);
kj::String renderProcessesJson(capnp::List<api::ProcessInfo>::Reader processes);
kj::String renderNetworkText(api::NetworkStatus::Reader status);
kj::String renderNetworkJson(api::NetworkStatus::Reader status);
kj::String renderEventsText(capnp::List<api::SandboxEvent>::Reader events);
kj::String renderEventsJson(capnp::List<api::SandboxEvent>::Reader events);

}  // namespace nodeagent::sbx
