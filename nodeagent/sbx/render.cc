#include "nodeagent/sbx/render.h"

#include <capnp/compat/json.h>
#include <time.h>

#include <string>

#include "util/log.h"

namespace nodeagent::sbx {
namespace {

kj::StringPtr stateName(api::SandboxState state) {
  switch (state) {
    case api::SandboxState::CREATING:
      return "creating";
    case api::SandboxState::RUNNING:
      return "running";
    case api::SandboxState::PAUSED:
      return "paused";
    case api::SandboxState::STOPPED:
      return "stopped";
  }
  return "unknown";
}

kj::String formatBytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = double(bytes);
  size_t u = 0;
  while (v >= 1024 && u + 1 < kj::size(units)) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return kj::str(buf);
}

kj::String formatSeconds(uint64_t ns) {
  char buf[32];
  snprintf(buf, sizeof(buf), "%.3f s", double(ns) / 1e9);
  return kj::str(buf);
}

// "running", or how it ended: "exited(3)", "signaled(15)", "oom", ...
kj::String processState(api::ProcessInfo::Reader p) {
  if (p.getRunning()) return kj::str("running");
  auto status = p.getStatus();
  switch (status.getReason()) {
    case api::ExitReason::EXITED:
      return kj::str("exited(", status.getCode(), ")");
    case api::ExitReason::SIGNALED:
      return kj::str("signaled(", status.getSignal(), ")");
    case api::ExitReason::OOM:
      return kj::str("oom");
    case api::ExitReason::TIMEOUT:
      return kj::str("timeout");
    case api::ExitReason::KILLED:
      return kj::str("killed");
  }
  return kj::str("ended");
}

// JSON through Cap'n Proto's own codec, so field names match the schema.
template <typename Reader>
kj::String toJson(Reader reader) {
  capnp::JsonCodec codec;
  codec.setPrettyPrint(true);
  return kj::str(codec.encode(reader), "\n");
}

}  // namespace

kj::String formatTime(int64_t unixNs) {
  if (unixNs <= 0) return kj::str("-");
  time_t seconds = unixNs / 1000000000;
  tm utc;
  gmtime_r(&seconds, &utc);
  char buf[32];
  strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return kj::str(buf);
}

kj::String renderListTable(capnp::List<api::SandboxInfo>::Reader sandboxes) {
  std::string out;
  char line[256];
  snprintf(line, sizeof(line), "%-22s %-12s %-10s %-9s %-20s %s\n", "ID", "TENANT", "TEMPLATE",
           "STATE", "CREATED", "ENDED");
  out += line;
  for (auto s : sandboxes) {
    kj::String state = s.getState() == api::SandboxState::STOPPED
                           ? kj::str(stateName(s.getState()), "(", s.getEndReason(), ")")
                           : kj::str(stateName(s.getState()));
    snprintf(line, sizeof(line), "%-22s %-12s %-10s %-9s %-20s %s\n", s.getId().cStr(),
             s.getSpec().getTenant().cStr(), s.getSpec().getTemplate().cStr(), state.cStr(),
             formatTime(s.getCreatedAtNs()).cStr(), formatTime(s.getEndedAtNs()).cStr());
    out += line;
  }
  return kj::str(out.c_str());
}

kj::String renderListJson(capnp::List<api::SandboxInfo>::Reader sandboxes) {
  capnp::JsonCodec codec;
  codec.setPrettyPrint(true);
  return kj::str(codec.encode(sandboxes), "\n");
}

kj::String renderInfoText(api::SandboxInfo::Reader info) {
  auto spec = info.getSpec();
  return kj::str("id:        ", info.getId(), "\n", "tenant:    ", spec.getTenant(), "\n",
                 "template:  ", spec.getTemplate(), "\n", "state:     ", stateName(info.getState()),
                 "\n", "memory:    ", formatBytes(spec.getMemoryBytes()), "\n",
                 "cpus:      ", spec.getCpuMillis() / 1000.0, " burst, ",
                 spec.getCpuSustainedMillis() / 1000.0, " sustained\n",
                 "pids:      ", spec.getPidsMax(), "\n",
                 "disk:      ", formatBytes(spec.getDiskBytes()), "\n",
                 "created:   ", formatTime(info.getCreatedAtNs()), "\n",
                 "expires:   ", formatTime(info.getExpiresAtNs()),
                 spec.getOnTimeout() == api::TimeoutAction::PAUSE ? " (then paused)\n" : "\n",
                 info.getEndedAtNs() > 0 ? kj::str("ended:     ", formatTime(info.getEndedAtNs()),
                                                   " (", info.getEndReason(), ")\n")
                                         : kj::str());
}

kj::String renderInfoJson(api::SandboxInfo::Reader info) {
  return toJson(info);
}

kj::String renderUsageText(api::Usage::Reader u) {
  return kj::str(
      "cpu user:     ", formatSeconds(u.getCpuUserNs()), "\n",
      "cpu system:   ", formatSeconds(u.getCpuSystemNs()), "\n",
      "wall running: ", formatSeconds(u.getWallRunningNs()), "\n",
      "wall paused:  ", formatSeconds(u.getWallPausedNs()), "\n",
      "memory now:   ", formatBytes(u.getMemoryCurrentBytes()), "\n",
      "memory peak:  ", formatBytes(u.getMemoryPeakBytes()), "\n",
      "processes:    ", u.getPidsCurrent(), "\n", "execs:        ", u.getExecs(), "\n",
      "rpc requests: ", u.getRpcRequests(), "\n", "egress:       ", formatBytes(u.getEgressBytes()),
      "\n", "cpu quota:    ", u.getCpuQuotaMillis() / 1000.0, " cpus now, ",
      u.getCpuCreditNs() < 0 ? "-" : "",
      formatSeconds(uint64_t(u.getCpuCreditNs() < 0 ? -u.getCpuCreditNs() : u.getCpuCreditNs())),
      " of burst credit\n");
}

kj::String renderUsageJson(api::Usage::Reader usage) {
  return toJson(usage);
}

kj::String renderProcessesTable(capnp::List<api::ProcessInfo>::Reader processes) {
  std::string out;
  char line[256];
  snprintf(line, sizeof(line), "%-7s %-14s %-20s %s\n", "PID", "STATE", "STARTED", "COMMAND");
  out += line;
  for (auto p : processes) {
    std::string command;
    for (auto arg : p.getArgv()) {
      if (!command.empty()) command += ' ';
      command += arg.cStr();
    }
    snprintf(line, sizeof(line), "%-7u %-14s %-20s ", p.getPid(), processState(p).cStr(),
             formatTime(p.getStartedAtNs()).cStr());
    out += line;
    out += command;
    out += '\n';
  }
  return kj::str(out.c_str());
}

kj::String renderProcessesJson(capnp::List<api::ProcessInfo>::Reader processes) {
  capnp::JsonCodec codec;
  codec.setPrettyPrint(true);
  return kj::str(codec.encode(processes), "\n");
}

kj::String renderNetworkText(api::NetworkStatus::Reader status) {
  auto settings = status.getSettings();
  kj::StringPtr mode = settings.getMode() == api::NetworkMode::OFF          ? "off"
                       : settings.getMode() == api::NetworkMode::RESTRICTED ? "restricted"
                                                                            : "open";
  std::string allow, addresses, gateways;
  for (auto a : settings.getAllow()) allow += std::string(allow.empty() ? "" : " ") + a.cStr();
  for (auto a : status.getAddresses()) {
    addresses += std::string(addresses.empty() ? "" : " ") + a.cStr();
  }
  for (auto a : status.getGateways()) {
    gateways += std::string(gateways.empty() ? "" : " ") + a.cStr();
  }
  return kj::str(
      "mode:           ", mode, "\n", "allow:          ", allow.empty() ? "-" : allow.c_str(), "\n",
      "addresses:      ", addresses.empty() ? "-" : addresses.c_str(), "\n",
      "gateway/dns:    ", gateways.empty() ? "-" : gateways.c_str(), "\n",
      "egress cap:     ", settings.getEgressMbps(), " Mbit/s\n", "egress limit:   ",
      settings.getEgressByteCap() == 0 ? kj::str("none") : formatBytes(settings.getEgressByteCap()),
      status.getCutOff() ? " (spent: cut off)" : "", "\n",
      "egress:         ", formatBytes(status.getEgressBytes()), " in ", status.getEgressPackets(),
      " packets\n", "denied:         ", status.getDeniedCalls(), " calls, ",
      status.getDeniedPackets(), " packets\n");
}

kj::String renderNetworkJson(api::NetworkStatus::Reader status) {
  return toJson(status);
}

kj::String renderEventsText(capnp::List<api::SandboxEvent>::Reader events) {
  std::string out;
  for (auto e : events) {
    char head[96];
    snprintf(head, sizeof(head), "%-6llu %-20s %-14s ", (unsigned long long)e.getSeq(),
             formatTime(e.getTimeNs()).cStr(), e.getAction().cStr());
    out += head;
    out += e.getDetail().cStr();
    out += '\n';
  }
  return kj::str(out.c_str());
}

kj::String renderEventsJson(capnp::List<api::SandboxEvent>::Reader events) {
  capnp::JsonCodec codec;
  codec.setPrettyPrint(true);
  return kj::str(codec.encode(events), "\n");
}

}  // namespace nodeagent::sbx
