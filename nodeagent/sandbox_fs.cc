#include "nodeagent/sandbox_fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <sys/fsuid.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <kj/debug.h>
#include <kj/vector.h>

#include "nodeagent/api_error.h"

namespace nodeagent {
namespace {

constexpr size_t kMaxPathBytes = 4096;

// Switches this thread's filesystem ids for the lifetime of the object.
// setfsuid is per-thread (glibc does not broadcast it), and dropping fsuid
// from 0 also drops the filesystem capabilities, which is what we want.
class ScopedFsIds {
 public:
  ScopedFsIds(uid_t uid, gid_t gid) {
    oldGid_ = setfsgid(gid);
    oldUid_ = setfsuid(uid);
  }
  ~ScopedFsIds() {
    setfsuid(oldUid_);
    setfsgid(oldGid_);
  }
  KJ_DISALLOW_COPY(ScopedFsIds);

 private:
  int oldUid_;
  int oldGid_;
};

[[noreturn]] void throwErrno(int error, kj::StringPtr what, kj::StringPtr path) {
  api::ErrorCode code;
  switch (error) {
    case ENOENT:
      code = api::ErrorCode::NOT_FOUND;
      break;
    case EEXIST:
    case ENOTEMPTY:
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
      code = api::ErrorCode::INVALID_PATH;
      break;
    default:
      code = api::ErrorCode::INTERNAL;
  }
  if (code == api::ErrorCode::ALREADY_EXISTS && error == ENOTEMPTY) {
    throwApiError(api::ErrorCode::INVALID_PATH, kj::str(what, " ", path, ": directory not empty"));
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

// Removes everything below the directory `dir` (not following symlinks).
void removeTree(int dir) {
  int dupFd;
  KJ_SYSCALL(dupFd = fcntl(dir, F_DUPFD_CLOEXEC, 0));
  DIR* d = fdopendir(dupFd);
  if (d == nullptr) {
    close(dupFd);
    KJ_FAIL_SYSCALL("fdopendir", errno);
  }
  KJ_DEFER(closedir(d));
  kj::Vector<kj::String> names;
  while (struct dirent* e = readdir(d)) {
    kj::StringPtr name = e->d_name;
    if (name != "." && name != "..") names.add(kj::str(name));
  }
  for (auto& name : names) {
    if (unlinkat(dir, name.cStr(), 0) == 0) continue;
    if (errno != EISDIR && errno != EPERM) throwErrno(errno, "remove", name);
    int child = openat(dir, name.cStr(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (child < 0) throwErrno(errno, "remove", name);
    kj::AutoCloseFd childFd(child);
    removeTree(childFd);
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
    ScopedFsIds ids(uid_, gid_);
    unlinkat(dir_, tempName_.cStr(), 0);
  }
}

void PendingUpload::commit() {
  ScopedFsIds ids(uid_, gid_);
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
  struct open_how how = {};
  how.flags = uint64_t(flags | O_CLOEXEC);
  how.mode = (flags & O_CREAT) ? mode : 0;
  how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
  kj::StringPtr target = relative.size() == 0 ? "."_kj : relative;
  for (;;) {
    long fd = syscall(SYS_openat2, root_.get(), target.cStr(), &how, sizeof(how));
    if (fd >= 0) return kj::AutoCloseFd(int(fd));
    if (errno == EAGAIN || errno == EINTR) continue;  // EAGAIN: a rename raced the lookup
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
  ScopedFsIds ids(uid_, gid_);
  // O_NONBLOCK: opening a fifo the tenant planted must not block the agent.
  kj::AutoCloseFd fd = resolve(normalize(path), O_RDONLY | O_NONBLOCK | O_NOCTTY);
  struct stat st;
  KJ_SYSCALL(fstat(fd, &st));
  if (!S_ISREG(st.st_mode)) {
    throwApiError(api::ErrorCode::INVALID_PATH, kj::str(path, " is not a regular file"));
  }
  int flags;
  KJ_SYSCALL(flags = fcntl(fd, F_GETFL));
  KJ_SYSCALL(fcntl(fd, F_SETFL, flags & ~O_NONBLOCK));
  return fd;
}

kj::Own<PendingUpload> SandboxFs::beginUpload(kj::StringPtr path, uint32_t mode) {
  ScopedFsIds ids(uid_, gid_);
  kj::String name;
  kj::AutoCloseFd parent = openParent(path, &name);
  kj::String tempName = kj::str(".nodeagent-upload-", randomSuffix());
  int fd = openat(parent, tempName.cStr(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                  mode & 07777);
  if (fd < 0) throwErrno(errno, "write", path);
  return kj::heap<PendingUpload>(kj::mv(parent), kj::AutoCloseFd(fd), kj::mv(tempName),
                                 kj::mv(name), uid_, gid_);
}

kj::Array<FileEntry> SandboxFs::list(kj::StringPtr path) {
  ScopedFsIds ids(uid_, gid_);
  kj::AutoCloseFd dir = resolve(normalize(path), O_RDONLY | O_DIRECTORY);
  int dupFd;
  KJ_SYSCALL(dupFd = fcntl(dir, F_DUPFD_CLOEXEC, 0));
  DIR* d = fdopendir(dupFd);
  if (d == nullptr) {
    close(dupFd);
    throwErrno(errno, "list", path);
  }
  KJ_DEFER(closedir(d));
  kj::Vector<FileEntry> entries;
  while (struct dirent* e = readdir(d)) {
    kj::StringPtr name = e->d_name;
    if (name == "." || name == "..") continue;
    struct stat st;
    if (fstatat(dir, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) continue;  // raced a delete
    entries.add(makeEntry(name, st));
  }
  return entries.releaseAsArray();
}

FileEntry SandboxFs::stat(kj::StringPtr path) {
  ScopedFsIds ids(uid_, gid_);
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
  ScopedFsIds ids(uid_, gid_);
  kj::String rel = normalize(path);
  if (rel.size() == 0) {
    if (parents) return;
    throwApiError(api::ErrorCode::ALREADY_EXISTS, "/ already exists");
  }
  kj::AutoCloseFd dir = resolve("", O_PATH | O_DIRECTORY);
  kj::StringPtr rest = rel;
  for (;;) {
    kj::Maybe<size_t> slash = rest.findFirst('/');
    kj::String part;
    bool last = true;
    KJ_IF_MAYBE (s, slash) {
      part = kj::str(rest.slice(0, *s));
      last = false;
    } else {
      part = kj::str(rest);
    }
    if (last || parents) {
      if (::mkdirat(dir, part.cStr(), 0755) < 0) {
        if (!(errno == EEXIST && (parents || !last))) throwErrno(errno, "mkdir", path);
        if (errno == EEXIST && last && !parents) throwErrno(EEXIST, "mkdir", path);
      }
    }
    if (last) return;
    // Step into the component without following a symlink out of the tree.
    int next = openat(dir, part.cStr(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (next < 0) throwErrno(errno, "mkdir", path);
    dir = kj::AutoCloseFd(next);
    KJ_IF_MAYBE (s, slash) {
      rest = rest.slice(*s + 1);
    }
  }
}

void SandboxFs::remove(kj::StringPtr path, bool recursive) {
  ScopedFsIds ids(uid_, gid_);
  kj::String name;
  kj::AutoCloseFd parent = openParent(path, &name);
  if (unlinkat(parent, name.cStr(), 0) == 0) return;
  if (errno != EISDIR && errno != EPERM) throwErrno(errno, "remove", path);
  if (recursive) {
    int fd = openat(parent, name.cStr(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) throwErrno(errno, "remove", path);
    kj::AutoCloseFd dir(fd);
    removeTree(dir);
  }
  if (unlinkat(parent, name.cStr(), AT_REMOVEDIR) < 0) throwErrno(errno, "remove", path);
}

}  // namespace nodeagent
