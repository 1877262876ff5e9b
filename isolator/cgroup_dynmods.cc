#include "isolator/cgroup_dynmods.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mount.h>

#include <kj/debug.h>
#include <kj/io.h>

#include <vector>

#include "isolator/mountinfo.h"

namespace nodeagent::isolator {
namespace {

DynmodsResult notApplied(const std::string& mountPoint, std::string why) {
  return {DynmodsOutcome::kNotApplied, cgroup2SuperOptions(mountPoint), std::move(why)};
}

// Sets one option on a reconfigure context; false with errno set if refused.
bool setOption(int fs, const std::string& option) {
  size_t eq = option.find('=');
  if (eq == std::string::npos)
    return fsconfig(fs, FSCONFIG_SET_FLAG, option.c_str(), nullptr, 0) == 0;
  std::string key = option.substr(0, eq), value = option.substr(eq + 1);
  return fsconfig(fs, FSCONFIG_SET_STRING, key.c_str(), value.c_str(), 0) == 0;
}

}  // namespace

std::string cgroup2SuperOptions(const std::string& mountPoint) {
  std::string options;
  bool found = false;
  for (const MountEntry& mount : readMountInfo()) {
    if (mount.mountPoint != mountPoint) continue;
    found = mount.fsType == "cgroup2";  // the last entry for a path is the visible one
    options = mount.superOptions;
  }
  KJ_REQUIRE(found, "not a cgroup2 mount", mountPoint);
  return options;
}

DynmodsResult favorDynamicModifications(const std::string& mountPoint) {
  std::string before = cgroup2SuperOptions(mountPoint);
  if (hasMountOption(before, "favordynmods")) return {DynmodsOutcome::kAlreadyOn, before, ""};

  int fd = fspick(AT_FDCWD, mountPoint.c_str(), FSPICK_CLOEXEC | FSPICK_NO_AUTOMOUNT);
  if (fd < 0) return notApplied(mountPoint, std::string("fspick: ") + strerror(errno));
  kj::AutoCloseFd fs(fd);
  // A reconfigure applies exactly the options it is given: repeat the current
  // ones. If any is refused nothing is applied, so nothing is lost either.
  std::vector<std::string> options = splitMountOptions(before);
  options.push_back("favordynmods");
  for (const std::string& option : options) {
    // rw/ro belong to the superblock's flags, which a reconfigure leaves alone
    // unless told; the rest are the cgroup2 options proper.
    if (option == "rw" || option == "ro") continue;
    if (!setOption(fs, option)) {
      return notApplied(mountPoint, "fsconfig " + option + ": " + strerror(errno));
    }
  }
  if (fsconfig(fs, FSCONFIG_CMD_RECONFIGURE, nullptr, nullptr, 0) != 0) {
    return notApplied(mountPoint, std::string("reconfigure: ") + strerror(errno));
  }
  std::string after = cgroup2SuperOptions(mountPoint);
  // Outside the initial cgroup namespace the kernel accepts and ignores it.
  if (!hasMountOption(after, "favordynmods")) {
    return notApplied(mountPoint, "the kernel left the options as they were (" + after + ")");
  }
  return {DynmodsOutcome::kTurnedOn, after, ""};
}

}  // namespace nodeagent::isolator
