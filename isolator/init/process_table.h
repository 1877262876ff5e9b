// The processes init started for the agent, kept until the agent releases them. init
// holds its own copies of each process's pipes and pidfd, so a process keeps running
// (and its output waits in its pipe) while no agent is connected, and an agent that
// restarted gets everything back with `resync` (schema/init.capnp).
#pragma once

#include <sys/types.h>

#include <kj/io.h>
#include <kj/vector.h>

#include <map>
#include <string>
#include <vector>

namespace nodeagent::isolator::init {

struct TrackedProcess {
  std::vector<std::string> argv;
  int64_t startedAtNs = 0;
  int64_t timeoutAtMonoNs = 0;
  kj::AutoCloseFd stdinFd;  // -1 once closed (or never requested)
  kj::AutoCloseFd stdoutFd;
  kj::AutoCloseFd stderrFd;
  kj::AutoCloseFd pidfd;
  bool exited = false;
  int waitStatus = 0;
  uint64_t cpuNs = 0;
};

class ProcessTable {
 public:
  ProcessTable() = default;
  KJ_DISALLOW_COPY(ProcessTable);

  // Keeps copies (F_DUPFD_CLOEXEC) of `fds`, laid out as in a `spawned` event.
  void add(pid_t pid, TrackedProcess process, kj::ArrayPtr<const kj::AutoCloseFd> fds,
           bool stdinOpen);
  // Records the exit of a tracked pid; false for any other child (an orphan).
  bool markExited(pid_t pid, int waitStatus, uint64_t cpuNs);
  void closeStdin(pid_t pid);
  // Forgets an exited process; a running one stays tracked.
  void release(pid_t pid);

  const std::map<pid_t, TrackedProcess>& processes() const { return processes_; }
  // Fresh copies of a process's fds for an `adopted` event, in protocol order.
  static kj::Vector<kj::AutoCloseFd> duplicateFds(const TrackedProcess& process);

 private:
  std::map<pid_t, TrackedProcess> processes_;
};

}  // namespace nodeagent::isolator::init
