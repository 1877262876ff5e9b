#include "nodeagent/supervisor.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <capnp/serialize.h>
#include <kj/debug.h>

#include "isolator/launcher.h"
#include "isolator/names.h"
#include "isolator/template.h"
#include "nodeagent/agent_cgroup.h"
#include "nodeagent/api_error.h"
#include "nodeagent/audit_entry.h"
#include "nodeagent/config.h"
#include "util/clock.h"
#include "util/log.h"

namespace nodeagent {
namespace {

constexpr uint64_t kMinMemoryBytes = 16ull << 20;
constexpr uint64_t kMinDiskBytes = 1ull << 20;
constexpr uint64_t kMaxBytes = 1ull << 50;
constexpr uint32_t kMaxTimeoutSeconds = 7 * 24 * 3600;
constexpr uint32_t kMaxCpuBurstSeconds = 24 * 3600;

kj::String newSandboxId() {
  uint64_t bits;
  KJ_SYSCALL(getrandom(&bits, sizeof(bits), 0));
  char id[24];
  snprintf(id, sizeof(id), "sbx-%016llx", static_cast<unsigned long long>(bits));
  return kj::str(id);
}

kj::String defaultInitPath() {
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  KJ_REQUIRE(n > 0, "cannot read /proc/self/exe");
  self[n] = '\0';
  kj::StringPtr path = self;
  KJ_IF_MAYBE (slash, path.findLast('/')) {
    return kj::str(path.slice(0, *slash), "/nodeagent-init");
  }
  return kj::str("nodeagent-init");
}

// Each sandbox's init mounts its root below the state dir with the sandbox's
// own (unprivileged) credentials, so every directory above must be
// searchable by others. Fail at start with a clear message, not per create.
void requireSearchableByOthers(kj::StringPtr dir) {
  kj::String path = kj::str(dir);
  for (;;) {
    struct stat st;
    KJ_SYSCALL(stat(path.cStr(), &st), path);
    KJ_REQUIRE((st.st_mode & S_IXOTH) != 0,
               "state directory's parents must be searchable by others (chmod o+x)", path);
    KJ_IF_MAYBE (slash, path.findLast('/')) {
      if (*slash == 0) return;
      path = kj::str(path.slice(0, *slash));
    } else {
      return;
    }
  }
}

void makeDir(kj::StringPtr path, mode_t mode) {
  if (mkdir(path.cStr(), mode) < 0 && errno != EEXIST) KJ_FAIL_SYSCALL("mkdir", errno, path);
}

// One agent per cgroup root: a second one would take the first one's
// sandboxes for orphans and end them. The lock lives as long as the agent.
kj::AutoCloseFd lockCgroupRoot(kj::StringPtr cgroupRoot) {
  makeDir("/run/lock", 01777);
  kj::String path = kj::str("/run/lock/nodeagent-", cgroupRoot, ".lock");
  int fd;
  KJ_SYSCALL(fd = open(path.cStr(), O_RDWR | O_CREAT | O_CLOEXEC, 0600), path);
  kj::AutoCloseFd lock(fd);
  if (flock(lock, LOCK_EX | LOCK_NB) < 0) {
    KJ_REQUIRE(errno != EWOULDBLOCK,
               "another nodeagent already manages this cgroup root; set cgroupRoot to run two",
               cgroupRoot, path);
    KJ_FAIL_SYSCALL("flock", errno, path);
  }
  return lock;
}

template <typename T>
kj::Own<capnp::MallocMessageBuilder> copyOf(typename T::Reader reader) {
  auto message = kj::heap<capnp::MallocMessageBuilder>();
  message->setRoot(reader);
  return message;
}

}  // namespace

void Supervisor::ErrorLogger::taskFailed(kj::Exception&& e) {
  log::error("supervisor.task_failed", {{"error", e.getDescription().cStr()}});
}

Supervisor::Supervisor(loop::UringEventPort& port, config::Config::Reader config, Store& store,
                       StoreWriter& writer, const NodeKey& key)
    : port_(port),
      config_(config),
      initPath_(config.getInitPath().size() > 0 ? kj::str(config.getInitPath())
                                                : defaultInitPath()),
      store_(store),
      writer_(writer),
      cgroupMode_(isolator::detectCgroupMode()),
      ledger_(
          kj::heap<UsageLedger>(port, store, writer, key,
                                int64_t(config.getLedger().getIntervalSeconds()) * kj::SECONDS)),
      launchWorker_(kj::heap<LaunchWorker>()),
      tasks_(errorLogger_) {}

Supervisor::~Supervisor() noexcept(false) {}

void Supervisor::start() {
  kj::StringPtr stateDir = config_.getStateDir();
  // Traversable (not listable) by others: each sandbox's init mounts its
  // tmpfs on a directory below, under the sandbox's own credentials.
  makeDir(stateDir, 0711);
  KJ_SYSCALL(chmod(stateDir.cStr(), 0711), stateDir);
  makeDir(kj::str(stateDir, "/templates"), 0755);
  makeDir(kj::str(stateDir, "/sandboxes"), 0711);
  requireSearchableByOthers(kj::str(stateDir, "/sandboxes"));
  seccomp_ = isolator::SeccompProgram::compileDefault();
  hostLock_ = lockCgroupRoot(config_.getCgroupRoot());
  cgroupTree_ = isolator::CgroupTree::open(config_.getCgroupRoot().cStr());
  if (config_.getTenantCgroupLingerSeconds() > 0) {
    KJ_ASSERT_NONNULL(cgroupTree_)->keepEmptyTenants(true);
  }
  if (config_.getCgroupFavorDynmods()) favorCgroupMigrations(*KJ_ASSERT_NONNULL(cgroupTree_));
  if (config_.getSpareNetns() > 0)
    netnsPool_ = kj::heap<isolator::NetnsPool>(config_.getSpareNetns());
  if (config_.getAgentCgroup()) {
    enterAgentCgroup(*KJ_ASSERT_NONNULL(cgroupTree_), AgentReservation{});
  }
  // After entering the agent's cgroup: new inits are born in the zygote's.
  if (config_.getInitZygote())
    zygote_ = kj::heap<isolator::Zygote>(initPath_.cStr(), STDERR_FILENO);
  loadTenantWeights();
  loadTenantRequests();
  startCpuMeter();
  startNetwork();
  std::string resolvConf = isolator::kDefaultResolvConf;
  KJ_IF_MAYBE (network, network_) {
    resolvConf = (*network)->resolvConf();
  }
  for (auto t : effectiveTemplates(config_)) {
    TemplateInfo info{kj::str(t.getName()),
                      kj::str(t.getUsrDir()),
                      kj::str(stateDir, "/templates/", t.getName()),
                      t.getMemoryBytes(),
                      t.getCpuMillis(),
                      t.getCpuSustainedMillis(),
                      t.getCpuBurstSeconds(),
                      t.getPidsMax(),
                      t.getDiskBytes(),
                      t.getTimeoutSeconds(),
                      t.getEgressMbps(),
                      {}};
    isolator::prepareSkeleton(info.skeletonDir.cStr(), info.usrDir.cStr(), resolvConf);
    info.seed = isolator::readSkeletonSeed(info.skeletonDir.cStr());
    templates_.add(kj::mv(info));
  }
  makeDir(kj::str(stateDir, "/control"), 0700);
  adoptLeftovers();
  // Tenants left without sandboxes while no agent ran (or within the last one's linger).
  KJ_ASSERT_NONNULL(cgroupTree_)->removeEmptyTenants();
  // Sandboxes that ended while no agent ran leave their counters and
  // policies behind.
  kj::Vector<uint64_t> live;
  for (auto& entry : live_) {
    struct stat st;
    if (fstat(entry.second->cgroupV2Fd(), &st) == 0) live.add(uint64_t(st.st_ino));
  }
  KJ_IF_MAYBE (meter, cpuMeter_) {
    (*meter)->retainOnly(live);
  }
  KJ_IF_MAYBE (network, network_) {
    (*network)->retainOnly(live);
  }
  writer_.flush();
  sweepOrphanCgroups();
  for (auto t : effectiveTemplates(config_)) {
    if (t.getWarmPool() > 0) pools_.add(WarmPool{kj::str(t.getName()), t.getWarmPool(), {}, 0});
  }
  scheduleRefill(kPoolRefillDelay);  // in the background, once the loop runs
  tasks_.add(ledger_->run([this]() {
    kj::Vector<kj::Own<SandboxRuntime>> billed;
    for (auto& entry : live_) {
      auto& sandbox = *entry.second;
      if (sandbox.running() && !isPoolRecord(sandbox.record())) billed.add(kj::addRef(sandbox));
    }
    return billed;
  }));
}

kj::Own<SandboxRuntime> Supervisor::startRuntime(SandboxRuntime::Parts parts, uint32_t uidSlot) {
  KJ_IF_MAYBE (meter, cpuMeter_) {
    parts.cpuMeter = **meter;
  }
  SandboxRuntime::Hooks hooks;
  hooks.ended = [this](SandboxRuntime& s) { onEnded(s); };
  hooks.released = [this](SandboxRuntime& s) { onReleased(s); };
  hooks.expired = [this](SandboxRuntime& s) { onExpired(s); };
  hooks.cpuCapped = [this](SandboxRuntime& s) { onCpuCapped(s); };
  auto runtime = kj::refcounted<SandboxRuntime>(port_, kj::mv(parts), kj::mv(hooks));
  std::string id = runtime->id().cStr();
  KJ_IF_MAYBE (network, network_) {
    NetworkService* service = *network;
    runtime->setEgressSource([service, id]() { return service->egressBytes(id.c_str()); });
  }
  uidSlots_.emplace(uidSlot, id);
  live_.emplace(id, kj::addRef(*runtime));
  return runtime;
}

kj::String Supervisor::bpfPinName() {
  kj::String name = kj::str(config_.getCgroupRoot());
  for (char& c : name) {
    if (c == '/') c = '-';
  }
  return name;
}

void Supervisor::startNetwork() {
  auto config = config_.getNetwork();
  if (!config.getEnabled()) {
    networkUnavailable_ = kj::str("networking is turned off in this node's configuration");
    return;
  }
  // Pinned per cgroup root, like the CPU meter: the next agent takes it over.
  NetworkService::Options options;
  options.config = config;
  options.pinDir =
      kj::str("/sys/fs/bpf/nodeagent/", bpfPinName(), "-egress").cStr();  // bpffs refuses dots
  auto& tree = *KJ_ASSERT_NONNULL(cgroupTree_);
  options.sandboxesV2Dir = tree.hierarchies().front().mount + "/" + tree.rootName() + "/sandboxes";
  auto service = kj::heap<NetworkService>(
      port_, kj::mv(options),
      [this](kj::StringPtr action, kj::StringPtr id, kj::StringPtr tenant, kj::StringPtr detail) {
        audit("kernel", action, id, tenant, detail);
      });
  try {
    ebpf::ensureBpffs();
    makeDir("/sys/fs/bpf/nodeagent", 0700);
    auto root = tree.hierarchies().front().mount + "/" + tree.rootName();
    mkdir(root.c_str(), 0755);
    service->start();
    network_ = kj::mv(service);
  } catch (kj::Exception& e) {
    networkUnavailable_ =
        kj::str("sandbox networking could not start on this node: ", e.getDescription());
    log::error("agent.network_unavailable", {{"error", e.getDescription().cStr()}});
  }
}

kj::Maybe<NetworkService&> Supervisor::network() {
  KJ_IF_MAYBE (n, network_) {
    return **n;
  }
  return nullptr;
}

void Supervisor::requireNetwork(api::NetworkMode mode) {
  if (mode != api::NetworkMode::OFF && network_ == nullptr) {
    throwApiError(api::ErrorCode::UNAVAILABLE, networkUnavailable_);
  }
}

void Supervisor::attachNetwork(SandboxRuntime& sandbox) {
  KJ_IF_MAYBE (network, network_) {
    auto rec = sandbox.record();
    NetworkService::SandboxRef ref{sandbox.id(), rec.getSpec().getTenant(), sandbox.cgroupId(),
                                   rec.getInitPid()};
    auto settings = NetworkService::settingsOf(rec.getSpec());
    uint32_t slot = (*network)->attach(ref, settings->getRoot<api::NetworkSettings>());
    sandbox.recordNetwork(settings->getRoot<api::NetworkSettings>(), slot);
  }
}

void Supervisor::setNetwork(SandboxRuntime& sandbox, api::NetworkSettings::Reader settings,
                            kj::StringPtr actor, api::NetworkStatus::Builder status) {
  if (!sandbox.running()) throwApiError(api::ErrorCode::NOT_RUNNING, "the sandbox has ended");
  requireNetwork(settings.getMode());
  auto rec = sandbox.record();
  // Validated as a spec would be: the template's bandwidth when 0.
  capnp::MallocMessageBuilder specMessage;
  auto spec = specMessage.initRoot<api::SandboxSpec>();
  spec.setNetwork(settings.getMode());
  spec.setAllow(settings.getAllow());
  spec.setEgressMbps(settings.getEgressMbps());
  spec.setEgressByteCap(settings.getEgressByteCap());
  NetworkService::validate(spec, requireTemplate(rec.getSpec().getTemplate()).egressMbps);
  auto filled = NetworkService::settingsOf(spec.asReader());
  auto filledSettings = filled->getRoot<api::NetworkSettings>().asReader();
  KJ_IF_MAYBE (network, network_) {
    NetworkService::SandboxRef ref{sandbox.id(), rec.getSpec().getTenant(), sandbox.cgroupId(),
                                   rec.getInitPid()};
    uint32_t slot = (*network)->update(ref, filledSettings);
    sandbox.recordNetwork(filledSettings, slot);
  }
  kj::String allow = kj::strArray(filledSettings.getAllow(), ",");
  persist(sandbox.record(),
          auditEntry(unixNowNs(), actor, "set-network", sandbox.id(), rec.getSpec().getTenant(),
                     kj::str("mode=", filledSettings.getMode(), " allow=", allow,
                             " egressMbps=", filledSettings.getEgressMbps(),
                             " egressByteCap=", filledSettings.getEgressByteCap())));
  fillNetworkStatus(sandbox, status);
}

kj::Vector<kj::Own<StoredAudit>> Supervisor::sandboxEvents(kj::StringPtr id, uint64_t afterSeq,
                                                           size_t limit) {
  // A scan of the log; the log is append-only and seq-ordered, so a cursor
  // (afterSeq) keeps repeated reads short.
  kj::Vector<kj::Own<StoredAudit>> found;
  uint64_t cursor = afterSeq;
  for (;;) {
    auto batch = store_.readAudit(cursor, 1000);
    if (batch.size() == 0) break;
    for (auto& entry : batch) {
      cursor = entry->get().getSeq();
      if (entry->get().getSandboxId() == id) {
        found.add(kj::mv(entry));
        if (found.size() >= limit) return found;
      }
    }
  }
  return found;
}

void Supervisor::fillNetworkStatus(SandboxRuntime& sandbox, api::NetworkStatus::Builder status) {
  KJ_IF_MAYBE (network, network_) {
    (*network)->fillStatus(sandbox.id(), status);
    return;
  }
  status.initSettings().setMode(api::NetworkMode::OFF);
}

void Supervisor::startCpuMeter() {
  // One meter per cgroup root, like the host lock: its counters are pinned
  // under a name of its own, so the next agent on this root takes them over.
  kj::String name = bpfPinName();
  try {
    ebpf::ensureBpffs();
    makeDir("/sys/fs/bpf/nodeagent", 0700);
    cpuMeter_ = ebpf::CpuMeter::start(kj::str("/sys/fs/bpf/nodeagent/", name));
  } catch (kj::Exception& e) {
    log::error("agent.cpu_meter_unavailable", {{"error", e.getDescription().cStr()}});
  }
}

void Supervisor::sweepOrphanCgroups() {
  // A sandbox whose create never reached the store (the agent died between
  // launch and commit) has a cgroup and no running record: end it. So has
  // one whose teardown an agent left half done.
  auto& tree = *KJ_ASSERT_NONNULL(cgroupTree_);
  for (auto& [tenant, id] : tree.listSandboxes()) {
    KJ_IF_MAYBE (stored, store_.getSandbox(id.c_str())) {
      auto rec = (*stored)->get();
      if (rec.getState() != api::SandboxState::STOPPED) {
        // A claimed sandbox's old pool cgroup, if the agent stopped before it
        // went (a claim moves every task out first).
        if (tenant == kPoolTenant && rec.getSpec().getTenant() != kPoolTenant) {
          KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() {
                         if (tree.removeSandboxRemains(tenant.c_str(), id.c_str())) return;
                         auto cgroup =
                             isolator::SandboxCgroup::adopt(tree, tenant.c_str(), id.c_str());
                         if (!cgroup->populated()) cgroup->remove();
                       })) {
            log::warn("sandbox.orphan_sweep_failed",
                      {{"id", id.c_str()}, {"error", e->getDescription().cStr()}});
          }
        }
        continue;
      }
    }
    log::warn("sandbox.orphan_swept", {{"id", id.c_str()}, {"tenant", tenant.c_str()}});
    try {
      if (!tree.removeSandboxRemains(tenant.c_str(), id.c_str())) {
        auto cgroup = isolator::SandboxCgroup::adopt(tree, tenant.c_str(), id.c_str());
        cgroup->killAll();
        cgroup->remove();
      }
    } catch (kj::Exception& e) {
      log::warn("sandbox.orphan_sweep_failed",
                {{"id", id.c_str()}, {"error", e.getDescription().cStr()}});
    }
    rmdir(kj::str(config_.getStateDir(), "/sandboxes/", id).cStr());
    unlink(controlSocketPathOf(id.c_str()).cStr());
  }
}

void Supervisor::persist(state::SandboxRecord::Reader record,
                         kj::Maybe<kj::Own<capnp::MallocMessageBuilder>> audit) {
  auto copy = copyOf<state::SandboxRecord>(record);
  writer_.submit([copy = kj::mv(copy), audit = kj::mv(audit)](Store::WriteTxn& txn) mutable {
    txn.putSandbox(copy->getRoot<state::SandboxRecord>().asReader());
    KJ_IF_MAYBE (a, audit) {
      txn.appendAudit((*a)->getRoot<state::AuditEntry>().asReader());
    }
  });
}

const Supervisor::TemplateInfo& Supervisor::requireTemplate(kj::StringPtr name) {
  for (auto& t : templates_) {
    if (t.name == name) return t;
  }
  throwApiError(api::ErrorCode::UNKNOWN_TEMPLATE,
                kj::str("no template named '", name, "' on this node"));
}

kj::Array<kj::String> Supervisor::templateNames() {
  return KJ_MAP(t, templates_) {
    return kj::str(t.name);
  };
}

uint32_t Supervisor::allocateUidSlot() {
  uint32_t slots = config_.getMaxSandboxes();
  for (uint32_t slot = 0; slot < slots; ++slot) {
    if (uidSlots_.find(slot) == uidSlots_.end()) return slot;
  }
  throwApiError(api::ErrorCode::LIMIT_EXCEEDED,
                kj::str("this node runs its maximum of ", slots, " sandboxes"));
}

kj::Promise<kj::Own<SandboxRuntime>> Supervisor::create(api::SandboxSpec::Reader spec,
                                                        kj::StringPtr actor, uint64_t reservation) {
  auto record = resolveSpec(spec);
  auto rec = record->getRoot<state::SandboxRecord>();
  auto filled = rec.getSpec();
  const TemplateInfo& tmpl = requireTemplate(filled.getTemplate());
  uint64_t ticket = 0;
  KJ_IF_MAYBE (gate, gate_) {
    ticket = gate->admit(filled.asReader(), reservation);
  }
  auto releaseTicket = [this, ticket]() {
    KJ_IF_MAYBE (gate, gate_) {
      gate->release(ticket);
    }
  };
  KJ_ON_SCOPE_FAILURE(releaseTicket());
  auto sandbox = [&]() -> kj::Promise<kj::Own<SandboxRuntime>> {
    KJ_IF_MAYBE (claimed, claimFromPool(filled.asReader(), tmpl, actor)) {
      return kj::mv(*claimed);
    }
    return launchWhenRoom(kj::mv(record), tmpl, kj::str(actor), monotonicNowNs() + kRoomWaitNs);
  }();
  return sandbox.then(
      [this, ticket](kj::Own<SandboxRuntime> sandbox) {
        if (gate_ != nullptr) capacityTickets_[sandbox->id().cStr()] = ticket;
        return sandbox;
      },
      [releaseTicket](kj::Exception&& e) -> kj::Own<SandboxRuntime> {
        releaseTicket();
        kj::throwFatalException(kj::mv(e));
      });
}

kj::Promise<kj::Own<SandboxRuntime>> Supervisor::launchWhenRoom(
    kj::Own<capnp::MallocMessageBuilder> record, const TemplateInfo& tmpl, kj::String actor,
    int64_t deadlineMonoNs) {
  // A claim takes a sandbox that already counts; a cold create adds one.
  // Each holds a uid range from its launch to its release.
  if (uidSlots_.size() >= config_.getMaxSandboxes()) {
    // One killed a moment ago keeps its range until the kernel has torn it
    // down (a millisecond or so): wait for that rather than refuse.
    for (auto& [id, sandbox] : ended_) {
      if (sandbox->released() || monotonicNowNs() >= deadlineMonoNs) continue;
      auto timeout =
          port_.timer().afterDelay((deadlineMonoNs - monotonicNowNs()) * kj::NANOSECONDS);
      return sandbox->whenReleased()
          .exclusiveJoin(kj::mv(timeout))
          .then([this, record = kj::mv(record), &tmpl, actor = kj::mv(actor),
                 deadlineMonoNs]() mutable {
            return launchWhenRoom(kj::mv(record), tmpl, kj::mv(actor), deadlineMonoNs);
          });
    }
    throwApiError(api::ErrorCode::LIMIT_EXCEEDED, kj::str("this node runs its maximum of ",
                                                          config_.getMaxSandboxes(), " sandboxes"));
  }
  auto rec = record->getRoot<state::SandboxRecord>();
  rec.setId(newSandboxId());
  auto filled = rec.getSpec();
  auto detail = kj::str("template=", filled.getTemplate(), " memory=", filled.getMemoryBytes(),
                        " cpuMillis=", filled.getCpuMillis());
  return launch(kj::mv(record), tmpl, actor, "create", kj::mv(detail));
}

void Supervisor::setCapacityGate(CapacityGate& gate) {
  gate_ = gate;
  for (auto& [id, sandbox] : live_) {
    auto rec = sandbox->record();
    if (isPoolRecord(rec) || !sandbox->running()) continue;
    capacityTickets_[id] = gate.admit(rec.getSpec(), 0);
  }
}

kj::Own<capnp::MallocMessageBuilder> Supervisor::resolveSpec(api::SandboxSpec::Reader spec) {
  if (!isolator::isValidName(spec.getTenant())) {
    throwApiError(api::ErrorCode::INVALID_ARGUMENT,
                  "tenant must be 1-64 characters of [A-Za-z0-9_-]");
  }
  if (spec.getTenant() == kPoolTenant) {
    throwApiError(api::ErrorCode::INVALID_ARGUMENT,
                  kj::str("tenant '", kPoolTenant, "' is reserved for warm pools"));
  }
  if (draining_) {
    throwApiError(api::ErrorCode::UNAVAILABLE,
                  "this node is draining and takes no new sandboxes; place it elsewhere");
  }
  const TemplateInfo& tmpl = requireTemplate(spec.getTemplate());
  requireNetwork(spec.getNetwork());

  auto record = kj::heap<capnp::MallocMessageBuilder>();
  auto rec = record->initRoot<state::SandboxRecord>();
  rec.setSpec(spec);
  auto filled = rec.getSpec();
  fillSpec(filled, tmpl);
  NetworkService::validate(filled, tmpl.egressMbps);
  return record;
}

void Supervisor::fillSpec(api::SandboxSpec::Builder filled, const TemplateInfo& tmpl) {
  if (filled.getMemoryBytes() == 0) filled.setMemoryBytes(tmpl.memoryBytes);
  if (filled.getCpuMillis() == 0) filled.setCpuMillis(tmpl.cpuMillis);
  if (filled.getCpuSustainedMillis() == 0) {
    filled.setCpuSustainedMillis(kj::min(tmpl.cpuSustainedMillis, filled.getCpuMillis()));
  }
  if (filled.getCpuSustainedMillis() > filled.getCpuMillis()) {
    throwApiError(api::ErrorCode::INVALID_ARGUMENT,
                  "sustained CPU cannot be above the burst CPU (cpuMillis)");
  }
  if (filled.getCpuBurstSeconds() == 0) filled.setCpuBurstSeconds(tmpl.cpuBurstSeconds);
  if (filled.getCpuBurstSeconds() > kMaxCpuBurstSeconds) {
    throwApiError(api::ErrorCode::INVALID_ARGUMENT,
                  kj::str("cpuBurstSeconds must be at most ", kMaxCpuBurstSeconds));
  }
  if (filled.getPidsMax() == 0) filled.setPidsMax(tmpl.pidsMax);
  if (filled.getDiskBytes() == 0) filled.setDiskBytes(tmpl.diskBytes);
  if (filled.getTimeoutSeconds() == 0) filled.setTimeoutSeconds(tmpl.timeoutSeconds);
  if (filled.getMemoryBytes() < kMinMemoryBytes) {
    throwApiError(api::ErrorCode::INVALID_ARGUMENT, "memory must be at least 16 MiB");
  }
  // Far above any host; also keeps memory + disk (the cgroup's limit) from wrapping.
  if (filled.getMemoryBytes() > kMaxBytes || filled.getDiskBytes() > kMaxBytes) {
    throwApiError(api::ErrorCode::INVALID_ARGUMENT, "memory and disk must be at most 1 PiB each");
  }
  if (filled.getDiskBytes() < kMinDiskBytes) {
    throwApiError(api::ErrorCode::INVALID_ARGUMENT, "disk must be at least 1 MiB");
  }
  if (filled.getTimeoutSeconds() > kMaxTimeoutSeconds) {
    throwApiError(api::ErrorCode::INVALID_ARGUMENT, "timeout must be at most 7 days");
  }
  uint32_t hostCpuMillis = uint32_t(sysconf(_SC_NPROCESSORS_ONLN)) * 1000;
  if (filled.getCpuMillis() > hostCpuMillis) {
    throwApiError(
        api::ErrorCode::LIMIT_EXCEEDED,
        kj::str("cpu ", filled.getCpuMillis(), "m exceeds this node's ", hostCpuMillis, "m"));
  }
}

isolator::CgroupLimits Supervisor::cgroupLimitsOf(api::SandboxSpec::Reader spec) {
  isolator::CgroupLimits limits;
  // The writable layer is a tmpfs, and the kernel charges its pages to the
  // sandbox's memory cgroup: the limit covers both, so that filling the disk
  // gives ENOSPC at its size instead of an OOM kill at the memory's.
  limits.memoryBytes = spec.getMemoryBytes() + spec.getDiskBytes();
  limits.pidsMax = spec.getPidsMax();
  // The burst is the quota a sandbox starts with (CpuCredit lowers it to the
  // sustained share while it has no credit). Sustained is also its weight
  // within its tenant: what it keeps when its tenant's sandboxes compete.
  // Tenants compete by their own weights one level up.
  limits.cpuMillis = spec.getCpuMillis();
  limits.cpuWeight = kj::max(1u, spec.getCpuSustainedMillis() / 10);
  return limits;
}

namespace {

// The sandbox's cgroups, and its tenant's CPU weight when it has one of its
// own (a tenant's cgroup is made afresh when its first sandbox comes). Any
// thread: it reads nothing of the supervisor's.
kj::Own<isolator::SandboxCgroup> makeSandboxCgroup(isolator::CgroupTree& tree, kj::StringPtr tenant,
                                                   kj::StringPtr id,
                                                   const isolator::CgroupLimits& limits,
                                                   kj::Maybe<uint32_t> tenantWeight) {
  auto cgroup = isolator::SandboxCgroup::create(tree, tenant, id, limits);
  KJ_IF_MAYBE (weight, tenantWeight) {
    KJ_ON_SCOPE_FAILURE(kj::runCatchingExceptions([&]() { cgroup->remove(); }));
    tree.setTenantWeight(tenant, *weight);
  }
  return cgroup;
}

}  // namespace

kj::Maybe<uint32_t> Supervisor::tenantWeightOf(kj::StringPtr tenant) const {
  auto weight = tenantWeights_.find(tenant.cStr());
  if (weight == tenantWeights_.end()) return nullptr;
  return weight->second;
}

kj::Own<isolator::SandboxCgroup> Supervisor::newCgroup(api::SandboxSpec::Reader spec,
                                                       kj::StringPtr id) {
  return makeSandboxCgroup(*KJ_ASSERT_NONNULL(cgroupTree_), spec.getTenant(), id,
                           cgroupLimitsOf(spec), tenantWeightOf(spec.getTenant()));
}

namespace {

// What the launch worker builds: a sandbox whose init is ready, not yet known
// to the supervisor.
struct Launched {
  kj::Own<isolator::SandboxCgroup> cgroup;
  isolator::LaunchedSandbox init;
  kj::AutoCloseFd rootDir;
};

// Kills init and removes what the launch made (a launch that failed after
// init was ready, or whose result nobody takes).
void discard(Launched& launched, kj::StringPtr workDir) {
  kj::runCatchingExceptions([&]() {
    syscall(SYS_pidfd_send_signal, launched.init.pidfd.get(), SIGKILL, nullptr, 0);
    isolator::reap(launched.init);
    launched.cgroup->killAll();
    launched.cgroup->remove();
  });
  rmdir(workDir.cStr());
}

}  // namespace

kj::Promise<kj::Own<SandboxRuntime>> Supervisor::launch(kj::Own<capnp::MallocMessageBuilder> record,
                                                        const TemplateInfo& tmpl,
                                                        kj::StringPtr actor, kj::StringPtr action,
                                                        kj::StringPtr detail) {
  auto rec = record->getRoot<state::SandboxRecord>();
  auto filled = rec.getSpec();
  kj::String id = kj::str(rec.getId());
  // Held from now on, so that launches under way never share a uid range.
  uint32_t slot = allocateUidSlot();
  uidSlots_.emplace(slot, id.cStr());
  KJ_ON_SCOPE_FAILURE(uidSlots_.erase(slot));
  uint32_t uidBase = config_.getUidBase() + slot * config_.getUidRangeSize();
  int64_t now = unixNowNs();
  rec.setState(api::SandboxState::RUNNING);
  rec.setCreatedAtNs(now);
  // No timeout (pool sandboxes): it lives until claimed or killed.
  uint32_t timeout = filled.getTimeoutSeconds();
  rec.setExpiresAtNs(timeout > 0 ? now + int64_t(timeout) * 1000000000 : 0);
  rec.setUidBase(uidBase);
  rec.setCgroupPath(kj::str("sandboxes/", filled.getTenant(), "/", id));

  // Everything the worker needs, copied: it reads nothing of ours meanwhile.
  auto spec = kj::heap<isolator::LaunchSpec>();
  spec->sandboxId = id.cStr();
  spec->hostname = id.cStr();
  spec->uidBase = uidBase;
  spec->uidCount = config_.getUidRangeSize();
  spec->initPath = initPath_.cStr();
  spec->skeletonDir = tmpl.skeletonDir.cStr();
  spec->usrDir = tmpl.usrDir.cStr();
  kj::String workDir = kj::str(config_.getStateDir(), "/sandboxes/", id);
  kj::String controlSocketPath = controlSocketPathOf(id);
  spec->workDir = workDir.cStr();
  spec->initStderrFd = STDERR_FILENO;  // init's own diagnostics join the agent's log
  spec->diskBytes = filled.getDiskBytes();
  spec->controlSocketPath = controlSocketPath.cStr();
  spec->seccompFilter = seccomp_.bytes();  // the supervisor outlives the worker's work
  spec->seed = &tmpl.seed;                 // so do its templates
  KJ_IF_MAYBE (zygote, zygote_) {
    spec->zygote = *zygote;  // and its zygote
  }
  isolator::CgroupLimits limits = cgroupLimitsOf(filled);
  kj::Maybe<uint32_t> tenantWeight = tenantWeightOf(filled.getTenant());
  auto& tree = *KJ_ASSERT_NONNULL(cgroupTree_);
  kj::String tenant = kj::str(filled.getTenant());
  isolator::NetnsPool* netnsPool = nullptr;
  KJ_IF_MAYBE (pool, netnsPool_) {
    netnsPool = *pool;
  }

  auto launched = launchWorker_->run([spec = kj::mv(spec), limits, tenantWeight, &tree,
                                      tenant = kj::mv(tenant), netnsPool]() mutable -> Launched {
    // On the worker thread: blocking, and nothing here touches the loop's state.
    Launched out;
    out.cgroup = makeSandboxCgroup(tree, tenant, spec->sandboxId, limits, tenantWeight);
    KJ_ON_SCOPE_FAILURE({
      kj::runCatchingExceptions([&]() {
        out.cgroup->killAll();
        out.cgroup->remove();
      });
      rmdir(spec->workDir.c_str());
    });
    makeDir(kj::StringPtr(spec->workDir.c_str()), 0700);
    spec->cgroup = out.cgroup.get();
    kj::AutoCloseFd netns;  // the sandbox's alone from here: closed, never handed on again
    if (netnsPool != nullptr) netns = netnsPool->take();
    spec->netnsFd = netns.get();
    out.init = isolator::launch(*spec);
    int rootFd =
        open(kj::str("/proc/", out.init.pid, "/root").cStr(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootFd < 0) {
      int error = errno;
      syscall(SYS_pidfd_send_signal, out.init.pidfd.get(), SIGKILL, nullptr, 0);
      isolator::reap(out.init);
      KJ_FAIL_SYSCALL("open sandbox root", error, out.init.pid);
    }
    out.rootDir = kj::AutoCloseFd(rootFd);
    return out;
  });
  return launched.then(
      [this, record = kj::mv(record), slot, workDir = kj::mv(workDir),
       controlSocketPath = kj::mv(controlSocketPath), actor = kj::str(actor),
       action = kj::str(action), detail = kj::str(detail)](Launched&& launched) mutable {
        auto rec = record->getRoot<state::SandboxRecord>();
        kj::String id = kj::str(rec.getId());
        rec.setInitPid(launched.init.pid);
        if (poolsStopped_ && isPoolRecord(rec)) {
          discard(launched, workDir);  // the agent is stopping: no pool any more
          uidSlots_.erase(slot);
          kj::throwRecoverableException(KJ_EXCEPTION(DISCONNECTED, "the agent is stopping"));
        }
        persist(rec.asReader(), auditEntry(rec.getCreatedAtNs(), actor, action, id,
                                           rec.getSpec().getTenant(), detail));
        SandboxRuntime::Parts parts;
        parts.record = kj::mv(record);
        parts.cgroup = kj::mv(launched.cgroup);
        parts.initPid = launched.init.pid;
        parts.initPidfd = kj::mv(launched.init.pidfd);
        parts.control = kj::mv(launched.init.control);
        parts.rootDir = kj::mv(launched.rootDir);
        parts.workDir = kj::mv(workDir);
        parts.controlSocketPath = kj::mv(controlSocketPath);
        // From here on the runtime owns the sandbox and cleans up after it.
        auto runtime = startRuntime(kj::mv(parts), slot);
        KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { attachNetwork(*runtime); })) {
          runtime->kill("network-failed");
          kj::throwFatalException(kj::mv(*e));
        }
        if (runtime->record().getNetIndex() != 0) persist(runtime->record(), nullptr);
        auto spec = runtime->record().getSpec();
        log::info("sandbox.created", {{"id", id.cStr()},
                                      {"tenant", spec.getTenant().cStr()},
                                      {"template", spec.getTemplate().cStr()},
                                      {"actor", actor.cStr()}});
        return runtime;
      },
      [this, slot](kj::Exception&& e) -> kj::Own<SandboxRuntime> {
        uidSlots_.erase(slot);
        kj::throwFatalException(kj::mv(e));
      });
}

kj::Maybe<kj::Own<SandboxRuntime>> Supervisor::find(kj::StringPtr id) {
  for (auto* registry : {&live_, &ended_}) {
    auto it = registry->find(id.cStr());
    if (it != registry->end() && !isPoolRecord(it->second->record())) {
      return kj::addRef(*it->second);
    }
  }
  return nullptr;
}

kj::Vector<kj::Own<capnp::MallocMessageBuilder>> Supervisor::list(kj::StringPtr tenant) {
  std::map<std::string, kj::Own<capnp::MallocMessageBuilder>> merged;
  auto wanted = [&](state::SandboxRecord::Reader rec) {
    if (isPoolRecord(rec)) return false;  // no tenant's until claimed
    return tenant.size() == 0 || rec.getSpec().getTenant() == tenant;
  };
  for (auto& stored : store_.listSandboxes()) {
    auto rec = stored->get();
    if (wanted(rec)) merged[rec.getId().cStr()] = copyOf<state::SandboxRecord>(rec);
  }
  // Memory is fresher than the store (timeouts move, writes are queued).
  for (auto* registry : {&live_, &ended_}) {
    for (auto& [id, sandbox] : *registry) {
      if (wanted(sandbox->record())) merged[id] = copyOf<state::SandboxRecord>(sandbox->record());
    }
  }
  kj::Vector<kj::Own<capnp::MallocMessageBuilder>> out;
  for (auto& entry : merged) out.add(kj::mv(entry.second));
  return out;
}

kj::Maybe<kj::Own<capnp::MallocMessageBuilder>> Supervisor::findRecord(kj::StringPtr id) {
  KJ_IF_MAYBE (stored, store_.getSandbox(id)) {
    if (!isPoolRecord((*stored)->get())) return copyOf<state::SandboxRecord>((*stored)->get());
  }
  return nullptr;
}

kj::Promise<void> Supervisor::kill(SandboxRuntime& sandbox, kj::StringPtr actor) {
  if (sandbox.running()) {
    audit(actor, "kill", sandbox.id(), sandbox.record().getSpec().getTenant(), "");
    sandbox.kill("killed");
  }
  return sandbox.whenEnded();
}

kj::Promise<void> Supervisor::pause(SandboxRuntime& sandbox, kj::StringPtr actor) {
  return pauseAs(sandbox, actor, "pause", "");
}

kj::Promise<void> Supervisor::pauseAs(SandboxRuntime& sandbox, kj::StringPtr actor,
                                      kj::StringPtr action, kj::StringPtr detail) {
  return kj::evalNow([&]() { return sandbox.pause(); })
      .then([this, ref = kj::addRef(sandbox), actor = kj::str(actor), action = kj::str(action),
             detail = kj::str(detail)](bool changed) mutable {
        if (!changed) return;
        auto rec = ref->record();
        persist(rec, auditEntry(unixNowNs(), actor, action, rec.getId(), rec.getSpec().getTenant(),
                                detail));
        if (!isPoolRecord(rec)) ledger_->record(*ref, "pause");
        log::info("sandbox.paused", {{"id", rec.getId().cStr()}, {"by", action.cStr()}});
      });
}

kj::Promise<void> Supervisor::resume(SandboxRuntime& sandbox, kj::StringPtr actor) {
  return kj::evalNow([&]() { return sandbox.resume(); })
      .then([this, ref = kj::addRef(sandbox), actor = kj::str(actor)](bool changed) mutable {
        if (!changed) return;
        auto rec = ref->record();
        persist(rec, auditEntry(unixNowNs(), actor, "resume", rec.getId(),
                                rec.getSpec().getTenant(), ""));
        if (!isPoolRecord(rec)) ledger_->record(*ref, "resume");
        log::info("sandbox.resumed", {{"id", rec.getId().cStr()}});
      });
}

void Supervisor::onCpuCapped(SandboxRuntime& sandbox) {
  auto rec = sandbox.record();
  kj::String detail = kj::str("reason=cpu-cap capMillis=", rec.getSpec().getCpuCapMillis());
  if (rec.getSpec().getOnCpuCap() == api::TimeoutAction::PAUSE) {
    tasks_.add(pauseAs(sandbox, "agent", "cpu-cap-pause", detail));
  } else {
    audit("agent", "cpu-cap", rec.getId(), rec.getSpec().getTenant(), detail);
    sandbox.kill("cpu-cap");
  }
}

void Supervisor::onExpired(SandboxRuntime& sandbox) {
  if (sandbox.record().getSpec().getOnTimeout() == api::TimeoutAction::PAUSE) {
    // It stays paused until resumed or killed; the pause says why.
    tasks_.add(pauseAs(sandbox, "agent", "timeout-pause", "reason=timeout"));
  } else {
    sandbox.kill("timeout");
  }
}

kj::Promise<void> Supervisor::killAll(kj::StringPtr reason) {
  poolsStopped_ = true;  // the pools' sandboxes go too, for good
  kj::Vector<kj::Promise<void>> waits;
  kj::Vector<kj::Own<SandboxRuntime>> refs;
  for (auto& entry : live_) refs.add(kj::addRef(*entry.second));
  for (auto& s : refs) {
    s->kill(reason);
    waits.add(s->whenReleased());
  }
  return kj::joinPromises(waits.releaseAsArray()).attach(kj::mv(refs));
}

namespace {
// Per-tenant settings kept in the store's meta as lines of "tenant value".
constexpr kj::StringPtr kTenantWeightsKey = "tenantWeights"_kj;
constexpr kj::StringPtr kTenantRequestCapsKey = "tenantRequestCaps"_kj;

std::map<std::string, uint64_t> parseTenantValues(kj::ArrayPtr<const kj::byte> bytes) {
  std::map<std::string, uint64_t> values;
  std::string text(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    size_t space = line.find(' ');
    if (space != std::string::npos)
      values[line.substr(0, space)] = std::stoull(line.substr(space + 1));
    start = end + 1;
  }
  return values;
}

template <typename Value>
void storeTenantValues(StoreWriter& writer, kj::StringPtr key,
                       const std::map<std::string, Value>& values) {
  std::string text;
  for (auto& [name, value] : values) text += name + " " + std::to_string(value) + "\n";
  writer.submit([key, text = kj::mv(text)](Store::WriteTxn& txn) {
    txn.putMeta(key, kj::arrayPtr(reinterpret_cast<const kj::byte*>(text.data()), text.size()));
  });
}
}  // namespace

void Supervisor::loadTenantWeights() {
  KJ_IF_MAYBE (bytes, store_.getMeta(kTenantWeightsKey)) {
    for (auto& [tenant, weight] : parseTenantValues(*bytes)) {
      tenantWeights_[tenant] = uint32_t(weight);
    }
  }
}

void Supervisor::setTenantWeight(kj::StringPtr tenant, uint32_t weight, kj::StringPtr actor) {
  if (!isolator::isValidName(tenant)) {
    throwApiError(api::ErrorCode::INVALID_ARGUMENT,
                  "tenant must be 1-64 characters of [A-Za-z0-9_-]");
  }
  if (weight < 1 || weight > 10000) {
    throwApiError(api::ErrorCode::INVALID_ARGUMENT, "tenant weight must be 1-10000");
  }
  auto& tree = *KJ_ASSERT_NONNULL(cgroupTree_);
  bool hasSandboxes = false;
  for (auto& entry : live_) {
    hasSandboxes = hasSandboxes || entry.second->record().getSpec().getTenant() == tenant;
  }
  if (hasSandboxes) tree.setTenantWeight(tenant, weight);
  tenantWeights_[tenant.cStr()] = weight;
  storeTenantValues(writer_, kTenantWeightsKey, tenantWeights_);
  audit(actor, "set-tenant-weight", "", tenant, kj::str("weight=", weight));
}

void Supervisor::loadTenantRequests() {
  for (auto& stored : store_.listBilled()) {
    auto totals = stored->get();
    tenantRequests_[totals.getTenant().cStr()] += totals.getRpcRequests();
  }
  KJ_IF_MAYBE (bytes, store_.getMeta(kTenantRequestCapsKey)) {
    for (auto& [tenant, cap] : parseTenantValues(*bytes)) tenantRequestCaps_[tenant] = cap;
  }
}

uint64_t Supervisor::tenantRequestCap(kj::StringPtr tenant) const {
  auto it = tenantRequestCaps_.find(tenant.cStr());
  return it != tenantRequestCaps_.end() ? it->second : config_.getLimits().getTenantRequestCap();
}

void Supervisor::admitRequest(SandboxRuntime& sandbox) {
  kj::StringPtr tenant = sandbox.record().getSpec().getTenant();
  uint64_t& count = tenantRequests_[tenant.cStr()];
  uint64_t cap = tenantRequestCap(tenant);
  if (cap != 0 && count >= cap) {
    throwApiError(api::ErrorCode::LIMIT_EXCEEDED,
                  kj::str("tenant ", tenant, " has made its ", cap,
                          " requests on this node (its tenant request cap); kill, info and "
                          "usage still work"));
  }
  sandbox.admitRequest();  // the sandbox's own cap; throws without counting
  ++count;
}

void Supervisor::countRequest(SandboxRuntime& sandbox) {
  sandbox.countRequest();
  ++tenantRequests_[sandbox.record().getSpec().getTenant().cStr()];
}

void Supervisor::setTenantRequestCap(kj::StringPtr tenant, uint64_t cap, kj::StringPtr actor) {
  if (!isolator::isValidName(tenant) || tenant == kPoolTenant) {
    throwApiError(api::ErrorCode::INVALID_ARGUMENT,
                  "tenant must be 1-64 characters of [A-Za-z0-9_-]");
  }
  if (cap == 0) {
    tenantRequestCaps_.erase(tenant.cStr());
  } else {
    tenantRequestCaps_[tenant.cStr()] = cap;
  }
  storeTenantValues(writer_, kTenantRequestCapsKey, tenantRequestCaps_);
  auto it = tenantRequests_.find(tenant.cStr());
  audit(actor, "set-tenant-request-cap", "", tenant,
        kj::str("cap=", cap, " used=", it == tenantRequests_.end() ? 0 : it->second));
}

void Supervisor::recordUsage(kj::StringPtr cause) {
  for (auto& entry : live_) {
    auto& sandbox = *entry.second;
    if (!sandbox.running() || isPoolRecord(sandbox.record())) continue;
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { ledger_->record(sandbox, cause); })) {
      log::warn("ledger.read_failed",
                {{"id", sandbox.id().cStr()}, {"error", e->getDescription().cStr()}});
    }
  }
}

void Supervisor::setDraining(bool draining, kj::StringPtr actor) {
  if (draining_ == draining) return;
  draining_ = draining;
  log::info(draining ? "agent.draining" : "agent.undrained", {{"actor", actor.cStr()}});
  audit(actor, draining ? "drain" : "undrain", "", "", "");
}

void Supervisor::audit(kj::StringPtr actor, kj::StringPtr action, kj::StringPtr sandboxId,
                       kj::StringPtr tenant, kj::StringPtr detail) {
  auto entry = auditEntry(unixNowNs(), actor, action, sandboxId, tenant, detail);
  writer_.submit([entry = kj::mv(entry)](Store::WriteTxn& txn) mutable {
    txn.appendAudit(entry->getRoot<state::AuditEntry>().asReader());
  });
}

void Supervisor::onEnded(SandboxRuntime& sandbox) {
  auto rec = sandbox.record();
  persist(rec, auditEntry(rec.getEndedAtNs(), "agent", "end", rec.getId(),
                          rec.getSpec().getTenant(), kj::str("reason=", rec.getEndReason())));
  if (!isPoolRecord(rec)) ledger_->recordEnd(sandbox);  // in the same commit as the end
  std::string id = sandbox.id().cStr();
  auto it = live_.find(id);
  if (it != live_.end()) {
    ended_.emplace(id, kj::mv(it->second));
    live_.erase(it);
  }
}

void Supervisor::scheduleTenantSweep(kj::StringPtr tenant) {
  auto& tree = *KJ_ASSERT_NONNULL(cgroupTree_);
  if (!tree.keepsEmptyTenants()) return;
  // The linger counts from the tenant's latest release; one timer per tenant.
  auto [entry, first] = tenantSweeps_.insert_or_assign(tenant.cStr(), monotonicNowNs());
  if (first)
    sweepTenantLater(kj::str(tenant), config_.getTenantCgroupLingerSeconds() * kj::SECONDS);
}

void Supervisor::sweepTenantLater(kj::String tenant, kj::Duration delay) {
  tasks_.add(port_.timer().afterDelay(delay).then([this, tenant = kj::mv(tenant)]() mutable {
    auto it = tenantSweeps_.find(tenant.cStr());
    if (it == tenantSweeps_.end()) return;
    int64_t lingerNs = int64_t(config_.getTenantCgroupLingerSeconds()) * 1000000000;
    int64_t leftNs = it->second + lingerNs - monotonicNowNs();
    if (leftNs > 0) return sweepTenantLater(kj::mv(tenant), leftNs * kj::NANOSECONDS);
    tenantSweeps_.erase(it);
    for (auto& entry : live_) {
      if (entry.second->record().getSpec().getTenant() == tenant) return;  // in use again
    }
    // A create of the tenant's on the launch worker just now makes the dirs again.
    KJ_IF_MAYBE (e, kj::runCatchingExceptions(
                        [&]() { KJ_ASSERT_NONNULL(cgroupTree_)->removeTenantIfEmpty(tenant); })) {
      log::warn("tenant.cgroup_cleanup_failed",
                {{"tenant", tenant.cStr()}, {"error", e->getDescription().cStr()}});
    }
  }));
}

void Supervisor::onReleased(SandboxRuntime& sandbox) {
  // Its tasks have exited and what it held is free: hand its address,
  // capacity and uid range on.
  KJ_IF_MAYBE (network, network_) {
    (*network)->release(sandbox.id());
  }
  KJ_IF_MAYBE (gate, gate_) {
    auto ticket = capacityTickets_.find(sandbox.id().cStr());
    if (ticket != capacityTickets_.end()) {
      gate->release(ticket->second);
      capacityTickets_.erase(ticket);
    }
  }
  for (auto it = uidSlots_.begin(); it != uidSlots_.end(); ++it) {
    if (it->second == sandbox.id().cStr()) {
      uidSlots_.erase(it);
      break;
    }
  }
  // Keep the ended sandbox readable (info, usage) for a while, then drop it.
  // From its release on: until then it holds what the kernel still tears down.
  tasks_.add(port_.timer().afterDelay(kEndedRetention).then([this, id = kj::str(sandbox.id())]() {
    ended_.erase(id.cStr());
  }));
  scheduleTenantSweep(sandbox.record().getSpec().getTenant());
  // An idle pool sandbox died: replace it, unhurried in case it keeps dying.
  // Any other end frees room a pool may be waiting for.
  scheduleRefill(dropFromPool(sandbox.id()) ? kPoolRetryDelay : kPoolRefillDelay);
}

}  // namespace nodeagent

// Warm pools ----------------------------------------------------------------

namespace nodeagent {

bool Supervisor::isPoolRecord(state::SandboxRecord::Reader record) {
  return record.getSpec().getTenant() == kPoolTenant;
}

kj::Array<Supervisor::WarmPoolStatus> Supervisor::warmPools() const {
  return KJ_MAP(pool, pools_) {
    return WarmPoolStatus{pool.templateName, pool.target, uint32_t(pool.idle.size()), pool.claims};
  };
}

size_t Supervisor::tenantSandboxCount() {
  size_t count = 0;
  for (auto& entry : live_) count += !isPoolRecord(entry.second->record());
  return count;
}

Supervisor::WarmPool* Supervisor::findPool(kj::StringPtr templateName) {
  for (auto& pool : pools_) {
    if (pool.templateName == templateName) return &pool;
  }
  return nullptr;
}

bool Supervisor::dropFromPool(kj::StringPtr id) {
  for (auto& pool : pools_) {
    for (auto it = pool.idle.begin(); it != pool.idle.end(); ++it) {
      if (*it == id.cStr()) {
        pool.idle.erase(it);
        return true;
      }
    }
  }
  return false;
}

kj::Promise<void> Supervisor::endPools() {
  poolsStopped_ = true;
  kj::Vector<kj::Promise<void>> waits;
  for (auto& pool : pools_) {
    for (auto& id : pool.idle) {
      auto it = live_.find(id);
      if (it == live_.end()) continue;
      // Held first: the kill may end it at once, moving it out of live_.
      auto sandbox = kj::addRef(*it->second);
      sandbox->kill("agent-stopped");
      waits.add(sandbox->whenReleased().attach(kj::mv(sandbox)));
    }
  }
  // A refill under way ends too: once init is ready, launch() sees the pools
  // stopped and discards it. Without this wait the agent could exit first and
  // leave that init running with nobody to end it.
  KJ_IF_MAYBE (launch, poolLaunch_) {
    waits.add(launch->addBranch());
  }
  return kj::joinPromises(waits.releaseAsArray());
}

void Supervisor::scheduleRefill(kj::Duration delay) {
  if (refillScheduled_ || poolsStopped_) return;
  bool short_ = false;
  for (auto& pool : pools_) short_ = short_ || pool.idle.size() < pool.target;
  if (!short_) return;
  refillScheduled_ = true;
  tasks_.add(port_.timer().afterDelay(delay).then([this]() { refillPools(); }));
}

void Supervisor::refillPools() {
  if (poolsStopped_) {
    refillScheduled_ = false;
    return;
  }
  for (auto& pool : pools_) {
    if (pool.idle.size() >= pool.target) continue;
    // Full: the next sandbox to end schedules another refill.
    if (uidSlots_.size() >= config_.getMaxSandboxes()) break;
    // One launch at a time; the next refill is scheduled when it is done.
    auto done = launchPoolSandbox(pool)
                    .then(
                        [this]() {
                          refillScheduled_ = false;
                          scheduleRefill(0 * kj::MILLISECONDS);
                        },
                        [this, name = kj::str(pool.templateName)](kj::Exception&& e) {
                          refillScheduled_ = false;
                          if (poolsStopped_) return;
                          log::warn("pool.fill_failed", {{"template", name.cStr()},
                                                         {"error", e.getDescription().cStr()}});
                          scheduleRefill(kPoolRetryDelay);
                        })
                    .fork();
    tasks_.add(done.addBranch());
    poolLaunch_ = kj::mv(done);
    return;
  }
  refillScheduled_ = false;
}

kj::Promise<void> Supervisor::launchPoolSandbox(WarmPool& pool) {
  const TemplateInfo& tmpl = requireTemplate(pool.templateName);
  auto record = kj::heap<capnp::MallocMessageBuilder>();
  auto rec = record->initRoot<state::SandboxRecord>();
  rec.setId(newSandboxId());
  // The template's limits, the most a claim may ask for; no timeout.
  auto spec = rec.initSpec();
  spec.setTenant(kPoolTenant);
  spec.setTemplate(tmpl.name);
  spec.setMemoryBytes(tmpl.memoryBytes);
  spec.setCpuMillis(tmpl.cpuMillis);
  spec.setCpuSustainedMillis(kj::min(tmpl.cpuSustainedMillis, tmpl.cpuMillis));
  spec.setCpuBurstSeconds(tmpl.cpuBurstSeconds);
  spec.setPidsMax(tmpl.pidsMax);
  spec.setDiskBytes(tmpl.diskBytes);
  return launch(kj::mv(record), tmpl, "agent", "pool-create",
                kj::str("template=", tmpl.name, " disk=", tmpl.diskBytes))
      .then(
          [&pool](kj::Own<SandboxRuntime> sandbox) { pool.idle.push_back(sandbox->id().cStr()); });
}

kj::Maybe<kj::Own<SandboxRuntime>> Supervisor::claimFromPool(api::SandboxSpec::Reader spec,
                                                             const TemplateInfo& tmpl,
                                                             kj::StringPtr actor) {
  WarmPool* pool = findPool(tmpl.name);
  // The writable layer's size is fixed when the sandbox is built.
  if (pool == nullptr || spec.getDiskBytes() != tmpl.diskBytes) return nullptr;
  while (!pool->idle.empty()) {
    std::string id = kj::mv(pool->idle.front());
    pool->idle.pop_front();
    auto it = live_.find(id);
    if (it == live_.end() || !it->second->running()) continue;
    auto sandbox = kj::addRef(*it->second);

    capnp::MallocMessageBuilder message;
    message.setRoot(sandbox->record());
    auto rec = message.getRoot<state::SandboxRecord>();
    rec.setSpec(spec);
    int64_t now = unixNowNs();
    rec.setCreatedAtNs(now);
    rec.setExpiresAtNs(now + int64_t(spec.getTimeoutSeconds()) * 1000000000);
    rec.setCgroupPath(kj::str("sandboxes/", spec.getTenant(), "/", id));
    kj::Own<isolator::SandboxCgroup> cgroup;
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { cgroup = newCgroup(spec, id); })) {
      pool->idle.push_front(kj::mv(id));  // untouched; still the pool's
      kj::throwFatalException(kj::mv(*e));
    }
    // On failure the sandbox is killed; its end refills the pool.
    KJ_IF_MAYBE (network, network_) {
      (*network)->release(sandbox->id());  // keyed by the pool's cgroup
    }
    sandbox->claim(rec.asReader(), kj::mv(cgroup));
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { attachNetwork(*sandbox); })) {
      sandbox->kill("network-failed");
      kj::throwFatalException(kj::mv(*e));
    }
    ++pool->claims;
    persist(sandbox->record(),
            auditEntry(now, actor, "create", rec.getId(), spec.getTenant(),
                       kj::str("template=", spec.getTemplate(), " memory=", spec.getMemoryBytes(),
                               " cpuMillis=", spec.getCpuMillis(), " warm=1")));
    log::info("sandbox.created", {{"id", id.c_str()},
                                  {"tenant", spec.getTenant().cStr()},
                                  {"template", spec.getTemplate().cStr()},
                                  {"actor", actor.cStr()},
                                  {"warm", true}});
    // After the reply and the tenant's first calls: a launch still holds the
    // loop for its cgroup bookkeeping.
    scheduleRefill(kPoolRefillDelay);
    return kj::mv(sandbox);
  }
  return nullptr;
}

}  // namespace nodeagent
