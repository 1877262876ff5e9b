#include "isolator/init/setup_mounts.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <kj/debug.h>
#include <kj/io.h>

#include <cstring>

#include "isolator/file_util.h"
#include "isolator/init/proc_masks.h"
#include "isolator/sandbox_netns.h"

namespace nodeagent::isolator::init {
namespace {

// /dev/shm is a separate tmpfs; its pages are charged to the sandbox's memory cgroup.
constexpr uint64_t kShmBytes = 64ull << 20;
// One inode per 8 KiB of disk bounds the kernel memory a sandbox can pin with empty files.
constexpr uint64_t kBytesPerInode = 8192;

void doMount(const char* source, const std::string& target, const char* type, unsigned long flags,
             const std::string& data) {
  if (mount(source, target.c_str(), type, flags, data.empty() ? nullptr : data.c_str()) != 0) {
    std::string what = std::string(type != nullptr     ? type
                                   : source != nullptr ? source
                                                       : "") +
                       " on " + target;
    if (!data.empty()) what += " (" + data + ")";
    failSyscall(type == nullptr && source != nullptr ? "bind mount" : "mount", errno, what);
  }
}

void makeDir(const std::string& path, mode_t mode) {
  if (mkdir(path.c_str(), mode) != 0 && errno != EEXIST) {
    failSyscall("mkdir", errno, path);
  }
  checkSyscall(chmod(path.c_str(), mode), "chmod", path);
}

void writeFile(const std::string& path, const std::string& content, int flags, mode_t mode) {
  int fd =
      checkSyscall(open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | flags, mode), "open", path);
  kj::AutoCloseFd owned(fd);
  const char* data = content.data();
  size_t size = content.size();
  while (size > 0) {
    ssize_t n = checkSyscall(write(fd, data, size), "write", path);
    data += n;
    size -= size_t(n);
  }
}

// Overlay options are comma-separated and use ':' between lower layers.
void requireOverlaySafe(const std::string& path) {
  KJ_REQUIRE(!path.empty() && path[0] == '/' && path.find_first_of(",:\\") == std::string::npos,
             "path cannot be used in overlay options", path.c_str());
}

// A seed path: relative, and no component may be "." or ".." (the agent's own
// list; checked so that a bad one fails setup rather than writing elsewhere).
void requireSeedPath(const std::string& path) {
  bool ok = !path.empty() && path[0] != '/' && path.back() != '/';
  size_t start = 0;
  while (ok && start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    std::string part = path.substr(start, end - start);
    ok = !part.empty() && part != "." && part != "..";
    start = end + 1;
  }
  KJ_REQUIRE(ok, "bad seed path", path);
}

// Recreates the skeleton's seed in the upper layer (skeleton_seed.h). The layer
// is a fresh tmpfs nothing else can reach yet; O_NOFOLLOW and O_EXCL all the same.
void plantSeed(const std::string& upper, const std::vector<SeedEntry>& seed) {
  kj::AutoCloseFd dir = openDirectory(upper);
  mode_t previous = umask(0);  // the seed's modes, exactly
  KJ_DEFER(umask(previous));
  for (const SeedEntry& entry : seed) {
    requireSeedPath(entry.path);
    const char* path = entry.path.c_str();
    if (entry.directory) {
      checkSyscall(mkdirat(dir, path, entry.mode & 07777), "mkdir", entry.path);
      continue;
    }
    int fd = checkSyscall(
        openat(dir, path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, entry.mode & 07777),
        "create", entry.path);
    kj::AutoCloseFd file(fd);
    const char* data = entry.content.data();
    size_t size = entry.content.size();
    while (size > 0) {
      ssize_t n = checkSyscall(write(fd, data, size), "write", entry.path);
      data += n;
      size -= size_t(n);
    }
  }
}

void bindDevice(const std::string& dev, const char* name) {
  std::string target = dev + "/" + name;
  writeFile(target, "", O_EXCL, 0666);
  doMount((std::string("/dev/") + name).c_str(), target, nullptr, MS_BIND, "");
}

void setupDev(const std::string& dev) {
  doMount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,nr_inodes=64,mode=0755");
  for (const char* name : {"null", "zero", "full", "random", "urandom", "tty"}) {
    bindDevice(dev, name);
  }
  makeDir(dev + "/pts", 0755);
  // gid 5 is "tty" in the skeleton's /etc/group; it is only mapped with a large enough range.
  std::string pts = dev + "/pts";
  if (mount("devpts", pts.c_str(), "devpts", MS_NOSUID | MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620,gid=5") != 0) {
    doMount("devpts", pts, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620");
  }
  checkSyscall(symlink("pts/ptmx", (dev + "/ptmx").c_str()), "symlink", dev + "/ptmx");
  makeDir(dev + "/shm", 01777);
  doMount("tmpfs", dev + "/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
          "size=" + std::to_string(kShmBytes) + ",mode=1777");
  for (auto [name, target] : {std::pair{"fd", "/proc/self/fd"},
                              {"stdin", "/proc/self/fd/0"},
                              {"stdout", "/proc/self/fd/1"},
                              {"stderr", "/proc/self/fd/2"}}) {
    std::string path = dev + "/" + name;
    checkSyscall(symlink(target, path.c_str()), "symlink", path);
  }
}

void pivotInto(const std::string& root) {
  // pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves
  // only the new root, with no ".oldroot" directory to create and remove.
  checkSyscall(chdir(root.c_str()), "chdir", root);
  checkSyscall(syscall(SYS_pivot_root, ".", "."), "pivot_root", root);
  checkSyscall(umount2(".", MNT_DETACH), "umount", "the old root");
  checkSyscall(chdir("/"), "chdir", "/");
}

}  // namespace

void setupSandbox(const SetupConfig& config) {
  KJ_REQUIRE(config.diskBytes > 0, "diskBytes must be positive");
  requireOverlaySafe(config.skeletonDir);
  requireOverlaySafe(config.usrDir);
  requireOverlaySafe(config.workDir);

  openDirectory(config.skeletonDir);  // a missing one named as such, not by a file below it
  // A namespace made ahead by the agent is set up already, and not ours to change;
  // one of our own is set up the same way, while the host's /proc/sys is writable.
  if (!loopbackIsUp()) prepareSandboxNetns();
  // Nothing mounted from here on may propagate back to the host.
  doMount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, "");

  const std::string& work = config.workDir;
  uint64_t inodes = std::max<uint64_t>(4096, config.diskBytes / kBytesPerInode);
  doMount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV,
          "size=" + std::to_string(config.diskBytes) + ",nr_inodes=" + std::to_string(inodes) +
              ",mode=0755");
  for (const char* name : {"upper", "work", "usr-upper", "usr-work", "root"}) {
    makeDir(work + "/" + name, 0755);
  }
  plantSeed(work + "/upper", config.seed);
  writeFile(work + "/upper/etc/hostname", config.hostname + "\n", O_TRUNC, 0644);
  writeFile(work + "/upper/etc/hosts", "127.0.1.1\t" + config.hostname + "\n", O_APPEND, 0644);

  std::string root = work + "/root";
  doMount(
      "overlay", root, "overlay", MS_NOSUID | MS_NODEV,
      "lowerdir=" + config.skeletonDir + ",upperdir=" + work + "/upper,workdir=" + work + "/work");
  // The host's /usr is a read-only lower layer; writes land in the sandbox's tmpfs.
  doMount("overlay", root + "/usr", "overlay", MS_NOSUID | MS_NODEV,
          "lowerdir=" + config.usrDir + ",upperdir=" + work + "/usr-upper,workdir=" + work +
              "/usr-work");
  doMount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "");
  maskProc(root + "/proc");
  setupDev(root + "/dev");
  pivotInto(root);

  KJ_SYSCALL(sethostname(config.hostname.data(), config.hostname.size()));
  KJ_SYSCALL(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
  // Sandbox processes run as the namespace's root: without this they could ptrace init
  // (and take its control socket). Exec'd children are dumpable again.
  KJ_SYSCALL(prctl(PR_SET_DUMPABLE, 0, 0, 0, 0));
}

}  // namespace nodeagent::isolator::init
