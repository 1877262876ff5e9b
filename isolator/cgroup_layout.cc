// Runtime detection of the host's cgroup layout (pure v2 or hybrid).
#include <linux/magic.h>
#include <sys/statfs.h>

#include <kj/debug.h>

#include <fstream>
#include <sstream>

#include "isolator/cgroup.h"

namespace nodeagent::isolator {
namespace {

constexpr const char kCgroupMount[] = "/sys/fs/cgroup";

bool isCgroup2(const char* path) {
  struct statfs fs;
  return statfs(path, &fs) == 0 && fs.f_type == CGROUP2_SUPER_MAGIC;
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescapeMountField(const std::string& field) {
  std::string out;
  for (size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size()) {
      int value = 0;
      bool octal = true;
      for (size_t j = 1; j <= 3; ++j) {
        char c = field[i + j];
        if (c < '0' || c > '7') octal = false;
        value = value * 8 + (c - '0');
      }
      if (octal) {
        out.push_back(char(value));
        i += 3;
        continue;
      }
    }
    out.push_back(field[i]);
  }
  return out;
}

bool hasOption(const std::string& options, const char* name) {
  std::stringstream in(options);
  std::string option;
  while (std::getline(in, option, ',')) {
    if (option == name) return true;
  }
  return false;
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

  // Fields: id parent major:minor root mountpoint options [optional...] - fstype source super.
  std::ifstream in("/proc/self/mountinfo");
  KJ_REQUIRE(in.good(), "cannot read /proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, device, root, mountPoint, options, field;
    fields >> id >> parent >> device >> root >> mountPoint >> options;
    while (fields >> field && field != "-") {
    }
    std::string fsType, source, superOptions;
    fields >> fsType >> source >> superOptions;
    // Only whole hierarchies: a bind of a sub-cgroup is not the hierarchy's root.
    if (fsType != "cgroup" || root != "/") continue;
    std::string path = unescapeMountField(mountPoint);
    auto take = [&](const char* controller, std::string& slot) {
      if (slot.empty() && hasOption(superOptions, controller)) slot = path;
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
