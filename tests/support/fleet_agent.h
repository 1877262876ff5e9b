// One real nodeagent process of a fleet, running inside its own network
// namespace, with its own temporary directory, cgroup subtree and uid range
// (as separate hosts would have). The sbx CLI reaches it over a unix socket
// from the caller's namespace.
//
//   <dir> = /tmp/naflt-agent-<pid>-<i>-XXXXXX
//     config.json   the agent's config (below)
//     state/        --state-dir
//     agent.sock    --listen unix:<dir>/agent.sock
//     agent.log     stdout and stderr, appended across restarts
//     gossip.keys   the gossip keyring, one hex key a line, first = primary
//
// config.json:
//   {"cgroupRoot": "nodeagent-flt-<pid>-<seq>", "uidBase": ..., "maxSandboxes": ...,
//    "network": {"enabled": false},
//    "tls": {"certFile": ..., "keyFile": ..., "caFile": ...},          (clusterConfig only)
//    "cluster": {"enabled": true, "bind": "<address>:<port>",          (clusterConfig only)
//                "seeds": ["<every other node>:<port>", ...], "keyFile": "<dir>/gossip.keys",
//                "capacity": {"cpuMillis": C, "memoryBytes": M, "slots": S}}
//    <extraConfig>}
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "support/fleet_process.h"

namespace nodeagent::testing {

struct FleetCapacity {
  uint32_t cpuMillis = 4000;
  uint64_t memoryBytes = uint64_t(8) << 30;
  uint32_t slots = 16;
};

class FleetAgent {
 public:
  struct Spec {
    int index = 0;
    std::string netnsPath;           // the namespace the agent runs in
    std::string address;             // its address there
    std::vector<std::string> seeds;  // "ADDR:PORT" of the other nodes
    uint16_t gossipPort = 7946;
    std::string certFile, keyFile, caFile;
    std::vector<std::string> gossipKeys;  // first = primary
    bool clusterConfig = true;            // write the "tls" and "cluster" blocks
    FleetCapacity capacity;
    uint32_t maxSandboxes = 64;
    uint32_t uidRangeSize = 65536;
    std::string extraConfig;             // JSON members spliced at the top level, starting with ","
    std::vector<std::string> extraArgs;  // appended to the agent's command line
    std::string binDir;                  // empty: defaultBinDir()
  };

  // Writes the directory and config; does not start the agent. Throws
  // std::runtime_error (e.g. the nodeagent binary is missing).
  explicit FleetAgent(Spec spec);
  // Kills the sandboxes left running (via sbx), stops the agent (SIGTERM,
  // then SIGKILL after 10 s), kills whatever is left in its cgroups (the
  // sandboxes of an agent that was kill -9'd), removes its cgroups, its
  // pinned BPF programs and its directory.
  ~FleetAgent();
  FleetAgent(const FleetAgent&) = delete;
  FleetAgent& operator=(const FleetAgent&) = delete;

  // Starts the agent inside its namespace. Throws if it is already running.
  // The agent gets PR_SET_PDEATHSIG(SIGKILL), which fires when the *thread*
  // that forked it ends: call start()/restart() from a thread that outlives
  // the agent (the test's main thread), not from a short-lived std::async.
  void start();
  // SIGKILL, then reaps it. Its sandboxes keep running (a restart adopts them).
  void kill9();
  // SIGTERM and waits (SIGKILL after `timeoutMs`); returns the wait status.
  int terminate(int timeoutMs = 10'000);
  // terminate() if running, then start().
  void restart();
  // Whether the process is running (reaps it if it exited).
  bool running();
  pid_t pid() const { return pid_; }

  // Polls `sbx ls` until it answers; false if the agent exits or `timeoutMs` passes.
  bool waitReady(int timeoutMs = 20'000);
  // Runs `<binDir>/sbx --connect unix:<dir>/agent.sock ARGS...` in the caller's namespace.
  CommandOutput sbx(const std::vector<std::string>& args, const std::string& input = "") const;
  // Everything the agent wrote to stdout and stderr.
  std::string log() const;

  // Rewrites the gossip keyring file (first = primary), e.g. to rotate keys.
  void writeGossipKeys(const std::vector<std::string>& keys);

  int index() const { return spec_.index; }
  const std::string& address() const { return spec_.address; }
  const std::string& netnsPath() const { return spec_.netnsPath; }
  const std::string& dir() const { return dir_; }
  std::string socketPath() const { return dir_ + "/agent.sock"; }
  std::string target() const { return "unix:" + socketPath(); }  // for sbx --connect
  std::string configPath() const { return dir_ + "/config.json"; }
  std::string gossipKeyFile() const { return dir_ + "/gossip.keys"; }
  const std::string& cgroupRoot() const { return cgroupRoot_; }
  const std::string& binDir() const { return binDir_; }
  uint32_t uidBase() const { return uidBase_; }

  // Removes cgroups, BPF pins and directories of fleet agents whose test
  // process is gone (a crashed run), killing their sandboxes.
  static void removeLeftovers();

 private:
  std::string configJson() const;
  void cleanUp();

  Spec spec_;
  std::string binDir_;
  std::string dir_;
  std::string cgroupRoot_;
  uint32_t uidBase_ = 0;
  pid_t pid_ = -1;
};

}  // namespace nodeagent::testing
