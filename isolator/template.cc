#include "isolator/template.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <kj/debug.h>
#include <kj/io.h>

#include <algorithm>
#include <fstream>
#include <iterator>

#include "isolator/file_util.h"

namespace nodeagent::isolator {
namespace {

constexpr const char kPasswd[] =
    "root:x:0:0:root:/root:/bin/bash\n"
    "user:x:1000:1000:user:/home/user:/bin/bash\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";

constexpr const char kGroup[] =
    "root:x:0:\n"
    "tty:x:5:\n"
    "users:x:100:user\n"
    "user:x:1000:\n"
    "nogroup:x:65534:\n";

// The sandbox's own name is appended by init at setup time.
constexpr const char kHosts[] =
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n";

// A placeholder: with networking "off" nothing answers; the agent's DNS forwarder will.

constexpr const char kNsswitch[] =
    "passwd:         files\n"
    "group:          files\n"
    "shadow:         files\n"
    "hosts:          files dns\n"
    "networks:       files\n"
    "protocols:      files\n"
    "services:       files\n"
    "ethers:         files\n"
    "rpc:            files\n";

constexpr const char kHostCaBundle[] = "/etc/ssl/certs/ca-certificates.crt";

// The dynamic loader's index of the host's libraries. Without it every exec of a
// dynamic program in a sandbox probes a dozen directories for each library before
// it finds libc (about 0.1 ms here). It describes the host's /usr, so only a
// skeleton over that /usr gets it.
constexpr const char kHostLoaderCache[] = "/etc/ld.so.cache";
constexpr const char kLoaderCachePath[] = "etc/ld.so.cache";

// Files that stay in the lower layer although they are small: the sandbox only
// reads them, and a copy per sandbox would cost its size in every sandbox's tmpfs.
bool lowerLayerOnly(const std::string& path) {
  return path == kLoaderCachePath;
}

void makeDir(const std::string& path, mode_t mode) {
  checkSyscall(mkdir(path.c_str(), mode), "mkdir", path);
  // Not subject to the umask: the sandbox sees exactly these modes.
  checkSyscall(chmod(path.c_str(), mode), "chmod", path);
}

void makeSymlink(const std::string& target, const std::string& path) {
  checkSyscall(symlink(target.c_str(), path.c_str()), "symlink", path);
}

void writeNewFile(const std::string& path, const char* data, size_t size, mode_t mode) {
  int fd =
      checkSyscall(open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode), "open", path);
  kj::AutoCloseFd owned(fd);
  checkSyscall(fchmod(fd, mode), "chmod", path);
  while (size > 0) {
    ssize_t n = checkSyscall(write(fd, data, size), "write", path);
    data += n;
    size -= size_t(n);
  }
}

void writeNewFile(const std::string& path, const std::string& content, mode_t mode = 0644) {
  writeNewFile(path, content.data(), content.size(), mode);
}

// A whole file's bytes, or null if it does not exist.
kj::Maybe<std::string> readWholeFile(const char* path) {
  int in = open(path, O_RDONLY | O_CLOEXEC);
  if (in < 0) {
    if (errno == ENOENT) return nullptr;
    failSyscall("open", errno, path);
  }
  kj::AutoCloseFd owned(in);
  std::string content;
  char buf[65536];
  for (;;) {
    ssize_t n = checkSyscall(read(in, buf, sizeof(buf)), "read", path);
    if (n == 0) break;
    content.append(buf, size_t(n));
  }
  return kj::mv(content);
}

// Copies a regular file's bytes (not its owner or mode); a missing source (a host
// without CA certificates, say) copies nothing.
void copyFile(const char* from, const std::string& to) {
  KJ_IF_MAYBE (content, readWholeFile(from)) {
    writeNewFile(to, *content, 0644);
  }
}

bool isDirectory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Debian's /etc/alternatives is part of how /usr works (/usr/bin/awk -> /etc/alternatives/awk
// -> /usr/bin/mawk). Only its symlinks that point back into the OS image are copied.
void copyAlternatives(const std::string& to) {
  makeDir(to, 0755);
  DIR* dir = opendir("/etc/alternatives");
  if (dir == nullptr) return;
  KJ_DEFER(closedir(dir));
  while (struct dirent* entry = readdir(dir)) {
    if (entry->d_type != DT_LNK) continue;
    std::string link = std::string("/etc/alternatives/") + entry->d_name;
    char target[4096];
    ssize_t n = readlink(link.c_str(), target, sizeof(target) - 1);
    if (n <= 0) continue;
    std::string t(target, size_t(n));
    bool intoImage = t.rfind("/usr/", 0) == 0 || t.rfind("/bin/", 0) == 0 ||
                     t.rfind("/sbin/", 0) == 0 || t.rfind("/lib", 0) == 0;
    if (!intoImage || t.find("/../") != std::string::npos) continue;
    makeSymlink(t, to + "/" + entry->d_name);
  }
}

void buildSkeleton(const std::string& root, const std::string& usrDir,
                   const std::string& resolvConf) {
  makeDir(root, 0755);
  makeSymlink("usr/bin", root + "/bin");
  makeSymlink("usr/sbin", root + "/sbin");
  makeSymlink("usr/lib", root + "/lib");
  makeSymlink("usr/lib64", root + "/lib64");
  for (const char* optional : {"lib32", "libx32"}) {
    if (isDirectory(usrDir + "/" + optional)) {
      makeSymlink(std::string("usr/") + optional, root + "/" + optional);
    }
  }
  // /root is 0755 here: the overlay reads lower directories with init's credentials.
  // init makes the sandbox's /root 0700 in the upper layer.
  for (const char* name : {"usr", "proc", "dev", "sys", "root", "home", "run", "var", "mnt", "opt",
                           "srv", "etc", "etc/ssl", "etc/ssl/certs"}) {
    makeDir(root + "/" + name, 0755);
  }
  makeDir(root + "/tmp", 01777);
  makeDir(root + "/var/tmp", 01777);

  std::string etc = root + "/etc";
  writeNewFile(etc + "/passwd", kPasswd);
  writeNewFile(etc + "/group", kGroup);
  writeNewFile(etc + "/hosts", kHosts);
  writeNewFile(etc + "/resolv.conf", resolvConf);
  writeNewFile(etc + "/nsswitch.conf", kNsswitch);
  makeSymlink("../proc/self/mounts", etc + "/mtab");
  makeSymlink("../usr/lib/os-release", etc + "/os-release");
  copyFile(kHostCaBundle, etc + "/ssl/certs/ca-certificates.crt");
  copyAlternatives(etc + "/alternatives");
  if (usrDir == "/usr") copyFile(kHostLoaderCache, root + "/" + kLoaderCachePath);
}

}  // namespace

// Swaps in new content by rename, if it changed: sandboxes see the old or the new file.
static void replaceFile(const std::string& path, const std::string& content) {
  std::ifstream in(path);
  std::string current((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.is_open() && current == content) return;
  std::string tmp = path + ".new";
  unlink(tmp.c_str());
  writeNewFile(tmp, content);
  if (rename(tmp.c_str(), path.c_str()) != 0) failSyscall("rename", errno, tmp + " to " + path);
}

// What follows the host on every start: the node's resolver, and the loader's cache,
// which a package upgrade rewrites. A stale cache is only slower: the loader falls
// back to its search when a listed file is gone.
static void refreshSkeleton(const std::string& dir, const std::string& usrDir,
                            const std::string& resolvConf) {
  replaceFile(dir + "/etc/resolv.conf", resolvConf);
  if (usrDir != "/usr") return;
  KJ_IF_MAYBE (cache, readWholeFile(kHostLoaderCache)) {
    replaceFile(dir + "/" + kLoaderCachePath, *cache);
  }
}

void prepareSkeleton(const std::string& dir, const std::string& usrDir,
                     const std::string& resolvConf) {
  KJ_REQUIRE(!dir.empty() && dir[0] == '/' && dir.back() != '/',
             "skeleton dir must be an absolute path", dir.c_str());
  struct stat st;
  if (lstat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) failSyscall("prepare skeleton", ENOTDIR, dir);
    refreshSkeleton(dir, usrDir, resolvConf);
    return;
  }
  makeDirectories(dir.substr(0, dir.rfind('/')), 0755);
  std::string tmp = dir + ".tmp";
  removeTree(tmp);  // left over by a crash mid-build
  {
    KJ_ON_SCOPE_FAILURE({
      try {
        removeTree(tmp);
      } catch (const kj::Exception&) {
      }
    });
    buildSkeleton(tmp, usrDir, resolvConf);
  }
  if (rename(tmp.c_str(), dir.c_str()) != 0) {
    int err = errno;
    removeTree(tmp);
    // Someone else finished first; theirs is just as good.
    if (err == EEXIST || err == ENOTEMPTY) return;
    failSyscall("rename", err, tmp + " to " + dir);
  }
}

namespace {

void readSeedBelow(int dirFd, const std::string& prefix, std::vector<SeedEntry>& out) {
  int dupFd = checkSyscall(fcntl(dirFd, F_DUPFD_CLOEXEC, 0), "dup", prefix);
  DIR* dir = fdopendir(dupFd);
  if (dir == nullptr) {
    int err = errno;
    close(dupFd);
    failSyscall("fdopendir", err, prefix);
  }
  KJ_DEFER(closedir(dir));
  std::vector<std::string> names;
  while (struct dirent* entry = readdir(dir)) {
    // Symlinks stay in the lower layer; skipping them unseen keeps this quick
    // (etc/alternatives holds hundreds).
    if (entry->d_type == DT_LNK) continue;
    std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  std::sort(names.begin(), names.end());  // the same seed whatever the directory order
  for (const std::string& name : names) {
    std::string path = prefix.empty() ? name : prefix + "/" + name;
    if (lowerLayerOnly(path)) continue;
    struct stat st;
    checkSyscall(fstatat(dirFd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW), "stat", path);
    SeedEntry entry;
    entry.path = path;
    entry.mode = st.st_mode & 07777;
    // What others may not read stays in the lower layer, where the sandbox
    // (others, to host root's files) cannot read it either.
    mode_t needed = S_ISDIR(st.st_mode) ? (S_IROTH | S_IXOTH) : S_IROTH;
    if ((st.st_mode & needed) != needed) continue;
    if (S_ISDIR(st.st_mode)) {
      if (path == "root") entry.mode = 0700;
      entry.directory = true;
      out.push_back(entry);
      int child =
          checkSyscall(openat(dirFd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC),
                       "open", path);
      kj::AutoCloseFd owned(child);
      readSeedBelow(child, path, out);
    } else if (S_ISREG(st.st_mode) && uint64_t(st.st_size) <= kSkeletonCopyUpLimit) {
      int file = checkSyscall(openat(dirFd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC),
                              "open", path);
      kj::AutoCloseFd owned(file);
      char buf[16384];
      for (;;) {
        ssize_t n = checkSyscall(read(file, buf, sizeof(buf)), "read", path);
        if (n == 0) break;
        entry.content.append(buf, size_t(n));
      }
      out.push_back(std::move(entry));
    }
  }
}

}  // namespace

std::vector<SeedEntry> readSkeletonSeed(const std::string& dir) {
  kj::AutoCloseFd root = openDirectory(dir);
  std::vector<SeedEntry> out;
  readSeedBelow(root, "", out);
  size_t bytes = 0;
  for (const SeedEntry& entry : out) bytes += entry.path.size() + entry.content.size();
  KJ_REQUIRE(bytes <= kMaxSeedBytes,
             "the skeleton's small files add up to more than a Setup message carries", dir, bytes,
             kMaxSeedBytes);
  return out;
}

}  // namespace nodeagent::isolator
