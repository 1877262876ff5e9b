#include <capnp/compat/json.h>

#include <string>

#include "nodeagent/sbx/render.h"

namespace nodeagent::sbx {

kj::String renderMembersTable(capnp::List<api::FleetMember>::Reader members) {
  std::string out;
  char line[256];
  snprintf(line, sizeof(line), "%-16s %-22s %-8s %-20s %s\n", "NODE", "ADDRESS", "STATE",
           "GENERATION", "INCARNATION");
  out += line;
  for (auto m : members) {
    snprintf(line, sizeof(line), "%-16s %-22s %-8s %-20llu %u%s\n", m.getNode().cStr(),
             m.getAddress().cStr(), m.getState().cStr(), (unsigned long long)m.getGeneration(),
             m.getIncarnation(), m.getSelf() ? " (this node)" : "");
    out += line;
  }
  return kj::str(out.c_str());
}

kj::String renderCapacityTable(capnp::List<api::FleetCapacity>::Reader nodes) {
  std::string out;
  char line[512];
  snprintf(line, sizeof(line), "%-16s %8s %10s %10s %10s %6s %-8s %s\n", "NODE", "VERSION",
           "FREE-CPU", "FREE-MEM", "FREE-DISK", "SLOTS", "STATE", "WARM");
  out += line;
  for (auto n : nodes) {
    char cpu[32], mem[32], disk[32];
    snprintf(cpu, sizeof(cpu), "%.2f", n.getFreeCpuMillis() / 1000.0);
    snprintf(mem, sizeof(mem), "%.1fG", double(n.getFreeMemoryBytes()) / double(1ull << 30));
    snprintf(disk, sizeof(disk), "%.1fG", double(n.getFreeDiskBytes()) / double(1ull << 30));
    kj::Vector<kj::StringPtr> warm;
    for (auto t : n.getWarmTemplates()) warm.add(t);
    kj::StringPtr state = !n.getHealthy() ? "unhealthy" : n.getDraining() ? "draining" : "ok";
    auto warmText = warm.size() == 0 ? kj::str("-") : kj::strArray(warm, ",");
    snprintf(line, sizeof(line), "%-16s %8llu %10s %10s %10s %6u %-8s %s\n", n.getNode().cStr(),
             (unsigned long long)n.getVersion(), cpu, mem, disk, n.getFreeSlots(), state.cStr(),
             warmText.cStr());
    out += line;
  }
  return kj::str(out.c_str());
}

}  // namespace nodeagent::sbx
