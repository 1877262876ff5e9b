// How sbx prints API results: aligned text for people, JSON for programs.
#pragma once

#include <kj/string.h>

#include "schema/gateway.capnp.h"

namespace nodeagent::sbx {

// "2026-11-22T06:41:57Z", or "-" for 0.
kj::String formatTime(int64_t unixNs);

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

// render_node.cc: the node and its usage ledger.
kj::String renderNodeText(api::NodeInfo::Reader info);
kj::String renderNodeJson(api::NodeInfo::Reader info);

// render_fleet.cc: the fleet as this node sees it.
kj::String renderMembersTable(capnp::List<api::FleetMember>::Reader members);
kj::String renderCapacityTable(capnp::List<api::FleetCapacity>::Reader nodes);

// A ledger record as read and checked by sbx.
struct CheckedRecord {
  api::UsageRecord::Reader record;
  kj::ArrayPtr<const kj::byte> signature;
  bool verified;
};
kj::String renderLedgerTable(kj::ArrayPtr<const CheckedRecord> records);
// {"records": [{"record": {...}, "signature": "<hex>", "verified": true}, ...],
//  "nextCursor": "N"}
kj::String renderLedgerJson(kj::ArrayPtr<const CheckedRecord> records, uint64_t nextCursor);

}  // namespace nodeagent::sbx
