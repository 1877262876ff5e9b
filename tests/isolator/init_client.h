// A small blocking client of a sandbox's init, for tests: spawn, signal, collect output
// and exit statuses. (The agent's real client runs on its event loop.)
#pragma once

#include <capnp/message.h>
#include <kj/io.h>

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace nodeagent::isolator::testing {

struct SpawnedProcess {
  int32_t pid = 0;  // in the sandbox's pid namespace
  kj::AutoCloseFd stdinFd, stdoutFd, stderrFd, pidfd;
};

struct AdoptedProcess {
  SpawnedProcess process;
  std::vector<std::string> argv;
  int64_t timeoutAtMonoNs = 0;
  bool exited = false;
  int waitStatus = 0;
};

struct RunResult {
  int waitStatus = -1;
  std::string out, err;
};

class InitClient {
 public:
  explicit InitClient(int control) : control_(control) {}

  // The process, or the spawnFailed message.
  std::optional<SpawnedProcess> spawn(const std::vector<std::string>& argv,
                                      std::string* error = nullptr,
                                      const std::vector<std::string>& env = {},
                                      const std::string& cwd = "", bool stdinOpen = false);
  // The exited event's wait status for `pid` (throws after timeoutMs).
  int waitExit(int32_t pid, int timeoutMs = 20000);
  // signalResult: 0 or errno.
  int signal(int32_t pid, int sig);
  // Closes our stdin pipe and tells init to drop its copy (so the process sees EOF).
  void closeStdin(SpawnedProcess& process);
  // Every process init tracks, as a reconnected agent gets them.
  std::vector<AdoptedProcess> resync();
  void release(int32_t pid);
  // spawn + read stdout/stderr to EOF + waitExit. Throws on spawnFailed.
  RunResult run(const std::vector<std::string>& argv, const std::vector<std::string>& env = {});

 private:
  struct Reply {
    bool failed = false;
    std::string text;
    int32_t pid = 0;
    int32_t signalResult = 0;
    std::vector<kj::AutoCloseFd> fds;
    std::optional<AdoptedProcess> adopted;  // an `adopted` event (more follow)
  };
  // Reads events until the reply to `tag` arrives, recording exits on the way.
  Reply awaitReply(uint64_t tag, int timeoutMs = 20000);
  // Reads one event (blocking up to timeoutMs); false on timeout.
  bool readEvent(int timeoutMs, uint64_t wantTag, std::optional<Reply>* reply);
  void sendRequest(capnp::MessageBuilder& message);

  int control_;
  uint64_t nextTag_ = 1;
  std::map<int32_t, int> exits_;
};

// Reads both fds to EOF (poll), with a timeout. Throws on timeout.
void readBoth(int outFd, int errFd, std::string* out, std::string* err, int timeoutMs = 30000);

}  // namespace nodeagent::isolator::testing
