// Creates, finds and ends sandboxes; keeps their records in the store.
#pragma once

#include <deque>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <kj/async.h>
#include <kj/string.h>
#include <kj/vector.h>

#include "ebpf/cpu_meter.h"
#include "isolator/cgroup.h"
#include "isolator/netns_pool.h"
#include "isolator/seccomp_profile.h"
#include "isolator/skeleton_seed.h"
#include "isolator/zygote.h"
#include "loop/uring_event_port.h"
#include "nodeagent/capacity_gate.h"
#include "nodeagent/launch_worker.h"
#include "nodeagent/network_service.h"
#include "nodeagent/node_key.h"
#include "nodeagent/sandbox_runtime.h"
#include "nodeagent/store.h"
#include "nodeagent/store_writer.h"
#include "nodeagent/usage_ledger.h"
#include "schema/config.capnp.h"
#include "schema/gateway.capnp.h"

namespace nodeagent {

class Supervisor {
 public:
  static constexpr kj::Duration kEndedRetention = 10 * kj::MINUTES;
  // Warm pools' sandboxes run under this tenant until claimed; gateways may
  // not use it, and list/open/find never show them.
  static constexpr kj::StringPtr kPoolTenant = "_pool"_kj;
  // A refill starts this long after a claim. A launch runs on the launch
  // worker but competes for the CPUs; the delay lets the create's reply and
  // the tenant's first calls (uploads, the first exec) go first.
  static constexpr kj::Duration kPoolRefillDelay = 50 * kj::MILLISECONDS;
  // After a failed launch or a pool sandbox that died.
  static constexpr kj::Duration kPoolRetryDelay = 1 * kj::SECONDS;

  // Reads come from `store`; every write goes through `writer`. `key` signs
  // the usage ledger's records; it and `store` must outlive `writer`.
  Supervisor(loop::UringEventPort& port, config::Config::Reader config, Store& store,
             StoreWriter& writer, const NodeKey& key);
  ~Supervisor() noexcept(false);
  KJ_DISALLOW_COPY(Supervisor);

  // Prepares template skeletons and the cgroup tree, and re-adopts the
  // sandboxes a previous agent left running (see adoptLeftovers()). Warm
  // pools fill in the background once the event loop runs.
  void start();

  // Claims an idle warm-pool sandbox of the template when the spec can be
  // applied to it (any limits, but the template's disk size); else launches
  // one. The claim's audit entry says "warm=1".
  // With a capacity gate (a fleet member), the sandbox must pass it first;
  // `reservation` is a placement's, granted by the gate earlier.
  // The blocking part of a launch (cgroups, namespaces, init's setup) runs
  // on a worker thread: the loop serves other requests meanwhile.
  kj::Promise<kj::Own<SandboxRuntime>> create(api::SandboxSpec::Reader spec, kj::StringPtr actor,
                                              uint64_t reservation = 0);
  // The spec as create would run it: template defaults filled in, validated
  // (throws the API error create would).
  kj::Own<capnp::MallocMessageBuilder> resolveSpec(api::SandboxSpec::Reader spec);
  // From now on every tenant sandbox passes `gate` (which must outlive the
  // supervisor's sandboxes); the live ones are admitted now, as they are.
  void setCapacityGate(CapacityGate& gate);
  // The gate is going away (agent exit): nothing is admitted or released
  // through it from now on.
  void clearCapacityGate() {
    gate_ = nullptr;
    capacityTickets_.clear();
  }
  // A live sandbox, or one that ended less than kEndedRetention ago (its
  // info and usage stay readable); null otherwise.
  kj::Maybe<kj::Own<SandboxRuntime>> find(kj::StringPtr id);
  // Records (live and ended) of one tenant, or of all when tenant is empty,
  // ordered by id; the in-memory record wins over the stored one.
  kj::Vector<kj::Own<capnp::MallocMessageBuilder>> list(kj::StringPtr tenant);
  // The stored record of a sandbox no longer held in memory.
  kj::Maybe<kj::Own<capnp::MallocMessageBuilder>> findRecord(kj::StringPtr id);
  kj::Promise<void> kill(SandboxRuntime& sandbox, kj::StringPtr actor);
  // Freeze and thaw, persisted and audited ("pause" / "resume") when they
  // change anything.
  kj::Promise<void> pause(SandboxRuntime& sandbox, kj::StringPtr actor);
  kj::Promise<void> resume(SandboxRuntime& sandbox, kj::StringPtr actor);
  // Replaces a live sandbox's network settings (audited "set-network").
  void setNetwork(SandboxRuntime& sandbox, api::NetworkSettings::Reader settings,
                  kj::StringPtr actor, api::NetworkStatus::Builder status);
  void fillNetworkStatus(SandboxRuntime& sandbox, api::NetworkStatus::Builder status);
  // Audit entries about one sandbox with seq > afterSeq, oldest first (what is
  // committed so far: the writer may hold the newest for a moment).
  kj::Vector<kj::Own<StoredAudit>> sandboxEvents(kj::StringPtr id, uint64_t afterSeq, size_t limit);
  // Null where the node serves no networking (config or host lacking it).
  kj::Maybe<NetworkService&> network();
  // A tenant's CPU weight against other tenants (1-10000; default 100).
  void setTenantWeight(kj::StringPtr tenant, uint32_t weight, kj::StringPtr actor);

  // Counts an API request on `sandbox` against its own cap (spec.requestCap)
  // and its tenant's (setTenantRequestCap, else limits.tenantRequestCap), and
  // refuses it with limitExceeded beyond either. The tenant's count spans all
  // its sandboxes on this node, ended ones too, and agent restarts (it is
  // rebuilt from the ledger's billed totals, so requests after the last
  // record before a crash are not counted).
  void admitRequest(SandboxRuntime& sandbox);
  // Counts one that is never refused (kill, info, usage).
  void countRequest(SandboxRuntime& sandbox);
  // 0 = the config's default again. Audited.
  void setTenantRequestCap(kj::StringPtr tenant, uint64_t cap, kj::StringPtr actor);
  // Records for the live sandboxes now (the agent is stopping).
  void recordUsage(kj::StringPtr cause);
  UsageLedger& ledger() { return *ledger_; }
  kj::StringPtr nodeId() const { return store_.nodeId(); }
  void audit(kj::StringPtr actor, kj::StringPtr action, kj::StringPtr sandboxId,
             kj::StringPtr tenant, kj::StringPtr detail);

  size_t liveCount() const { return live_.size(); }  // idle pool sandboxes too
  size_t tenantSandboxCount();                       // without them
  struct WarmPoolStatus {
    kj::StringPtr templateName;
    uint32_t target;
    uint32_t idle;
    uint64_t claims;
  };
  kj::Array<WarmPoolStatus> warmPools() const;
  void setDraining(bool draining, kj::StringPtr actor);
  bool draining() const { return draining_; }
  kj::Array<kj::String> templateNames();
  isolator::CgroupMode cgroupMode() const { return cgroupMode_; }
  // Stops refilling and ends the idle pool sandboxes (agent exit).
  kj::Promise<void> endPools();
  // Kills every live sandbox and waits for them (for tests and `--kill-on-exit`).
  kj::Promise<void> killAll(kj::StringPtr reason);

 private:
  struct TemplateInfo {
    kj::String name;
    kj::String usrDir;
    kj::String skeletonDir;
    uint64_t memoryBytes;
    uint32_t cpuMillis;
    uint32_t cpuSustainedMillis;
    uint32_t cpuBurstSeconds;
    uint32_t pidsMax;
    uint64_t diskBytes;
    uint32_t timeoutSeconds;
    uint32_t egressMbps;
    std::vector<isolator::SeedEntry> seed;  // of skeletonDir, read once at start
  };

  struct WarmPool {
    kj::String templateName;
    uint32_t target;
    std::deque<std::string> idle;  // sandbox ids, oldest first
    uint64_t claims = 0;
  };

  const TemplateInfo& requireTemplate(kj::StringPtr name);
  // Fills zero fields from the template and validates the result.
  void fillSpec(api::SandboxSpec::Builder spec, const TemplateInfo& tmpl);
  static isolator::CgroupLimits cgroupLimitsOf(api::SandboxSpec::Reader spec);
  kj::Maybe<uint32_t> tenantWeightOf(kj::StringPtr tenant) const;  // null: the default
  kj::Own<isolator::SandboxCgroup> newCgroup(api::SandboxSpec::Reader spec, kj::StringPtr id);
  // Starts the sandbox `record` (id and filled spec set) describes, on the
  // launch worker; registered as live once its init is ready.
  kj::Promise<kj::Own<SandboxRuntime>> launch(kj::Own<capnp::MallocMessageBuilder> record,
                                              const TemplateInfo& tmpl, kj::StringPtr actor,
                                              kj::StringPtr action, kj::StringPtr detail);
  // launch() once the node has room: at its maximum, waits (until the
  // deadline) for a sandbox that has ended to be released; else limitExceeded.
  kj::Promise<kj::Own<SandboxRuntime>> launchWhenRoom(kj::Own<capnp::MallocMessageBuilder> record,
                                                      const TemplateInfo& tmpl, kj::String actor,
                                                      int64_t deadlineMonoNs);
  static constexpr int64_t kRoomWaitNs = 2'000'000'000;
  static bool isPoolRecord(state::SandboxRecord::Reader record);
  WarmPool* findPool(kj::StringPtr templateName);
  kj::Maybe<kj::Own<SandboxRuntime>> claimFromPool(api::SandboxSpec::Reader spec,
                                                   const TemplateInfo& tmpl, kj::StringPtr actor);
  bool dropFromPool(kj::StringPtr id);  // whether it was an idle pool sandbox
  void scheduleRefill(kj::Duration delay);
  void refillPools();
  kj::Promise<void> launchPoolSandbox(WarmPool& pool);
  uint32_t allocateUidSlot();
  void onEnded(SandboxRuntime& sandbox);
  // Removes the tenant's cgroup dirs once they have been unused for
  // tenantCgroupLingerSeconds.
  void scheduleTenantSweep(kj::StringPtr tenant);
  void sweepTenantLater(kj::String tenant, kj::Duration delay);
  void onReleased(SandboxRuntime& sandbox);
  void onExpired(SandboxRuntime& sandbox);
  void onCpuCapped(SandboxRuntime& sandbox);
  // Builds the runtime for `parts` (wiring the meter and the hooks) and
  // registers it as live, holding `uidSlot`.
  kj::Own<SandboxRuntime> startRuntime(SandboxRuntime::Parts parts, uint32_t uidSlot);
  kj::Promise<void> pauseAs(SandboxRuntime& sandbox, kj::StringPtr actor, kj::StringPtr action,
                            kj::StringPtr detail);
  // For every record a previous agent left running: finds its cgroup and
  // init, reconnects to init's control socket and serves it again; its
  // processes come back through a resync. One that cannot be adopted (init
  // gone, cgroup gone) is ended cleanly with the reason recorded. Idle pool
  // sandboxes are ended and refilled.
  void adoptLeftovers();
  void adopt(state::SandboxRecord::Reader record);
  void endLeftover(state::SandboxRecord::Reader record, kj::StringPtr reason);
  kj::String controlSocketPathOf(kj::StringPtr id);
  void sweepOrphanCgroups();
  void loadTenantWeights();
  void loadTenantRequests();
  uint64_t tenantRequestCap(kj::StringPtr tenant) const;
  void startCpuMeter();
  void startNetwork();
  kj::String bpfPinName();
  // Gives a sandbox (just launched, claimed or adopted) its network per its record.
  void attachNetwork(SandboxRuntime& sandbox);
  void requireNetwork(api::NetworkMode mode);
  // Queues the record (and an audit entry, if given) as one change.
  void persist(state::SandboxRecord::Reader record,
               kj::Maybe<kj::Own<capnp::MallocMessageBuilder>> audit);

  loop::UringEventPort& port_;
  config::Config::Reader config_;
  kj::String initPath_;  // config initPath, else nodeagent-init beside our own binary
  Store& store_;
  StoreWriter& writer_;
  kj::AutoCloseFd hostLock_;
  bool draining_ = false;
  kj::Vector<TemplateInfo> templates_;
  isolator::SeccompProgram seccomp_;             // compiled once, sent to every init
  kj::Maybe<kj::Own<ebpf::CpuMeter>> cpuMeter_;  // null where eBPF cannot run
  kj::Maybe<kj::Own<NetworkService>> network_;   // null: every sandbox is `off`
  kj::String networkUnavailable_;                // why network_ is null
  isolator::CgroupMode cgroupMode_;
  kj::Maybe<kj::Own<isolator::CgroupTree>> cgroupTree_;
  kj::Maybe<CapacityGate&> gate_;
  std::map<std::string, uint64_t> capacityTickets_;  // sandbox id -> gate ticket
  std::map<std::string, kj::Own<SandboxRuntime>> live_;
  // Tenants with a sweep scheduled, and when each last released a sandbox.
  std::map<std::string, int64_t> tenantSweeps_;
  std::map<std::string, kj::Own<SandboxRuntime>> ended_;
  std::map<uint32_t, std::string> uidSlots_;           // slot -> sandbox id
  std::map<std::string, uint32_t> tenantWeights_;      // tenants with a non-default weight
  std::map<std::string, uint64_t> tenantRequests_;     // requests counted, by tenant
  std::map<std::string, uint64_t> tenantRequestCaps_;  // tenants with a cap of their own
  kj::Own<UsageLedger> ledger_;
  kj::Vector<WarmPool> pools_;
  bool refillScheduled_ = false;  // or a pool launch under way
  bool poolsStopped_ = false;     // by killAll
  struct ErrorLogger : public kj::TaskSet::ErrorHandler {
    void taskFailed(kj::Exception&& e) override;
  } errorLogger_;
  kj::Maybe<kj::Own<isolator::NetnsPool>> netnsPool_;  // outlives the launch worker
  kj::Maybe<kj::Own<isolator::Zygote>> zygote_;        // so does this
  kj::Own<LaunchWorker> launchWorker_;                 // before tasks_: its promises go first
  kj::Maybe<kj::ForkedPromise<void>> poolLaunch_;      // the latest refill launch; never rejects
  kj::TaskSet tasks_;
};

}  // namespace nodeagent
