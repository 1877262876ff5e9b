#include "nodeagent/sandbox_fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <sys/fsuid.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <kj/debug.h>
#include <kj/vector.h>

#include "nodeagent/api_error.h"

namespace nodeagent {
namespace {

constexpr size_t kMaxPathBytes = 4096;

constexpr int kMaxResolveRetries = 32;
constexpr int kMaxRemoveDepth = 256;

// Makes this thread act as the sandbox's root user for file access while it
// lives: the tenant's fsuid/fsgid, no supplementary groups and no effective
// capabilities. Capabilities matter beyond permission checks: files such as
// the sandbox's /proc/kallsyms show different contents to a CAP_SYSLOG
// opener. All three are per-thread; raw syscalls, because glibc would apply
// setgroups to every thread of the agent.
class TenantCredentials {
 public:
  TenantCredentials(uid_t uid, gid_t gid) {
    int n = getgroups(kj::size(groups_), groups_);
    groupCount_ = n < 0 ? 0 : n;
    groupsDropped_ = syscall(SYS_setgroups, 0, nullptr) == 0;
    oldGid_ = setfsgid(gid);
    oldUid_ = setfsuid(uid);
    if (uid_t(setfsuid(uid_t(-1))) != uid || gid_t(setfsgid(gid_t(-1))) != gid) {
      restore();
      throwApiError(api::ErrorCode::INTERNAL, "cannot take the sandbox's file credentials");
    }
    header_.version = _LINUX_CAPABILITY_VERSION_3;
    header_.pid = 0;
    capsSaved_ = syscall(SYS_capget, &header_, saved_) == 0;
    if (capsSaved_) {
      __user_cap_data_struct none[2];
      memcpy(none, saved_, sizeof(none));
      none[0].effective = none[1].effective = 0;
      syscall(SYS_capset, &header_, none);
    }
  }
  ~TenantCredentials() { restore(); }
  KJ_DISALLOW_COPY(TenantCredentials);

 private:
  void restore() {
    if (capsSaved_) syscall(SYS_capset, &header_, saved_);
    setfsuid(oldUid_);
    setfsgid(oldGid_);
    if (groupsDropped_) syscall(SYS_setgroups, groupCount_, groups_);
  }

  gid_t groups_[64];
  int groupCount_ = 0;
  bool groupsDropped_ = false;
  int oldUid_;
  int oldGid_;
  __user_cap_header_struct header_;
  __user_cap_data_struct saved_[2];
  bool capsSaved_ = false;
};

// Kernel interfaces (procfs, sysfs, ...) show what the *opener* may see; the
// agent only moves tenants' own data.
bool isKernelInterface(int fd) {
  struct statfs fs;
  if (fstatfs(fd, &fs) < 0) return true;
  switch (fs.f_type) {
    case PROC_SUPER_MAGIC:
    case SYSFS_MAGIC:
    case DEBUGFS_MAGIC:
    case SECURITYFS_MAGIC:
    case CGROUP_SUPER_MAGIC:
    case CGROUP2_SUPER_MAGIC:
    case BPF_FS_MAGIC:
    case TRACEFS_MAGIC:
    case DEVPTS_SUPER_MAGIC:
      return true;
    default:
      return false;
  }
}

[[noreturn]] void throwErrno(int error, kj::StringPtr what, kj::StringPtr path) {
  api::ErrorCode code;
  switch (error) {
    case ENOENT:
      code = api::ErrorCode::NOT_FOUND;
      break;
    case EEXIST:
      code = api::ErrorCode::ALREADY_EXISTS;
      break;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      code = api::ErrorCode::LIMIT_EXCEEDED;
      break;
    case ENOTDIR:
    case EISDIR:
    case ELOOP:
    case EXDEV:
    case EACCES:
    case EPERM:
    case ENAMETOOLONG:
    case EINVAL:
    case ENOTEMPTY:
      code = api::ErrorCode::INVALID_PATH;
      break;
    case EWOULDBLOCK:
      code = api::ErrorCode::UNAVAILABLE;
      break;
    default:
      code = api::ErrorCode::INTERNAL;
  }
  throwApiError(code, kj::str(what, " ", path, ": ", strerror(error)));
}

FileEntry::Type entryType(mode_t mode) {
  if (S_ISREG(mode)) return FileEntry::Type::kFile;
  if (S_ISDIR(mode)) return FileEntry::Type::kDirectory;
  if (S_ISLNK(mode)) return FileEntry::Type::kSymlink;
  return FileEntry::Type::kOther;
}

FileEntry makeEntry(kj::StringPtr name, const struct stat& st) {
  return FileEntry{kj::str(name), entryType(st.st_mode), uint64_t(st.st_size),
                   uint32_t(st.st_mode & 07777),
                   int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
}

kj::String randomSuffix() {
  uint64_t r = 0;
  KJ_SYSCALL(getrandom(&r, sizeof(r), 0));
  return kj::str(kj::hex(r));
}

// The names in directory `dir`, without "." and "..".
kj::Vector<kj::String> readNames(int dir) {
  int dupFd;
  KJ_SYSCALL(dupFd = fcntl(dir, F_DUPFD_CLOEXEC, 0));
  DIR* d = fdopendir(dupFd);
  if (d == nullptr) {
    close(dupFd);
    KJ_FAIL_SYSCALL("fdopendir", errno);
  }
  KJ_DEFER(closedir(d));
  rewinddir(d);
  kj::Vector<kj::String> names;
  while (struct dirent* e = readdir(d)) {
    kj::StringPtr name = e->d_name;
    if (name != "." && name != "..") names.add(kj::str(name));
  }
  return names;
}

// Removes everything below the directory `dir` (not following symlinks). The
// tree is the tenant's: depth is bounded, and each level holds one fd.
void removeTree(int dir, int depth) {
  if (depth > kMaxRemoveDepth) {
    throwApiError(api::ErrorCode::LIMIT_EXCEEDED,
                  kj::str("directory tree deeper than ", kMaxRemoveDepth, " levels"));
  }
  for (auto& name : readNames(dir)) {
    if (unlinkat(dir, name.cStr(), 0) == 0) continue;
    if (errno == ENOENT) continue;
    if (errno != EISDIR && errno != EPERM) throwErrno(errno, "remove", name);
    int child = openat(dir, name.cStr(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (child < 0) throwErrno(errno, "remove", name);
    kj::AutoCloseFd childFd(child);
    removeTree(childFd, depth + 1);
    childFd = nullptr;
    if (unlinkat(dir, name.cStr(), AT_REMOVEDIR) < 0) throwErrno(errno, "remove", name);
  }
}

}  // namespace

PendingUpload::PendingUpload(kj::AutoCloseFd dir, kj::AutoCloseFd file, kj::String tempName,
                             kj::String finalName, uid_t uid, gid_t gid)
    : dir_(kj::mv(dir)),
      file_(kj::mv(file)),
      tempName_(kj::mv(tempName)),
      finalName_(kj::mv(finalName)),
      uid_(uid),
      gid_(gid) {}

PendingUpload::~PendingUpload() noexcept {
  if (!committed_) {
    TenantCredentials creds(uid_, gid_);
    unlinkat(dir_, tempName_.cStr(), 0);
  }
}

void PendingUpload::commit() {
  TenantCredentials creds(uid_, gid_);
  // renameat replaces whatever is at the final name (a file, or a symlink
  // itself, never its target), inside the directory we resolved.
  if (renameat(dir_, tempName_.cStr(), dir_, finalName_.cStr()) < 0) {
    throwErrno(errno, "write", finalName_);
  }
  committed_ = true;
}

SandboxFs::SandboxFs(kj::AutoCloseFd root, uid_t uid, gid_t gid)
    : root_(kj::mv(root)), uid_(uid), gid_(gid) {}

kj::String SandboxFs::normalize(kj::StringPtr path) {
  if (path.size() == 0) throwApiError(api::ErrorCode::INVALID_PATH, "empty path");
  if (path.size() > kMaxPathBytes) {
    throwApiError(api::ErrorCode::INVALID_PATH, "path longer than 4096 bytes");
  }
  if (memchr(path.begin(), '\0', path.size()) != nullptr) {
    throwApiError(api::ErrorCode::INVALID_PATH, "path contains a NUL byte");
  }
  kj::Vector<char> out;
  size_t i = 0;
  while (i < path.size()) {
    while (i < path.size() && path[i] == '/') ++i;
    size_t start = i;
    while (i < path.size() && path[i] != '/') ++i;
    kj::ArrayPtr<const char> part(path.begin() + start, i - start);
    if (part.size() == 0 || (part.size() == 1 && part[0] == '.')) continue;
    if (part.size() == 2 && part[0] == '.' && part[1] == '.') {
      throwApiError(api::ErrorCode::INVALID_PATH, kj::str("path ", path, " has a '..' component"));
    }
    if (out.size() > 0) out.add('/');
    out.addAll(part);
  }
  out.add('\0');
  return kj::String(out.releaseAsArray());
}

kj::AutoCloseFd SandboxFs::resolve(kj::StringPtr relative, int flags, uint32_t mode) {
  if (root_ == nullptr) throwApiError(api::ErrorCode::NOT_RUNNING, "the sandbox has ended");
  struct open_how how = {};
  how.flags = uint64_t(flags | O_CLOEXEC);
  how.mode = (flags & O_CREAT) ? mode : 0;
  how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
  kj::StringPtr target = relative.size() == 0 ? "."_kj : relative;
  for (int attempt = 0;; ++attempt) {
    long fd = syscall(SYS_openat2, root_.get(), target.cStr(), &how, sizeof(how));
    if (fd >= 0) return kj::AutoCloseFd(int(fd));
    // EAGAIN: a rename raced the lookup. The tenant can keep that up, so
    // retry a few times only.
    if ((errno == EAGAIN || errno == EINTR) && attempt < kMaxResolveRetries) continue;
    throwErrno(errno, "open", kj::str("/", relative));
  }
}

kj::AutoCloseFd SandboxFs::openParent(kj::StringPtr path, kj::String* name) {
  kj::String rel = normalize(path);
  if (rel.size() == 0) throwApiError(api::ErrorCode::INVALID_PATH, "the root has no parent");
  kj::StringPtr relPtr = rel;
  KJ_IF_MAYBE (slash, relPtr.findLast('/')) {
    *name = kj::str(relPtr.slice(*slash + 1));
    return resolve(kj::str(relPtr.slice(0, *slash)), O_PATH | O_DIRECTORY);
  }
  *name = kj::str(relPtr);
  return resolve("", O_PATH | O_DIRECTORY);
}

kj::AutoCloseFd SandboxFs::openForRead(kj::StringPtr path) {
  TenantCredentials creds(uid_, gid_);
  // Look first (O_PATH opens nothing: no fifo blocks, no lease breaks, no
  // device opens), then open for real only a regular file on the tenant's disk.
  kj::AutoCloseFd found = resolve(normalize(path), O_PATH);
  struct stat st;
  KJ_SYSCALL(fstat(found, &st));
  if (!S_ISREG(st.st_mode) || isKernelInterface(found)) {
    throwApiError(api::ErrorCode::INVALID_PATH,
                  kj::str(path, " is not a regular file on the sandbox's disk"));
  }
  kj::String self = kj::str("/proc/self/fd/", found.get());
  // O_NONBLOCK: a file the tenant holds a lease on fails at once
  // (EWOULDBLOCK) instead of stalling the agent for the lease break time.
  int fd = open(self.cStr(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) throwErrno(errno, "open", path);
  kj::AutoCloseFd file(fd);
  int flags;
  KJ_SYSCALL(flags = fcntl(file, F_GETFL));
  KJ_SYSCALL(fcntl(file, F_SETFL, flags & ~O_NONBLOCK));
  return file;
}

kj::Own<PendingUpload> SandboxFs::beginUpload(kj::StringPtr path, uint32_t mode) {
  TenantCredentials creds(uid_, gid_);
  kj::String name;
  kj::AutoCloseFd parent = openParent(path, &name);
  kj::String tempName = kj::str(".nodeagent-upload-", randomSuffix());
  int fd = openat(parent, tempName.cStr(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                  mode & 07777);
  if (fd < 0) throwErrno(errno, "write", path);
  return kj::heap<PendingUpload>(kj::mv(parent), kj::AutoCloseFd(fd), kj::mv(tempName),
                                 kj::mv(name), uid_, gid_);
}

kj::Array<FileEntry> SandboxFs::list(kj::StringPtr path, size_t limit, bool* truncated) {
  TenantCredentials creds(uid_, gid_);
  kj::AutoCloseFd dir = resolve(normalize(path), O_RDONLY | O_DIRECTORY);
  *truncated = false;
  kj::Vector<FileEntry> entries;
  for (auto& name : readNames(dir)) {
    if (entries.size() == limit) {
      *truncated = true;
      break;
    }
    struct stat st;
    if (fstatat(dir, name.cStr(), &st, AT_SYMLINK_NOFOLLOW) < 0) continue;  // raced a delete
    entries.add(makeEntry(name, st));
  }
  return entries.releaseAsArray();
}

FileEntry SandboxFs::stat(kj::StringPtr path) {
  TenantCredentials creds(uid_, gid_);
  kj::String rel = normalize(path);
  kj::AutoCloseFd fd = resolve(rel, O_PATH | O_NOFOLLOW);
  struct stat st;
  KJ_SYSCALL(fstatat(fd, "", &st, AT_EMPTY_PATH));
  kj::StringPtr relPtr = rel;
  kj::StringPtr name = relPtr;
  KJ_IF_MAYBE (slash, relPtr.findLast('/')) {
    name = relPtr.slice(*slash + 1);
  }
  return makeEntry(rel.size() == 0 ? "/"_kj : name, st);
}

void SandboxFs::mkdir(kj::StringPtr path, bool parents) {
  TenantCredentials creds(uid_, gid_);
  kj::String rel = normalize(path);
  if (rel.size() == 0) {
    if (parents) return;
    throwApiError(api::ErrorCode::ALREADY_EXISTS, "/ already exists");
  }
  // Each prefix ("a", "a/b", ...) is resolved like every other path here
  // (symlinks followed, but only inside the root), then its last component made.
  kj::StringPtr all = rel;
  size_t end = 0;
  for (;;) {
    KJ_IF_MAYBE (slash, all.slice(end).findFirst('/')) {
      end += *slash;
    } else {
      end = all.size();
    }
    bool last = end == all.size();
    if (last || parents) {
      kj::String prefix = kj::str(all.slice(0, end));
      kj::String name;
      kj::AutoCloseFd parent = openParent(prefix, &name);
      if (::mkdirat(parent, name.cStr(), 0755) < 0) {
        if (errno != EEXIST || (last && !parents)) throwErrno(errno, "mkdir", path);
        // It exists: fine with `parents`, if it is a directory.
        resolve(prefix, O_PATH | O_DIRECTORY);
      }
    }
    if (last) return;
    ++end;
  }
}

void SandboxFs::remove(kj::StringPtr path, bool recursive) {
  TenantCredentials creds(uid_, gid_);
  kj::String name;
  kj::AutoCloseFd parent = openParent(path, &name);
  if (unlinkat(parent, name.cStr(), 0) == 0) return;
  if (errno != EISDIR && errno != EPERM) throwErrno(errno, "remove", path);
  if (recursive) {
    int fd = openat(parent, name.cStr(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) throwErrno(errno, "remove", path);
    kj::AutoCloseFd dir(fd);
    removeTree(dir, 0);
  }
  if (unlinkat(parent, name.cStr(), AT_REMOVEDIR) < 0) throwErrno(errno, "remove", path);
}

}  // namespace nodeagent
