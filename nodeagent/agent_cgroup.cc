#include "nodeagent/agent_cgroup.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include <kj/debug.h>

#include "isolator/cgroup_dynmods.h"
#include "util/log.h"

namespace nodeagent {
namespace {

void writeFile(const std::string& path, const std::string& value) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) KJ_FAIL_SYSCALL("open", errno, path.c_str());
  kj::AutoCloseFd file(fd);
  if (write(file, value.data(), value.size()) < 0) {
    KJ_FAIL_SYSCALL("write", errno, path.c_str(), value.c_str());
  }
}

// v2 only lets a child use the controllers its parent enables for children.
void enableControllers(const std::string& dir, const char* controllers) {
  int fd = open((dir + "/cgroup.subtree_control").c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return;
  kj::AutoCloseFd file(fd);
  // Best effort: a controller the host does not offer is simply not used.
  for (const char* c = controllers; *c != '\0';) {
    const char* end = c;
    while (*end != '\0' && *end != ' ') ++end;
    std::string one(c, end);
    (void)!write(file, one.data(), one.size());
    c = *end == ' ' ? end + 1 : end;
  }
}

}  // namespace

void enterAgentCgroup(isolator::CgroupTree& tree, const AgentReservation& reservation) {
  std::string pid = std::to_string(getpid());
  bool pureV2 = tree.mode() == isolator::CgroupMode::kV2;
  for (const isolator::CgroupHierarchy& h : tree.hierarchies()) {
    if (!h.v2 && !h.cpu && !h.memory) continue;
    std::string root = h.mount + "/" + tree.rootName();
    std::string dir = root + "/agent";
    if (mkdir(root.c_str(), 0755) < 0 && errno != EEXIST) KJ_FAIL_SYSCALL("mkdir", errno, root);
    if (pureV2) enableControllers(root, "+cpu +memory");
    if (mkdir(dir.c_str(), 0755) < 0 && errno != EEXIST) KJ_FAIL_SYSCALL("mkdir", errno, dir);
    if (h.v2 && pureV2) {
      writeFile(dir + "/cpu.weight", std::to_string(reservation.cpuWeight));
      writeFile(dir + "/memory.min", std::to_string(reservation.memoryMinBytes));
    } else if (h.cpu) {
      writeFile(dir + "/cpu.shares", std::to_string(uint64_t(reservation.cpuWeight) * 1024 / 100));
    }
    // cgroup.procs moves every thread of the process (v1 and v2).
    writeFile(dir + "/cgroup.procs", pid);
  }
}

void favorCgroupMigrations(const isolator::CgroupTree& tree) {
  const std::string& mount = tree.layout().v2;
  isolator::DynmodsResult result;
  KJ_IF_MAYBE (e, kj::runCatchingExceptions(
                      [&]() { result = isolator::favorDynamicModifications(mount); })) {
    result = {isolator::DynmodsOutcome::kNotApplied, "", e->getDescription().cStr()};
  }
  switch (result.outcome) {
    case isolator::DynmodsOutcome::kAlreadyOn:
      break;
    case isolator::DynmodsOutcome::kTurnedOn:
      log::info("cgroup.favordynmods",
                {{"mount", mount.c_str()}, {"options", result.superOptions.c_str()}});
      break;
    case isolator::DynmodsOutcome::kNotApplied:
      log::warn("cgroup.favordynmods_not_applied",
                {{"mount", mount.c_str()}, {"why", result.why.c_str()}});
      break;
  }
}

}  // namespace nodeagent
