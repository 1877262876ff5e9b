#include "isolator/init/process_table.h"

#include <fcntl.h>

#include <kj/debug.h>

namespace nodeagent::isolator::init {
namespace {

kj::AutoCloseFd duplicate(int fd) {
  int copy;
  KJ_SYSCALL(copy = fcntl(fd, F_DUPFD_CLOEXEC, 3));
  return kj::AutoCloseFd(copy);
}

}  // namespace

void ProcessTable::add(pid_t pid, TrackedProcess process, kj::ArrayPtr<const kj::AutoCloseFd> fds,
                       bool stdinOpen) {
  KJ_REQUIRE(fds.size() == (stdinOpen ? 4u : 3u), "unexpected fd layout", fds.size());
  size_t i = 0;
  if (stdinOpen) process.stdinFd = duplicate(fds[i++]);
  process.stdoutFd = duplicate(fds[i++]);
  process.stderrFd = duplicate(fds[i++]);
  process.pidfd = duplicate(fds[i++]);
  processes_.insert_or_assign(pid, kj::mv(process));
}

bool ProcessTable::markExited(pid_t pid, int waitStatus, uint64_t cpuNs) {
  auto it = processes_.find(pid);
  if (it == processes_.end() || it->second.exited) return false;
  it->second.exited = true;
  it->second.waitStatus = waitStatus;
  it->second.cpuNs = cpuNs;
  return true;
}

void ProcessTable::closeStdin(pid_t pid) {
  auto it = processes_.find(pid);
  if (it != processes_.end()) it->second.stdinFd = nullptr;
}

void ProcessTable::release(pid_t pid) {
  auto it = processes_.find(pid);
  if (it != processes_.end() && it->second.exited) processes_.erase(it);
}

kj::Vector<kj::AutoCloseFd> ProcessTable::duplicateFds(const TrackedProcess& process) {
  kj::Vector<kj::AutoCloseFd> fds;
  if (process.stdinFd.get() >= 0) fds.add(duplicate(process.stdinFd));
  fds.add(duplicate(process.stdoutFd));
  fds.add(duplicate(process.stderrFd));
  fds.add(duplicate(process.pidfd));
  return fds;
}

}  // namespace nodeagent::isolator::init
