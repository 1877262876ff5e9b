#include "isolator/file_util.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <kj/debug.h>
#include <kj/exception.h>

#include <cstdlib>
#include <cstring>

namespace nodeagent::isolator {

void failSyscall(const char* call, int err, const std::string& subject) {
  kj::throwFatalException(kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__,
                                        kj::str(call, " ", subject.c_str(), ": ", strerror(err))));
}

kj::AutoCloseFd openDirectory(const std::string& path) {
  return kj::AutoCloseFd(
      checkSyscall(open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC), "open", path));
}

kj::AutoCloseFd tryOpenDirectory(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) return kj::AutoCloseFd();
    failSyscall("open", err, path);
  }
  return kj::AutoCloseFd(fd);
}

kj::AutoCloseFd moveFdAtOrAbove(kj::AutoCloseFd fd, int lowest) {
  if (fd.get() >= lowest) return fd;
  int moved = fcntl(fd.get(), F_DUPFD_CLOEXEC, lowest);
  if (moved < 0) failSyscall("fcntl(F_DUPFD_CLOEXEC)", errno, std::to_string(fd.get()));
  return kj::AutoCloseFd(moved);
}

int tryWriteFileAt(int dirfd, const char* name, const std::string& content) {
  int fd = openat(dirfd, name, O_WRONLY | O_TRUNC | O_CLOEXEC);
  if (fd < 0) return errno;
  kj::AutoCloseFd owned(fd);
  ssize_t n = write(fd, content.data(), content.size());
  if (n < 0) return errno;
  // cgroup and proc files take the whole value in one write or fail; a short write is an error.
  if (size_t(n) != content.size()) return EIO;
  return 0;
}

void writeFileAt(int dirfd, const char* name, const std::string& content,
                 const std::string& where) {
  int err = tryWriteFileAt(dirfd, name, content);
  if (err != 0) {
    failSyscall("write", err, where + "/" + name + " (\"" + content + "\")");
  }
}

std::optional<std::string> tryReadFileAt(int dirfd, const char* name, const std::string& where) {
  int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) return std::nullopt;
    failSyscall("open", err, where + "/" + name);
  }
  kj::AutoCloseFd owned(fd);
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = checkSyscall(read(fd, buf, sizeof(buf)), "read", where + "/" + name);
    if (n == 0) break;
    out.append(buf, size_t(n));
  }
  return out;
}

std::string readFileAt(int dirfd, const char* name, const std::string& where) {
  auto content = tryReadFileAt(dirfd, name, where);
  if (!content) failSyscall("open", ENOENT, where + "/" + name);
  return std::move(*content);
}

void makeDirectories(const std::string& path, mode_t mode) {
  if (path.empty()) return;
  // Usually only the last component is missing, or none: one mkdir then.
  if (mkdir(path.c_str(), mode) == 0 || errno == EEXIST) return;
  if (errno != ENOENT) failSyscall("mkdir", errno, path);
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    std::string prefix = path.substr(0, pos);
    if (mkdir(prefix.c_str(), mode) != 0 && errno != EEXIST) {
      failSyscall("mkdir", errno, prefix);
    }
  }
}

namespace {

int removeEntry(const char* path, const struct stat*, int type, struct FTW*) {
  int rc = (type == FTW_DP) ? rmdir(path) : unlink(path);
  if (rc != 0 && errno != ENOENT) return errno;
  return 0;
}

}  // namespace

void removeTree(const std::string& path) {
  // FTW_PHYS: never follow symlinks; FTW_MOUNT: never descend into another filesystem.
  int rc = nftw(path.c_str(), removeEntry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
  if (rc < 0 && errno == ENOENT) return;
  if (rc != 0) failSyscall("remove", rc > 0 ? rc : errno, path);
}

std::optional<uint64_t> findKeyedValue(const std::string& content, const char* key) {
  size_t keyLen = strlen(key);
  size_t pos = 0;
  while (pos < content.size()) {
    size_t end = content.find('\n', pos);
    if (end == std::string::npos) end = content.size();
    if (end - pos > keyLen && content.compare(pos, keyLen, key) == 0 &&
        content[pos + keyLen] == ' ') {
      return parseUnsigned(content.substr(pos + keyLen + 1, end - pos - keyLen - 1));
    }
    pos = end + 1;
  }
  return std::nullopt;
}

std::optional<uint64_t> parseUnsigned(const std::string& content) {
  const char* begin = content.c_str();
  while (*begin == ' ') ++begin;
  if (*begin < '0' || *begin > '9') return std::nullopt;
  char* end;
  errno = 0;
  unsigned long long value = strtoull(begin, &end, 10);
  if (errno != 0) return std::nullopt;
  while (*end == ' ' || *end == '\n') ++end;
  if (*end != '\0') return std::nullopt;
  return uint64_t(value);
}

}  // namespace nodeagent::isolator
