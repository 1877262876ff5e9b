// Creates, finds and ends sandboxes; keeps their records in the store.
#pragma once

#include <map>
#include <string>

#include <kj/async.h>
#include <kj/string.h>
#include <kj/vector.h>

#include "isolator/cgroup.h"
#include "loop/uring_event_port.h"
#include "nodeagent/sandbox_runtime.h"
#include "nodeagent/store.h"
#include "nodeagent/store_writer.h"
#include "schema/config.capnp.h"
#include "schema/gateway.capnp.h"

namespace nodeagent {

class Supervisor {
 public:
  static constexpr kj::Duration kEndedRetention = 10 * kj::MINUTES;

  // Reads come from `store`; every write goes through `writer`.
  Supervisor(loop::UringEventPort& port, config::Config::Reader config, Store& store,
             StoreWriter& writer);
  ~Supervisor() noexcept(false);
  KJ_DISALLOW_COPY(Supervisor);

  // Prepares template skeletons and the cgroup tree, and ends sandboxes a
  // previous agent left in the store.
  void start();

  kj::Own<SandboxRuntime> create(api::SandboxSpec::Reader spec, kj::StringPtr actor);
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
  // A tenant's CPU weight against other tenants (1-10000; default 100).
  void setTenantWeight(kj::StringPtr tenant, uint32_t weight, kj::StringPtr actor);
  void audit(kj::StringPtr actor, kj::StringPtr action, kj::StringPtr sandboxId,
             kj::StringPtr tenant, kj::StringPtr detail);

  size_t liveCount() const { return live_.size(); }
  kj::Array<kj::String> templateNames();
  isolator::CgroupMode cgroupMode() const { return cgroupMode_; }
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
    uint32_t pidsMax;
    uint64_t diskBytes;
    uint32_t timeoutSeconds;
  };

  const TemplateInfo& requireTemplate(kj::StringPtr name);
  uint32_t allocateUidSlot();
  void onEnded(SandboxRuntime& sandbox);
  void onExpired(SandboxRuntime& sandbox);
  kj::Promise<void> pauseAs(SandboxRuntime& sandbox, kj::StringPtr actor, kj::StringPtr action,
                            kj::StringPtr detail);
  void endStaleRecords();
  void sweepOrphanCgroups();
  void loadTenantWeights();
  // Queues the record (and an audit entry, if given) as one change.
  void persist(state::SandboxRecord::Reader record,
               kj::Maybe<kj::Own<capnp::MallocMessageBuilder>> audit);

  loop::UringEventPort& port_;
  config::Config::Reader config_;
  Store& store_;
  StoreWriter& writer_;
  kj::AutoCloseFd hostLock_;
  kj::Vector<TemplateInfo> templates_;
  isolator::CgroupMode cgroupMode_;
  kj::Maybe<kj::Own<isolator::CgroupTree>> cgroupTree_;
  std::map<std::string, kj::Own<SandboxRuntime>> live_;
  std::map<std::string, kj::Own<SandboxRuntime>> ended_;
  std::map<uint32_t, std::string> uidSlots_;       // slot -> sandbox id
  std::map<std::string, uint32_t> tenantWeights_;  // tenants with a non-default weight
  struct ErrorLogger : public kj::TaskSet::ErrorHandler {
    void taskFailed(kj::Exception&& e) override;
  } errorLogger_;
  kj::TaskSet tasks_;
};

}  // namespace nodeagent
