// Small process and file helpers for the fleet harness (tests/support/fleet.h):
// run a command to completion, optionally inside a network namespace, and
// read or write a whole file. No gtest dependency; errors throw
// std::runtime_error.
#pragma once

#include <sys/types.h>
#include <string>
#include <vector>

namespace nodeagent::testing {

struct CommandOutput {
  int exitCode = -1;  // exit status; 128 + signal if killed; -1 if it never ran
  std::string out;
  std::string err;
};

// Runs argv (argv[0] searched in PATH) with `input` on stdin and waits for it.
// With `netnsPath` (a /run/netns/NAME file) the child enters that network
// namespace before exec. After `timeoutMs` (0 = none) the child's process
// group is killed and "[timed out]" appended to err.
CommandOutput runProcess(const std::vector<std::string>& argv, const std::string& input = "",
                         const std::string& netnsPath = "", int timeoutMs = 120'000);

// runProcess that throws std::runtime_error (naming the command, its exit code
// and stderr) unless the command exits 0; returns its stdout.
std::string runOrThrow(const std::vector<std::string>& argv, const std::string& input = "",
                       const std::string& netnsPath = "");

// The directory with nodeagent, sbx and nodeagent-init: $NODEAGENT_BIN_DIR or "build/bin".
std::string defaultBinDir();

std::string readWholeFile(const std::string& path);  // "" if it cannot be read
void writeWholeFile(const std::string& path, const std::string& content, mode_t mode = 0644);

// Whether a process with this pid exists and is not a zombie.
bool processAlive(pid_t pid);

// Whether `name` is "<prefix><pid>..." for a pid that no longer exists (and is
// not ours): the leftover of a crashed run.
bool leftoverOfDeadProcess(const std::string& name, const std::string& prefix);

// SIGKILLs every process listed in cgroup.procs at or below `cgroupDir`, then
// removes the directories bottom-up (waiting up to ~2 s for the kernel to
// release them). Missing directories are fine.
void killAndRemoveCgroup(const std::string& cgroupDir);

// rm -rf that stays on one file system (never descends into a mount).
void removeTree(const std::string& path);

}  // namespace nodeagent::testing
