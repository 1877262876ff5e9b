// Helpers shared by the loop tests.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <kj/debug.h>
#include <kj/io.h>

#include "loop/io_context.h"

namespace nodeagent::loop::test {

struct FdPair {
  kj::AutoCloseFd a;
  kj::AutoCloseFd b;
};

// a: read end, b: write end.
inline FdPair makePipe(int flags = 0) {
  int fds[2];
  KJ_SYSCALL(pipe2(fds, O_CLOEXEC | flags));
  return {kj::AutoCloseFd(fds[0]), kj::AutoCloseFd(fds[1])};
}

inline FdPair makeSocketPair(int type = SOCK_STREAM) {
  int fds[2];
  KJ_SYSCALL(socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, fds));
  return {kj::AutoCloseFd(fds[0]), kj::AutoCloseFd(fds[1])};
}

inline int countOpenFds() {
  int count = 0;
  DIR* dir = opendir("/proc/self/fd");
  KJ_ASSERT(dir != nullptr);
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(dir);
  return count - 1;  // the directory's own fd
}

// Runs the loop until every request the port owns has been reclaimed.
inline bool drainPort(IoContext& ctx) {
  for (int i = 0; i < 1000 && ctx.port.pendingOperations() > 0; ++i) {
    ctx.waitScope.poll();
    if (ctx.port.pendingOperations() > 0) {
      ctx.port.timer().afterDelay(1 * kj::MILLISECONDS).wait(ctx.waitScope);
    }
  }
  return ctx.port.pendingOperations() == 0;
}

inline kj::ArrayPtr<const kj::byte> bytesOf(kj::StringPtr s) {
  return s.asBytes();
}

}  // namespace nodeagent::loop::test
