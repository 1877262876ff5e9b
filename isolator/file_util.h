// Small blocking file helpers shared by the cgroup, template and init code. Every
// failure throws a kj::Exception naming the path, so callers need no extra context.
#pragma once

#include <kj/common.h>
#include <kj/io.h>

#include <errno.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace nodeagent::isolator {

// Throws kj::Exception (FAILED) "<call> <subject>: <strerror(err)>", e.g.
// "mkdir /sys/fs/cgroup/x: Permission denied".
[[noreturn]] void failSyscall(const char* call, int err, const std::string& subject);

// Returns `rc`, or throws failSyscall(call, errno, subject) if it is negative.
template <typename T>
T checkSyscall(T rc, const char* call, const std::string& subject) {
  if (rc < 0) failSyscall(call, errno, subject);
  return rc;
}

// Opens a directory (O_DIRECTORY | O_CLOEXEC) for use as a dirfd.
kj::AutoCloseFd openDirectory(const std::string& path);

// Like openDirectory, but returns an invalid fd when the path does not exist.
kj::AutoCloseFd tryOpenDirectory(const std::string& path);

// `fd` itself if it is >= `lowest`, else a close-on-exec duplicate >= `lowest` (and `fd`
// is closed): e.g. to keep it clear of the numbers a child dup2()s onto.
kj::AutoCloseFd moveFdAtOrAbove(kj::AutoCloseFd fd, int lowest);

// Writes `content` to an existing file below `dirfd` with a single write(2): cgroup files
// take one value per write. `where` names the directory in errors.
void writeFileAt(int dirfd, const char* name, const std::string& content, const std::string& where);

// As writeFileAt, but returns the errno instead of throwing (0 on success).
int tryWriteFileAt(int dirfd, const char* name, const std::string& content);

// Reads a whole (small) file below `dirfd`; nullopt when it does not exist.
std::optional<std::string> tryReadFileAt(int dirfd, const char* name, const std::string& where);

// Reads a whole file below `dirfd`; throws if missing.
std::string readFileAt(int dirfd, const char* name, const std::string& where);

// Creates `path` and missing parents with `mode`; existing directories are fine.
void makeDirectories(const std::string& path, mode_t mode);

// Removes a directory tree that this process built (never follows symlinks).
void removeTree(const std::string& path);

// Parses a "key value" line-oriented file (cpu.stat, memory.events, ...).
std::optional<uint64_t> findKeyedValue(const std::string& content, const char* key);

// Parses a decimal integer file body ("123\n"); "max" parses as nullopt.
std::optional<uint64_t> parseUnsigned(const std::string& content);

}  // namespace nodeagent::isolator
