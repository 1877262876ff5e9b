#include "isolator/init/proc_masks.h"

#include <errno.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "isolator/file_util.h"

namespace nodeagent::isolator::init {
namespace {

// runc's masked paths below /proc, and /proc/interrupts as Docker's default masks it
// now (per-CPU interrupt counts of the host's devices).
constexpr const char* kMasked[] = {
    "acpi",          "asound",     "interrupts",  "kcore",       "keys",
    "latency_stats", "timer_list", "timer_stats", "sched_debug", "scsi",
};

constexpr const char* kReadOnly[] = {"bus", "fs", "irq", "sys", "sysrq-trigger"};

constexpr unsigned long kLocked = MS_NOSUID | MS_NODEV | MS_NOEXEC;

// The mount flags a remount must repeat: dropping one would be refused (or would clear it).
unsigned long currentFlags(const std::string& path) {
  struct statvfs st;
  checkSyscall(statvfs(path.c_str(), &st), "statvfs", path);
  unsigned long flags = 0;
  if (st.f_flag & ST_NOSUID) flags |= MS_NOSUID;
  if (st.f_flag & ST_NODEV) flags |= MS_NODEV;
  if (st.f_flag & ST_NOEXEC) flags |= MS_NOEXEC;
  if (st.f_flag & ST_NOATIME) flags |= MS_NOATIME;
  if (st.f_flag & ST_NODIRATIME) flags |= MS_NODIRATIME;
  if (st.f_flag & ST_RELATIME) flags |= MS_RELATIME;
  return flags;
}

void mountOrThrow(const char* source, const std::string& target, const char* type,
                  unsigned long flags, const char* data, const char* what) {
  checkSyscall(mount(source, target.c_str(), type, flags, data), what, target);
}

}  // namespace

void maskProc(const std::string& proc) {
  for (const char* name : kMasked) {
    std::string path = proc + "/" + name;
    struct stat st;
    if (lstat(path.c_str(), &st) != 0) {
      if (errno == ENOENT) continue;
      failSyscall("lstat", errno, path);
    }
    if (S_ISDIR(st.st_mode)) {
      mountOrThrow("tmpfs", path, "tmpfs", MS_RDONLY | kLocked, "size=4k,nr_inodes=1,mode=0555",
                   "mount empty tmpfs over");
    } else {
      mountOrThrow("/dev/null", path, nullptr, MS_BIND, nullptr, "bind /dev/null over");
    }
  }
  for (const char* name : kReadOnly) {
    std::string path = proc + "/" + name;
    if (access(path.c_str(), F_OK) != 0) {
      if (errno == ENOENT) continue;
      failSyscall("access", errno, path);
    }
    // A read-only bind needs two steps: bind the path onto itself, then remount that
    // bind read-only (a plain MS_BIND ignores MS_RDONLY).
    mountOrThrow(path.c_str(), path, nullptr, MS_BIND | MS_REC, nullptr, "bind");
    mountOrThrow(nullptr, path, nullptr,
                 MS_BIND | MS_REMOUNT | MS_RDONLY | currentFlags(path) | kLocked, nullptr,
                 "remount read-only");
  }
}

}  // namespace nodeagent::isolator::init
