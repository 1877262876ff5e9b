// Helpers shared by the benchmark harnesses: finding the binaries beside
// them, running a peer command, and summarizing samples as JSON.
#pragma once

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

extern char** environ;

namespace nodeagent::bench {

// The directory of the running benchmark (build/bin), where the agent is.
inline std::string ownBinDir() {
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  self[n > 0 ? n : 0] = '\0';
  std::string path = self;
  return path.substr(0, path.rfind('/'));
}

// Starts `argv` (PATH search), its output discarded when `quiet`; -1 on failure.
inline pid_t spawnCommand(const std::vector<std::string>& argv, bool quiet = true) {
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (quiet) {
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  }
  pid_t pid = -1;
  if (posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

// Runs `argv` to its end: its exit code, or -1.
inline int spawnAndWait(const std::vector<std::string>& argv, bool quiet = true) {
  pid_t pid = spawnCommand(argv, quiet);
  if (pid < 0) return -1;
  int status;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Starts `argv` with its stdout on a pipe and returns once its first output
// arrives (and, after that, once it has exited): the microseconds to that
// first output, or -1. What a run of the same program costs with no sandbox
// and no RPC around it: the floor under every sandbox's run of it.
template <typename Clock>
inline double spawnToFirstOutputUs(const std::vector<std::string>& argv) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return -1;
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
  auto start = Clock::now();
  pid_t pid = -1;
  int spawned = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  char byte[64];
  ssize_t n = spawned == 0 ? read(fds[0], byte, sizeof(byte)) : -1;
  double us = std::chrono::duration<double, std::micro>(Clock::now() - start).count();
  close(fds[0]);
  if (spawned == 0) waitpid(pid, nullptr, 0);
  return n > 0 ? us : -1;
}

// Uninstalls what an agent of `cgroupRoot` pinned on bpffs (its CPU meter
// and egress programs stay attached after it stops, by design, for the next
// agent to take over): a benchmark's agents have no successor, and their
// programs would otherwise run on every context switch of later runs.
inline void removeAgentPins(const std::string& cgroupRoot) {
  spawnAndWait({"rm", "-rf", "/sys/fs/bpf/nodeagent/" + cgroupRoot,
                "/sys/fs/bpf/nodeagent/" + cgroupRoot + "-egress"});
}

struct Stats {
  double p50Us, p99Us, meanUs;
  size_t n;
};

inline Stats summarize(std::vector<double> us) {
  std::sort(us.begin(), us.end());
  double sum = 0;
  for (double v : us) sum += v;
  auto pct = [&](double p) {
    return us[std::min(us.size() - 1, size_t(p * double(us.size() - 1) + 0.5))];
  };
  return Stats{pct(0.5), pct(0.99), sum / double(us.size()), us.size()};
}

// `"name": {"p50_us": ..., "p99_us": ..., "mean_us": ..., "n": ...}`
inline std::string json(const char* name, const Stats& s) {
  char buf[256];
  snprintf(buf, sizeof(buf),
           "\"%s\": {\"p50_us\": %.1f, \"p99_us\": %.1f, \"mean_us\": %.1f, \"n\": %zu}", name,
           s.p50Us, s.p99Us, s.meanUs, s.n);
  return buf;
}

}  // namespace nodeagent::bench
