// The cgroup2 "favordynmods" mount option: the kernel guards every cgroup
// migration with one global percpu rwsem whose writers, by default, wait for an
// RCU grace period. On an idle host that is 10-20 ms per write to cgroup.procs
// (a launch, a warm claim), more than everything else a create does. With the
// option set the rwsem stays in its writer-friendly mode: migrations cost
// microseconds, and forks and exits pay an extra barrier each. The option is
// per superblock but the rwsem is global, so the one cgroup2 mount covers the
// v1 hierarchies of a hybrid host too.
#pragma once

#include <string>

namespace nodeagent::isolator {

enum class DynmodsOutcome {
  kAlreadyOn,  // the mount had it
  kTurnedOn,   // we set it
  kNotApplied  // the kernel did not take it (too old, or not the initial cgroup namespace)
};

struct DynmodsResult {
  DynmodsOutcome outcome = DynmodsOutcome::kNotApplied;
  std::string superOptions;  // the mount's options afterwards
  std::string why;           // for kNotApplied
};

// Sets favordynmods on the cgroup2 mount at `mountPoint`, keeping every other
// option it has (a reconfigure replaces the whole set, so nsdelegate or
// memory_recursiveprot would otherwise be dropped). Never turns anything off.
DynmodsResult favorDynamicModifications(const std::string& mountPoint);

// The cgroup2 superblock options of `mountPoint` from /proc/self/mountinfo
// ("rw,nsdelegate,favordynmods"); throws if it is not a cgroup2 mount.
std::string cgroup2SuperOptions(const std::string& mountPoint);

}  // namespace nodeagent::isolator
