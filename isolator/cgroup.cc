#include "isolator/cgroup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <kj/debug.h>
#include <kj/exception.h>

#include <algorithm>
#include <sstream>
#include <thread>

#include "isolator/file_util.h"
#include "isolator/names.h"

namespace nodeagent::isolator {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kV2Controllers[] = {"cpu", "memory", "pids"};

// What a new cgroup's CPU period is, on v1 and v2.
constexpr uint32_t kDefaultCpuPeriodMicros = 100000;

// The token list of cgroup.controllers / cgroup.subtree_control.
bool hasToken(const std::string& list, const char* token) {
  std::istringstream in(list);
  std::string word;
  while (in >> word) {
    if (word == token) return true;
  }
  return false;
}

void makeCgroupDir(const std::string& path) {
  if (mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
    failSyscall("mkdir", errno, path);
  }
}

std::vector<pid_t> parsePids(const std::string& content) {
  std::vector<pid_t> out;
  std::istringstream in(content);
  long pid;
  while (in >> pid) out.push_back(pid_t(pid));
  return out;
}

// Whether /proc/<pid>/cgroup lists `relative` (a path inside a hierarchy) for any hierarchy.
bool procIsIn(pid_t pid, const std::string& relative) {
  std::string where = "/proc/" + std::to_string(pid);
  kj::AutoCloseFd dir(open(where.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.get() < 0) return false;
  std::optional<std::string> content;
  try {
    content = tryReadFileAt(dir, "cgroup", where);
  } catch (const kj::Exception&) {
    return false;
  }
  if (!content) return false;
  std::istringstream in(*content);
  std::string line;
  while (std::getline(in, line)) {
    size_t colon = line.find(':', line.find(':') + 1);
    if (colon == std::string::npos) continue;
    std::string path = line.substr(colon + 1);
    if (path == relative || path.rfind(relative + "/", 0) == 0) return true;
  }
  return false;
}

uint64_t readCounter(int dirfd, const char* name, const std::string& where) {
  auto content = tryReadFileAt(dirfd, name, where);
  if (!content) return 0;
  return parseUnsigned(*content).value_or(0);
}

uint64_t readKeyed(int dirfd, const char* name, const char* key, const std::string& where) {
  auto content = tryReadFileAt(dirfd, name, where);
  if (!content) return 0;
  return findKeyedValue(*content, key).value_or(0);
}

// Writes a limit file that may legitimately be missing (e.g. memory.swap.max without swap
// accounting) as long as the value asked for is the "no limit" one.
void writeOptional(int dirfd, const char* name, const std::string& value, bool required,
                   const std::string& where) {
  int err = tryWriteFileAt(dirfd, name, value);
  if (err == 0 || (err == ENOENT && !required)) return;
  failSyscall("write", err, where + "/" + name + " (\"" + value + "\")");
}

// `fresh`: the leaf was just made and holds the kernel's defaults (no CPU burst,
// a 100 ms period, no quota), so writes that would only restore them are skipped.
void setV2Limits(const SandboxCgroup::Leaf& leaf, const CgroupLimits& limits, bool fresh) {
  int dir = leaf.dir.get();
  const std::string& where = leaf.path;
  writeFileAt(dir, "memory.max",
              limits.memoryBytes ? std::to_string(limits.memoryBytes) : std::string("max"), where);
  writeOptional(dir, "memory.swap.max", "0", false, where);
  writeFileAt(dir, "pids.max", limits.pidsMax ? std::to_string(limits.pidsMax) : "max", where);
  std::string period = std::to_string(limits.cpuPeriodMicros);
  if (limits.cpuMillis) {
    uint64_t quota =
        std::max<uint64_t>(1000, uint64_t(limits.cpuMillis) * limits.cpuPeriodMicros / 1000);
    // Burst must not exceed the quota, so clear it before a quota change.
    if (!fresh) writeOptional(dir, "cpu.max.burst", "0", false, where);
    writeFileAt(dir, "cpu.max", std::to_string(quota) + " " + period, where);
  } else {
    writeFileAt(dir, "cpu.max", "max " + period, where);
  }
  if (!fresh || limits.cpuBurstMicros != 0) {
    writeOptional(dir, "cpu.max.burst", std::to_string(limits.cpuBurstMicros),
                  limits.cpuBurstMicros != 0, where);
  }
  if (limits.cpuWeight) {
    writeFileAt(dir, "cpu.weight", std::to_string(limits.cpuWeight), where);
  }
}

void setV1MemoryLimit(const SandboxCgroup::Leaf& leaf, uint64_t bytes) {
  int dir = leaf.dir.get();
  std::string value = bytes ? std::to_string(bytes) : "-1";
  // memsw (memory+swap) must stay >= the memory limit, so the order depends on direction.
  bool hasMemsw = faccessat(dir, "memory.memsw.limit_in_bytes", F_OK, 0) == 0;
  int err = tryWriteFileAt(dir, "memory.limit_in_bytes", value);
  if (err == EINVAL && hasMemsw) {
    writeFileAt(dir, "memory.memsw.limit_in_bytes", value, leaf.path);
    err = tryWriteFileAt(dir, "memory.limit_in_bytes", value);
  }
  if (err != 0) failSyscall("write", err, leaf.path + "/memory.limit_in_bytes (" + value + ")");
  if (hasMemsw) writeFileAt(dir, "memory.memsw.limit_in_bytes", value, leaf.path);
}

// `fresh` as for setV2Limits.
void setV1CpuLimits(const SandboxCgroup::Leaf& leaf, const CgroupLimits& limits, bool fresh) {
  int dir = leaf.dir.get();
  if (!fresh) writeOptional(dir, "cpu.cfs_burst_us", "0", false, leaf.path);
  if (!fresh || limits.cpuPeriodMicros != kDefaultCpuPeriodMicros) {
    writeFileAt(dir, "cpu.cfs_period_us", std::to_string(limits.cpuPeriodMicros), leaf.path);
  }
  if (limits.cpuMillis) {
    uint64_t quota =
        std::max<uint64_t>(1000, uint64_t(limits.cpuMillis) * limits.cpuPeriodMicros / 1000);
    writeFileAt(dir, "cpu.cfs_quota_us", std::to_string(quota), leaf.path);
  } else if (!fresh) {
    writeFileAt(dir, "cpu.cfs_quota_us", "-1", leaf.path);
  }
  if (limits.cpuBurstMicros) {
    writeOptional(dir, "cpu.cfs_burst_us", std::to_string(limits.cpuBurstMicros), true, leaf.path);
  }
  if (limits.cpuWeight) {
    // cpu.shares: 1024 is the default, as cpu.weight 100 is on v2.
    uint64_t shares = std::max<uint64_t>(2, uint64_t(limits.cpuWeight) * 1024 / 100);
    writeFileAt(dir, "cpu.shares", std::to_string(shares), leaf.path);
  }
}

void validateLimits(const CgroupLimits& limits) {
  KJ_REQUIRE(limits.cpuPeriodMicros >= 1000 && limits.cpuPeriodMicros <= 1000000,
             "cpu period must be 1ms..1s", limits.cpuPeriodMicros);
  KJ_REQUIRE(limits.cpuWeight <= 10000, "cpu weight must be 1..10000", limits.cpuWeight);
  KJ_REQUIRE(limits.cpuBurstMicros == 0 || limits.cpuMillis != 0, "cpu burst needs a cpu quota");
}

// The child cgroups of `path` whose names we could have made, sorted; none if it is gone.
std::vector<std::string> listCgroupNames(const std::string& path) {
  std::vector<std::string> names;
  DIR* dir = opendir(path.c_str());
  if (dir == nullptr) {
    if (errno == ENOENT) return names;
    failSyscall("opendir", errno, path);
  }
  KJ_DEFER(closedir(dir));
  while (struct dirent* entry = readdir(dir)) {
    if (entry->d_type == DT_DIR && isValidName(entry->d_name)) names.push_back(entry->d_name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// CgroupTree

CgroupTree::CgroupTree(CgroupLayout layout, std::string rootName)
    : layout_(std::move(layout)), rootName_(std::move(rootName)) {
  requireValidName("cgroup root", rootName_);
  CgroupHierarchy v2;
  v2.mount = layout_.v2;
  v2.v2 = true;
  if (layout_.mode == CgroupMode::kV2) {
    v2.memory = v2.pids = v2.cpu = v2.cpuacct = v2.freezer = true;
  }
  hierarchies_.push_back(v2);
  if (layout_.mode == CgroupMode::kHybrid) {
    auto add = [&](const std::string& mount, bool CgroupHierarchy::*controller) {
      KJ_REQUIRE(!mount.empty(), "hybrid cgroup layout lacks a v1 controller mount");
      auto it = std::find_if(hierarchies_.begin() + 1, hierarchies_.end(),
                             [&](const CgroupHierarchy& h) { return h.mount == mount; });
      if (it == hierarchies_.end()) {
        CgroupHierarchy h;
        h.mount = mount;
        hierarchies_.push_back(h);
        it = hierarchies_.end() - 1;
      }
      (*it).*controller = true;
    };
    add(layout_.memory, &CgroupHierarchy::memory);
    add(layout_.pids, &CgroupHierarchy::pids);
    add(layout_.cpu, &CgroupHierarchy::cpu);
    add(layout_.cpuacct, &CgroupHierarchy::cpuacct);
    add(layout_.freezer, &CgroupHierarchy::freezer);
  }
}

kj::Own<CgroupTree> CgroupTree::open(std::string rootName) {
  return kj::heap<CgroupTree>(detectCgroupLayout(), std::move(rootName));
}

std::string CgroupTree::tenantPath(const CgroupHierarchy& h, kj::StringPtr tenant) const {
  return h.mount + "/" + rootName_ + "/sandboxes/" + tenant.cStr();
}

std::string CgroupTree::sandboxPath(const CgroupHierarchy& h, kj::StringPtr tenant,
                                    kj::StringPtr sandbox) const {
  return tenantPath(h, tenant) + "/" + sandbox.cStr();
}

void CgroupTree::enableV2Controllers(const CgroupHierarchy& h, const std::string& path) {
  (void)h;
  kj::AutoCloseFd dir = openDirectory(path);
  std::string enabled = readFileAt(dir, "cgroup.subtree_control", path);
  std::string missing;
  for (const char* controller : kV2Controllers) {
    if (hasToken(enabled, controller)) continue;
    if (!missing.empty()) missing += " ";
    missing += "+";
    missing += controller;
  }
  if (missing.empty()) return;
  std::string available = readFileAt(dir, "cgroup.controllers", path);
  for (const char* controller : kV2Controllers) {
    KJ_REQUIRE(hasToken(available, controller),
               "cgroup v2 controller is not available (not delegated, or bound to v1)", controller,
               path.c_str());
  }
  writeFileAt(dir, "cgroup.subtree_control", missing, path);
}

void CgroupTree::ensureTenant(kj::StringPtr tenant) {
  requireValidName("tenant", tenant);
  // Not interleaved with removeTenantIfEmpty(): it could take a dir between its mkdir
  // and the controller writes below.
  std::lock_guard<std::mutex> tenantDirs(tenantDirsMutex_);
  for (const CgroupHierarchy& h : hierarchies_) {
    std::string root = h.mount + "/" + rootName_;
    std::string sandboxes = root + "/sandboxes";
    std::string tenantDir = tenantPath(h, tenant);
    bool controllers = h.v2 && layout_.mode == CgroupMode::kV2;
    // v2 only lets a cgroup use a controller its parent enabled for its children.
    if (controllers) enableV2Controllers(h, h.mount);
    makeCgroupDir(root);
    if (controllers) enableV2Controllers(h, root);
    makeCgroupDir(sandboxes);
    if (controllers) enableV2Controllers(h, sandboxes);
    makeCgroupDir(tenantDir);
    if (controllers) enableV2Controllers(h, tenantDir);
  }
  std::lock_guard<std::mutex> lock(ensuredMutex_);
  ensured_.insert(tenant.cStr());
}

bool CgroupTree::tenantEnsured(kj::StringPtr tenant) const {
  std::lock_guard<std::mutex> lock(ensuredMutex_);
  return ensured_.count(tenant.cStr()) != 0;
}

void CgroupTree::setTenantWeight(kj::StringPtr tenant, uint32_t weight) {
  KJ_REQUIRE(weight >= 1 && weight <= 10000, "tenant weight must be 1..10000", weight);
  if (!tenantEnsured(tenant)) ensureTenant(tenant);
  for (const CgroupHierarchy& h : hierarchies_) {
    if (!h.cpu) continue;
    std::string path = tenantPath(h, tenant);
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
      ensureTenant(tenant);  // removed since (removeTenantIfEmpty)
      fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    }
    if (fd < 0) failSyscall("open", errno, path);
    kj::AutoCloseFd dir(fd);
    if (h.v2) {
      writeFileAt(dir, "cpu.weight", std::to_string(weight), path);
    } else {
      writeFileAt(dir, "cpu.shares", std::to_string(std::max<uint64_t>(2, weight * 1024ull / 100)),
                  path);
    }
  }
}

std::vector<std::pair<std::string, std::string>> CgroupTree::listSandboxes() const {
  std::vector<std::pair<std::string, std::string>> out;
  std::string sandboxes = hierarchies_.front().mount + "/" + rootName_ + "/sandboxes";
  for (const std::string& tenant : listCgroupNames(sandboxes)) {
    for (const std::string& sandbox : listCgroupNames(sandboxes + "/" + tenant)) {
      out.emplace_back(tenant, sandbox);
    }
  }
  return out;
}

bool CgroupTree::removeSandboxRemains(kj::StringPtr tenant, kj::StringPtr sandboxId) {
  requireValidName("tenant", tenant);
  requireValidName("sandbox", sandboxId);
  bool whole = true;
  for (const CgroupHierarchy& h : hierarchies_) {
    whole = whole && access(sandboxPath(h, tenant, sandboxId).c_str(), F_OK) == 0;
  }
  if (whole) return false;
  // v1 first, the v2 leaf (which BPF may reference) last, as SandboxCgroup::remove().
  for (auto h = hierarchies_.rbegin(); h != hierarchies_.rend(); ++h) {
    std::string path = sandboxPath(*h, tenant, sandboxId);
    if (rmdir(path.c_str()) != 0 && errno != ENOENT) failSyscall("rmdir", errno, path);
  }
  return true;
}

void CgroupTree::removeIfEmpty() {
  for (const CgroupHierarchy& h : hierarchies_) {
    std::string root = h.mount + "/" + rootName_;
    // Each fails harmlessly (ENOTEMPTY, EBUSY, ENOENT) while something is still there.
    rmdir((root + "/sandboxes").c_str());
    rmdir(root.c_str());
  }
}

bool CgroupTree::removeTenantIfEmpty(kj::StringPtr tenant) {
  requireValidName("tenant", tenant);
  std::lock_guard<std::mutex> tenantDirs(tenantDirsMutex_);
  {
    // First: a create() from now on makes sure of the dirs itself.
    std::lock_guard<std::mutex> lock(ensuredMutex_);
    ensured_.erase(tenant.cStr());
  }
  bool gone = true;
  // v1 first, the v2 dir (which BPF may reference) last.
  for (auto h = hierarchies_.rbegin(); h != hierarchies_.rend(); ++h) {
    std::string path = tenantPath(*h, tenant);
    // ENOTEMPTY or EBUSY while a sandbox (or one being made) is in it.
    if (rmdir(path.c_str()) != 0 && errno != ENOENT) gone = false;
  }
  return gone;
}

void CgroupTree::removeEmptyTenants() {
  // In any hierarchy: a crash may have left a tenant's dirs in some only.
  std::set<std::string> tenants;
  for (const CgroupHierarchy& h : hierarchies_) {
    for (std::string& tenant : listCgroupNames(h.mount + "/" + rootName_ + "/sandboxes")) {
      tenants.insert(kj::mv(tenant));
    }
  }
  for (const std::string& tenant : tenants) removeTenantIfEmpty(tenant);
}

// ---------------------------------------------------------------------------------------
// SandboxCgroup

SandboxCgroup::SandboxCgroup(CgroupTree& tree, std::string tenant, std::string sandboxId,
                             std::vector<Leaf> leaves)
    : tree_(tree),
      tenant_(std::move(tenant)),
      sandboxId_(std::move(sandboxId)),
      leaves_(std::move(leaves)) {}

kj::Own<SandboxCgroup> SandboxCgroup::create(CgroupTree& tree, kj::StringPtr tenant,
                                             kj::StringPtr sandboxId, const CgroupLimits& limits) {
  requireValidName("tenant", tenant);
  requireValidName("sandbox", sandboxId);
  validateLimits(limits);
  // Once this process has ensured the tenant's dirs (and on v2 their controllers), the
  // first attempt goes straight for the leaves: ensureTenant() is a dozen mkdirs (more
  // reads and writes on v2). ENOENT means the dirs went since (a concurrent remove() of
  // the tenant's last sandbox deletes them): ensure them and retry.
  for (int attempt = 0;; ++attempt) {
    if (attempt > 0 || !tree.tenantEnsured(tenant)) tree.ensureTenant(tenant);
    std::vector<Leaf> leaves;
    bool raced = false;
    {
      KJ_ON_SCOPE_FAILURE(for (Leaf& leaf : leaves) rmdir(leaf.path.c_str()));
      for (const CgroupHierarchy& h : tree.hierarchies()) {
        std::string path = tree.sandboxPath(h, tenant, sandboxId);
        if (mkdir(path.c_str(), 0755) != 0) {
          int err = errno;
          if (err == ENOENT && attempt < 4) {
            raced = true;
            break;
          }
          if (err == EEXIST) failSyscall("create sandbox cgroup (already exists)", err, path);
          failSyscall("mkdir", err, path);
        }
        Leaf leaf;
        leaf.hierarchy = h;
        leaf.path = path;
        leaves.push_back(std::move(leaf));
        leaves.back().dir = openDirectory(path);
      }
      if (!raced) {
        auto cgroup = kj::heap<SandboxCgroup>(tree, std::string(tenant.cStr()),
                                              std::string(sandboxId.cStr()), std::move(leaves));
        KJ_ON_SCOPE_FAILURE(for (Leaf& leaf : cgroup->leaves_) rmdir(leaf.path.c_str()));
        cgroup->applyLimits(limits, /*fresh=*/true);
        return cgroup;
      }
    }
    for (Leaf& leaf : leaves) rmdir(leaf.path.c_str());
  }
}

kj::Own<SandboxCgroup> SandboxCgroup::adopt(CgroupTree& tree, kj::StringPtr tenant,
                                            kj::StringPtr sandboxId) {
  requireValidName("tenant", tenant);
  requireValidName("sandbox", sandboxId);
  std::vector<Leaf> leaves;
  for (const CgroupHierarchy& h : tree.hierarchies()) {
    Leaf leaf;
    leaf.hierarchy = h;
    leaf.path = tree.sandboxPath(h, tenant, sandboxId);
    leaf.dir = tryOpenDirectory(leaf.path);
    if (leaf.dir.get() < 0) failSyscall("adopt sandbox cgroup", ENOENT, leaf.path);
    leaves.push_back(std::move(leaf));
  }
  return kj::heap<SandboxCgroup>(tree, std::string(tenant.cStr()), std::string(sandboxId.cStr()),
                                 std::move(leaves));
}

const SandboxCgroup::Leaf* SandboxCgroup::findLeaf(bool CgroupHierarchy::*controller) const {
  for (const Leaf& leaf : leaves_) {
    if (leaf.hierarchy.*controller) return &leaf;
  }
  return nullptr;
}

void SandboxCgroup::addProcess(pid_t pid) {
  KJ_REQUIRE(!removed_, "sandbox cgroup was already removed", sandboxId_.c_str());
  for (const Leaf& leaf : leaves_) {
    writeFileAt(leaf.dir, "cgroup.procs", std::to_string(pid), leaf.path);
  }
}

void SandboxCgroup::setLimits(const CgroupLimits& limits) {
  applyLimits(limits, /*fresh=*/false);
}

void SandboxCgroup::applyLimits(const CgroupLimits& limits, bool fresh) {
  KJ_REQUIRE(!removed_, "sandbox cgroup was already removed", sandboxId_.c_str());
  validateLimits(limits);
  if (tree_.mode() == CgroupMode::kV2) {
    setV2Limits(leaves_.front(), limits, fresh);
    return;
  }
  setV1MemoryLimit(*findLeaf(&CgroupHierarchy::memory), limits.memoryBytes);
  const Leaf& pids = *findLeaf(&CgroupHierarchy::pids);
  writeFileAt(pids.dir, "pids.max", limits.pidsMax ? std::to_string(limits.pidsMax) : "max",
              pids.path);
  setV1CpuLimits(*findLeaf(&CgroupHierarchy::cpu), limits, fresh);
}

void SandboxCgroup::setCpuQuota(uint32_t cpuMillis) {
  KJ_REQUIRE(!removed_, "sandbox cgroup was already removed", sandboxId_.c_str());
  uint64_t period = kDefaultCpuPeriodMicros;
  std::string quota =
      cpuMillis ? std::to_string(std::max<uint64_t>(1000, cpuMillis * period / 1000)) : "";
  if (tree_.mode() == CgroupMode::kV2) {
    const Leaf& leaf = leaves_.front();
    writeFileAt(leaf.dir, "cpu.max", (cpuMillis ? quota : "max") + " " + std::to_string(period),
                leaf.path);
    return;
  }
  const Leaf& cpu = *findLeaf(&CgroupHierarchy::cpu);
  writeFileAt(cpu.dir, "cpu.cfs_quota_us", cpuMillis ? quota : "-1", cpu.path);
}

std::vector<pid_t> SandboxCgroup::pids() const {
  KJ_REQUIRE(!removed_, "sandbox cgroup was already removed", sandboxId_.c_str());
  const Leaf& leaf = leaves_.front();
  return parsePids(readFileAt(leaf.dir, "cgroup.procs", leaf.path));
}

bool SandboxCgroup::populated() const {
  KJ_REQUIRE(!removed_, "sandbox cgroup was already removed", sandboxId_.c_str());
  const Leaf& leaf = leaves_.front();
  return readKeyed(leaf.dir, "cgroup.events", "populated", leaf.path) != 0;
}

void SandboxCgroup::killAll(KillMethod method) {
  KJ_REQUIRE(!removed_, "sandbox cgroup was already removed", sandboxId_.c_str());
  bool hybrid = tree_.mode() == CgroupMode::kHybrid;
  if (method == KillMethod::kV1Freezer || (method == KillMethod::kAuto && hybrid)) {
    const Leaf* freezer = findLeaf(&CgroupHierarchy::freezer);
    KJ_REQUIRE(freezer != nullptr && !freezer->hierarchy.v2, "no v1 freezer on this host");
    killWithFreezer(*freezer);
    if (method == KillMethod::kV1Freezer) return;
    killAtOnce();  // a backstop on the unified leaf, where the kernel has cgroup.kill
    return;
  }
  if (!killAtOnce()) failSyscall("write", ENOENT, leaves_.front().path + "/cgroup.kill");
}

bool SandboxCgroup::killAtOnce() {
  KJ_REQUIRE(!removed_, "sandbox cgroup was already removed", sandboxId_.c_str());
  const Leaf& v2 = leaves_.front();
  int err = tryWriteFileAt(v2.dir, "cgroup.kill", "1");
  if (err == ENOENT) return false;
  if (err != 0) failSyscall("write", err, v2.path + "/cgroup.kill");
  return true;
}

void SandboxCgroup::killWithFreezer(const Leaf& freezer) {
  // Frozen tasks cannot fork or exit, so the member list is stable and no pid can be
  // recycled while we signal it.
  writeFileAt(freezer.dir, "freezer.state", "FROZEN", freezer.path);
  {
    KJ_ON_SCOPE_FAILURE(tryWriteFileAt(freezer.dir, "freezer.state", "THAWED"));
    auto deadline = Clock::now() + std::chrono::milliseconds(500);
    bool frozen = false;
    while (!frozen && Clock::now() < deadline) {
      frozen = readFileAt(freezer.dir, "freezer.state", freezer.path) == "FROZEN\n";
      if (!frozen) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    std::string relative = freezer.path.substr(freezer.hierarchy.mount.size());
    for (int round = 0; round < 100; ++round) {
      std::vector<pid_t> members = parsePids(readFileAt(freezer.dir, "cgroup.procs", freezer.path));
      bool any = false;
      for (pid_t pid : members) {
        // Pin the process with a pidfd, then make sure it is (still) ours: if freezing did
        // not finish, a member may have exited and its pid been reused outside the sandbox.
        int fd = int(syscall(SYS_pidfd_open, pid, 0));
        if (fd < 0) continue;
        kj::AutoCloseFd pidfd(fd);
        if (!procIsIn(pid, relative)) continue;
        if (syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0) == 0) any = true;
      }
      // Once frozen, one pass is enough; a partly frozen group may still be forking.
      if (frozen || !any) break;
    }
  }
  // Killed tasks die as soon as they thaw.
  writeFileAt(freezer.dir, "freezer.state", "THAWED", freezer.path);
}

CgroupStats SandboxCgroup::stats() const {
  KJ_REQUIRE(!removed_, "sandbox cgroup was already removed", sandboxId_.c_str());
  CgroupStats s;
  if (tree_.mode() == CgroupMode::kV2) {
    const Leaf& leaf = leaves_.front();
    int dir = leaf.dir.get();
    auto cpu = tryReadFileAt(dir, "cpu.stat", leaf.path).value_or("");
    s.cpuUserNs = findKeyedValue(cpu, "user_usec").value_or(0) * 1000;
    s.cpuSystemNs = findKeyedValue(cpu, "system_usec").value_or(0) * 1000;
    s.memoryCurrentBytes = readCounter(dir, "memory.current", leaf.path);
    s.memoryPeakBytes = readCounter(dir, "memory.peak", leaf.path);
    s.pidsCurrent = readCounter(dir, "pids.current", leaf.path);
    s.oomKills = readKeyed(dir, "memory.events", "oom_kill", leaf.path);
    return s;
  }
  const Leaf& cpuacct = *findLeaf(&CgroupHierarchy::cpuacct);
  s.cpuUserNs = readCounter(cpuacct.dir, "cpuacct.usage_user", cpuacct.path);
  s.cpuSystemNs = readCounter(cpuacct.dir, "cpuacct.usage_sys", cpuacct.path);
  const Leaf& memory = *findLeaf(&CgroupHierarchy::memory);
  s.memoryCurrentBytes = readCounter(memory.dir, "memory.usage_in_bytes", memory.path);
  s.memoryPeakBytes = readCounter(memory.dir, "memory.max_usage_in_bytes", memory.path);
  s.oomKills = readKeyed(memory.dir, "memory.oom_control", "oom_kill", memory.path);
  const Leaf& pids = *findLeaf(&CgroupHierarchy::pids);
  s.pidsCurrent = readCounter(pids.dir, "pids.current", pids.path);
  return s;
}

uint64_t SandboxCgroup::oomKills() const {
  KJ_REQUIRE(!removed_, "sandbox cgroup was already removed", sandboxId_.c_str());
  if (tree_.mode() == CgroupMode::kV2) {
    const Leaf& leaf = leaves_.front();
    return readKeyed(leaf.dir, "memory.events", "oom_kill", leaf.path);
  }
  const Leaf& memory = *findLeaf(&CgroupHierarchy::memory);
  return readKeyed(memory.dir, "memory.oom_control", "oom_kill", memory.path);
}

const SandboxCgroup::Leaf* SandboxCgroup::v1Freezer() const {
  if (tree_.mode() == CgroupMode::kV2) return nullptr;
  const Leaf* freezer = findLeaf(&CgroupHierarchy::freezer);
  KJ_REQUIRE(freezer != nullptr && !freezer->hierarchy.v2, "no v1 freezer on this host");
  return freezer;
}

void SandboxCgroup::freeze() {
  KJ_REQUIRE(!removed_, "sandbox cgroup was already removed", sandboxId_.c_str());
  // On hybrid hosts the v1 freezer, not the unified leaf's cgroup.freeze: killAll()
  // freezes and thaws through v1, and one freezer must not be left holding tasks the
  // other released.
  if (const Leaf* freezer = v1Freezer()) {
    writeFileAt(freezer->dir, "freezer.state", "FROZEN", freezer->path);
  } else {
    writeFileAt(leaves_.front().dir, "cgroup.freeze", "1", leaves_.front().path);
  }
}

void SandboxCgroup::thaw() {
  KJ_REQUIRE(!removed_, "sandbox cgroup was already removed", sandboxId_.c_str());
  if (const Leaf* freezer = v1Freezer()) {
    writeFileAt(freezer->dir, "freezer.state", "THAWED", freezer->path);
  } else {
    writeFileAt(leaves_.front().dir, "cgroup.freeze", "0", leaves_.front().path);
  }
}

bool SandboxCgroup::frozen() const {
  KJ_REQUIRE(!removed_, "sandbox cgroup was already removed", sandboxId_.c_str());
  if (const Leaf* freezer = v1Freezer()) {
    // FREEZING while some task has not stopped yet.
    return readFileAt(freezer->dir, "freezer.state", freezer->path) == "FROZEN\n";
  }
  const Leaf& leaf = leaves_.front();
  return readKeyed(leaf.dir, "cgroup.events", "frozen", leaf.path) != 0;
}

void SandboxCgroup::remove(std::chrono::milliseconds timeout) {
  KJ_REQUIRE(!removed_, "sandbox cgroup was already removed", sandboxId_.c_str());
  auto deadline = Clock::now() + timeout;
  // v1 leaves first, the v2 leaf (which BPF may reference) last.
  for (auto it = leaves_.rbegin(); it != leaves_.rend(); ++it) {
    for (;;) {
      if (rmdir(it->path.c_str()) == 0 || errno == ENOENT) break;
      int err = errno;
      if (err != EBUSY || Clock::now() >= deadline) {
        failSyscall(err == EBUSY ? "rmdir (processes remain)" : "rmdir", err, it->path);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    it->dir = nullptr;
  }
  removed_ = true;
  if (tree_.keepsEmptyTenants()) return;
  for (const CgroupHierarchy& h : tree_.hierarchies()) {
    // Fails while other sandboxes of the tenant exist, which is fine.
    rmdir(tree_.tenantPath(h, tenant_).c_str());
  }
}

}  // namespace nodeagent::isolator
