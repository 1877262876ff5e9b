// File operations inside a sandbox's root, done by the agent on the host.
//
// Every path is resolved with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
// against a directory fd of the sandbox's root, so nothing a tenant plants
// (symlinks, "..", magic links in /proc) resolves outside it. Operations run
// with the thread's fsuid/fsgid set to the sandbox's root user, so permission
// checks are the tenant's own and new files belong to the tenant.
#pragma once

#include <sys/types.h>

#include <kj/array.h>
#include <kj/io.h>
#include <kj/string.h>

namespace nodeagent {

struct FileEntry {
  enum class Type { kFile, kDirectory, kSymlink, kOther };
  kj::String name;
  Type type;
  uint64_t size;
  uint32_t mode;
  int64_t mtimeNs;
};

// A file being uploaded: written to a hidden temporary beside its final name
// and renamed over it on commit, so readers never see half a file. Dropping an
// uncommitted upload removes the temporary.
class PendingUpload {
 public:
  PendingUpload(kj::AutoCloseFd dir, kj::AutoCloseFd file, kj::String tempName,
                kj::String finalName, uid_t uid, gid_t gid);
  ~PendingUpload() noexcept;
  KJ_DISALLOW_COPY(PendingUpload);

  int fd() const { return file_.get(); }
  void commit();

 private:
  kj::AutoCloseFd dir_;
  kj::AutoCloseFd file_;
  kj::String tempName_;
  kj::String finalName_;
  uid_t uid_;
  gid_t gid_;
  bool committed_ = false;
};

class SandboxFs {
 public:
  // `root` is an O_PATH directory fd of the sandbox's "/", e.g. from
  // /proc/<init pid>/root. `uid`/`gid` are the host ids of the sandbox's root.
  SandboxFs(kj::AutoCloseFd root, uid_t uid, gid_t gid);

  // Throws nodeagent.invalidPath for ".." components, NUL bytes, empty or
  // over-long paths, nodeagent.notFound for missing files.
  // Regular files on the sandbox's own disk only (not fifos, devices or
  // kernel interfaces such as its /proc); a leased file is `unavailable`.
  kj::AutoCloseFd openForRead(kj::StringPtr path);
  kj::Own<PendingUpload> beginUpload(kj::StringPtr path, uint32_t mode);
  // At most `limit` entries; *truncated says whether there were more.
  kj::Array<FileEntry> list(kj::StringPtr path, size_t limit, bool* truncated);
  FileEntry stat(kj::StringPtr path);  // does not follow a final symlink
  void mkdir(kj::StringPtr path, bool parents);
  void remove(kj::StringPtr path, bool recursive);

  // Closes the root: the sandbox ended, and the fd would keep its disk
  // (a tmpfs) alive. Every later call fails with notRunning.
  void close() { root_ = nullptr; }

  // Checks and normalizes a sandbox path: "/a//b/./c" -> "a/b/c" ("" = root).
  static kj::String normalize(kj::StringPtr path);

 private:
  kj::AutoCloseFd resolve(kj::StringPtr relative, int flags, uint32_t mode = 0);
  // Opens the parent directory of `path`; returns it and the final name.
  kj::AutoCloseFd openParent(kj::StringPtr path, kj::String* name);

  kj::AutoCloseFd root_;
  uid_t uid_;
  gid_t gid_;
};

}  // namespace nodeagent
