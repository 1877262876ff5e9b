// Sandbox networking on a node: the bridge and NAT (isolator/host_network),
// each sandbox's veth (isolator/sandbox_link), the egress programs and their
// maps (ebpf/egress_filter), the resolver (dns_server), and the audit trail
// of refusals. The Supervisor tells it when sandboxes come, change and go.
//
// Policy lives in pinned BPF maps keyed by each sandbox's v2 cgroup id, so
// it stays enforced while no agent runs; adopt() picks it up again.
#pragma once

#include <sys/types.h>

#include <capnp/message.h>
#include <kj/async.h>
#include <kj/function.h>
#include <kj/io.h>
#include <kj/memory.h>

#include <map>
#include <string>

#include "ebpf/egress_filter.h"
#include "isolator/host_network.h"
#include "loop/uring_event_port.h"
#include "nodeagent/dns_server.h"
#include "nodeagent/egress_rules.h"
#include "schema/config.capnp.h"
#include "schema/gateway.capnp.h"

namespace nodeagent {

class NetworkService final : public DnsPolicy {
 public:
  // Writes an audit entry: (action, sandbox id, tenant, detail).
  using AuditFn = kj::Function<void(kj::StringPtr, kj::StringPtr, kj::StringPtr, kj::StringPtr)>;

  struct Options {
    config::Config::Network::Reader config;
    std::string pinDir;          // bpffs directory of this agent's egress objects
    std::string sandboxesV2Dir;  // the v2 cgroup above every sandbox
    // Frees lapsed DNS permissions (the programs ignore them already).
    kj::Duration sweepInterval = 2 * kj::SECONDS;
  };

  NetworkService(loop::UringEventPort& port, Options options, AuditFn audit);
  ~NetworkService() noexcept(false);
  KJ_DISALLOW_COPY(NetworkService);

  // Sets up the host side, loads the programs (taking over pinned ones) and
  // starts the resolver. Throws if any of it is impossible here.
  void start();
  // Removes this configuration's bridge, NAT table and pinned programs.
  static void uninstall(config::Config::Network::Reader config, kj::StringPtr pinDir);

  // The resolver as sandboxes see it (for resolv.conf).
  std::string resolvConf() const;

  // Checks a spec's network fields (throws invalidArgument); fills egressMbps
  // with `templateMbps` when 0.
  static void validate(api::SandboxSpec::Builder spec, uint32_t templateMbps);
  // A spec's network fields as the settings attach() and update() take.
  static kj::Own<capnp::MallocMessageBuilder> settingsOf(api::SandboxSpec::Reader spec);

  struct SandboxRef {
    kj::StringPtr id;
    kj::StringPtr tenant;
    uint64_t cgroupId;
    pid_t initPid;
  };
  // Gives the sandbox its network. Returns its address slot (0 when off).
  // On failure the sandbox has no route out and no policy but `off`.
  uint32_t attach(const SandboxRef& sandbox, api::NetworkSettings::Reader settings);
  // Replaces a live sandbox's settings; returns the (possibly new) slot.
  uint32_t update(const SandboxRef& sandbox, api::NetworkSettings::Reader settings);
  // A sandbox a previous agent attached (slot from its record).
  void adopt(const SandboxRef& sandbox, api::NetworkSettings::Reader settings, uint32_t slot);
  // Drops every sandbox's state the agent does not hold (after adoption).
  void retainOnly(kj::ArrayPtr<const uint64_t> cgroupIds);
  // The sandbox ended (or its cgroup changed, at a pool claim): forget it.
  void release(kj::StringPtr id);

  void fillStatus(kj::StringPtr id, api::NetworkStatus::Builder status);
  // Bytes the sandbox sent out (not loopback) since its network was set up;
  // an ended sandbox keeps its last count for a while (its final usage).
  uint64_t egressBytes(kj::StringPtr id);

  // DnsPolicy
  Verdict judge(const IpAddress& client, const std::string& name, uint16_t type) override;
  void admit(const IpAddress& client, const std::string& name,
             const std::vector<dns::AnswerAddress>& addresses) override;

  const DnsServer::Stats& dnsStats() const;

 private:
  struct Sandbox {
    std::string id, tenant;
    uint64_t cgroupId = 0;
    pid_t initPid = 0;
    uint32_t slot = 0;
    api::NetworkMode mode = api::NetworkMode::OFF;
    kj::Vector<kj::String> allowText;
    Allowlist allowlist;
    uint32_t egressMbps = 0;
    uint64_t byteCap = 0;
    bool cutOffAudited = false;
    uint64_t dnsRefusalsThisSecond = 0;
    int64_t dnsRefusalSecond = 0;
    // A resolver retries (each server, A and AAAA): one audit entry per
    // refused name per kDnsRefusalQuietSeconds.
    std::map<std::string, int64_t> dnsRefusedAt;
  };

  uint32_t configure(Sandbox& s, api::NetworkSettings::Reader settings, bool fresh);
  na_policy policyFor(const Sandbox& s) const;
  void writePolicy(const Sandbox& s);
  uint32_t allocateSlot(const std::string& id);
  void freeSlot(Sandbox& s);
  Sandbox* byAddress(const IpAddress& address);
  Sandbox* byCgroup(uint64_t cgroupId);
  void refreshAlwaysRules();
  kj::Promise<void> readEvents();
  kj::Promise<void> sweep();
  kj::Promise<void> followAddressChanges();
  void onEvent(const na_event& event);

  loop::UringEventPort& port_;
  Options options_;
  AuditFn audit_;
  kj::Own<isolator::HostNetwork> host_;
  kj::Own<ebpf::EgressFilter> filter_;
  kj::Own<DnsServer> dns_;
  std::map<std::string, Sandbox> sandboxes_;  // by id
  std::map<uint32_t, std::string> slots_;     // slot -> id
  std::vector<IpAddress> lastHostAddresses_;
  kj::AutoCloseFd addressChanges_;  // netlink: the host's addresses changed
  struct ReleasedCount {
    uint64_t bytes;
    int64_t releasedAt;  // unix seconds
  };
  std::map<std::string, ReleasedCount> released_;  // ended sandboxes' final egress
  struct ErrorLogger : public kj::TaskSet::ErrorHandler {
    void taskFailed(kj::Exception&& e) override;
  } errorLogger_;
  kj::TaskSet tasks_;
};

}  // namespace nodeagent
