#include "isolator/init/capabilities.h"

#include <errno.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>

namespace nodeagent::isolator::init {
namespace {

constexpr uint64_t bit(int cap) {
  return uint64_t(1) << cap;
}

// Docker's default set without CAP_NET_RAW: raw and packet sockets are a recurring source
// of kernel bugs reachable from containers (CVE-2020-14386), and nothing here needs them.
constexpr uint64_t kKept = bit(CAP_CHOWN) | bit(CAP_DAC_OVERRIDE) | bit(CAP_FSETID) |
                           bit(CAP_FOWNER) | bit(CAP_MKNOD) | bit(CAP_SETGID) | bit(CAP_SETUID) |
                           bit(CAP_SETFCAP) | bit(CAP_SETPCAP) | bit(CAP_NET_BIND_SERVICE) |
                           bit(CAP_SYS_CHROOT) | bit(CAP_KILL) | bit(CAP_AUDIT_WRITE);

}  // namespace

bool dropCapabilities() {
  for (int cap = 0; cap < 64; ++cap) {
    if (kKept & bit(cap)) continue;
    // EINVAL: beyond the kernel's last capability.
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) return false;
  }
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) return false;
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2];
  for (int i = 0; i < 2; ++i) {
    uint32_t word = uint32_t(kKept >> (32 * i));
    data[i].effective = word;
    data[i].permitted = word;
    // Empty, as Docker since CVE-2022-24769: root regains the bounding set on exec anyway.
    data[i].inheritable = 0;
  }
  return syscall(SYS_capset, &header, data) == 0;
}

}  // namespace nodeagent::isolator::init
