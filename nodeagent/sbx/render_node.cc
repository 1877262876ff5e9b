#include <capnp/compat/json.h>
#include <kj/encoding.h>
#include <time.h>

#include <string>

#include "nodeagent/sbx/render.h"

namespace nodeagent::sbx {
namespace {

kj::String seconds(uint64_t ns) {
  char buf[32];
  snprintf(buf, sizeof(buf), "%.3f", double(ns) / 1e9);
  return kj::str(buf);
}

}  // namespace

kj::String renderNodeText(api::NodeInfo::Reader info) {
  kj::Vector<kj::String> pools;
  for (auto p : info.getWarmPools()) {
    pools.add(kj::str(p.getTemplate(), " ", p.getIdle(), "/", p.getTarget(), " idle, ",
                      p.getClaims(), " claims"));
  }
  return kj::str(
      "hostname:   ", info.getHostname(), "\n", "version:    ", info.getVersion(), "\n",
      "node id:    ", info.getNodeId(), "\n", "public key: ", kj::encodeHex(info.getPublicKey()),
      " (ed25519)\n", "sandboxes:  ", info.getSandboxes(), "\n",
      "templates:  ", kj::strArray(info.getTemplates(), ", "), "\n",
      "cgroups:    ", info.getCgroupMode(), "\n", "draining:   ", info.getDraining() ? "yes" : "no",
      "\n", "warm pools: ", pools.size() == 0 ? kj::str("-") : kj::strArray(pools, "; "), "\n",
      "fleet:      ",
      info.getFleetNode().size() == 0
          ? kj::str("not a member")
          : kj::str(info.getFleetNode(), " at ", info.getFleetAddress()),
      "\n");
}

kj::String renderNodeJson(api::NodeInfo::Reader info) {
  capnp::JsonCodec codec;
  codec.setPrettyPrint(true);
  // Data would be a list of numbers; the key is read as hex everywhere else.
  auto json = codec.encode(info);
  kj::String key = kj::encodeHex(info.getPublicKey());
  return kj::str(json.slice(0, json.size() - 1), ",\n  \"publicKeyHex\": \"", key, "\" }\n");
}

kj::String renderLedgerTable(kj::ArrayPtr<const CheckedRecord> records) {
  std::string out;
  char line[512];
  snprintf(line, sizeof(line), "%-6s %-21s %-10s %-20s %8s %8s %8s %8s %12s %10s %6s %-10s %s\n",
           "SEQ", "SANDBOX", "TENANT", "PERIOD START", "SECONDS", "CPU-S", "RUN-S", "PAUSED-S",
           "MEM-GIB-S", "EGRESS-B", "REQS", "CAUSE", "SIGNATURE");
  out += line;
  for (auto& c : records) {
    auto r = c.record;
    char gib[32];
    snprintf(gib, sizeof(gib), "%.3f", double(r.getMemoryByteSeconds()) / double(1ull << 30));
    kj::String cause =
        r.getFinal() ? kj::str(r.getCause(), "(", r.getEndReason(), ")") : kj::str(r.getCause());
    snprintf(
        line, sizeof(line), "%-6llu %-21s %-10s %-20s %8s %8s %8s %8s %12s %10llu %6llu %-10s %s\n",
        (unsigned long long)r.getSeq(), r.getSandboxId().cStr(), r.getTenant().cStr(),
        formatTime(r.getPeriodStartNs()).cStr(),
        seconds(uint64_t(r.getPeriodEndNs() - r.getPeriodStartNs())).cStr(),
        seconds(r.getCpuNs()).cStr(), seconds(r.getWallRunningNs()).cStr(),
        seconds(r.getWallPausedNs()).cStr(), gib, (unsigned long long)r.getEgressBytes(),
        (unsigned long long)r.getRpcRequests(), cause.cStr(), c.verified ? "verified" : "FAILED");
    out += line;
  }
  return kj::str(out.c_str());
}

kj::String renderLedgerJson(kj::ArrayPtr<const CheckedRecord> records, uint64_t nextCursor) {
  capnp::JsonCodec codec;
  kj::Vector<kj::String> items;
  for (auto& c : records) {
    items.add(kj::str("    {\"record\": ", codec.encode(c.record), ", \"signature\": \"",
                      kj::encodeHex(c.signature),
                      "\", \"verified\": ", c.verified ? "true" : "false", "}"));
  }
  return kj::str("{\n  \"records\": [\n", kj::strArray(items, ",\n"), items.size() > 0 ? "\n" : "",
                 "  ],\n  \"nextCursor\": \"", nextCursor, "\"\n}\n");
}

}  // namespace nodeagent::sbx
