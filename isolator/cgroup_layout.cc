// Runtime detection of the host's cgroup layout (pure v2 or hybrid).
#include <linux/magic.h>
#include <sys/statfs.h>

#include <kj/debug.h>

#include "isolator/cgroup.h"
#include "isolator/mountinfo.h"

namespace nodeagent::isolator {
namespace {

constexpr const char kCgroupMount[] = "/sys/fs/cgroup";

bool isCgroup2(const char* path) {
  struct statfs fs;
  return statfs(path, &fs) == 0 && fs.f_type == CGROUP2_SUPER_MAGIC;
}

}  // namespace

CgroupMode detectCgroupMode() {
  if (isCgroup2(kCgroupMount)) return CgroupMode::kV2;
  if (isCgroup2("/sys/fs/cgroup/unified")) return CgroupMode::kHybrid;
  KJ_FAIL_REQUIRE(
      "unsupported cgroup layout: /sys/fs/cgroup is neither cgroup2 nor hybrid with a cgroup2 "
      "mount at /sys/fs/cgroup/unified");
}

CgroupLayout detectCgroupLayout() {
  CgroupLayout layout;
  layout.mode = detectCgroupMode();
  if (layout.mode == CgroupMode::kV2) {
    layout.v2 = kCgroupMount;
    return layout;
  }
  layout.v2 = "/sys/fs/cgroup/unified";

  for (const MountEntry& mount : readMountInfo()) {
    // Only whole hierarchies: a bind of a sub-cgroup is not the hierarchy's root.
    if (mount.fsType != "cgroup" || mount.root != "/") continue;
    auto take = [&](const char* controller, std::string& slot) {
      if (slot.empty() && hasMountOption(mount.superOptions, controller)) slot = mount.mountPoint;
    };
    take("memory", layout.memory);
    take("pids", layout.pids);
    take("cpu", layout.cpu);
    take("cpuacct", layout.cpuacct);
    take("freezer", layout.freezer);
  }
  KJ_REQUIRE(!layout.memory.empty() && !layout.pids.empty() && !layout.cpu.empty() &&
                 !layout.cpuacct.empty() && !layout.freezer.empty(),
             "hybrid cgroups: the memory, pids, cpu, cpuacct and freezer v1 controllers must all "
             "be mounted",
             layout.memory.c_str(), layout.pids.c_str(), layout.cpu.c_str(), layout.cpuacct.c_str(),
             layout.freezer.c_str());
  return layout;
}

}  // namespace nodeagent::isolator
