@0xf7a071699e42967b;
# Records the agent keeps in LMDB.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("nodeagent::state");

using Api = import "gateway.capnp";

struct SandboxRecord {
  id @0 :Text;
  spec @1 :Api.SandboxSpec;
  state @2 :Api.SandboxState;
  createdAtNs @3 :Int64;
  expiresAtNs @4 :Int64;
  endedAtNs @5 :Int64;
  endReason @6 :Text;
  initPid @7 :Int32;        # host pid of the sandbox's init
  uidBase @8 :UInt32;       # first host uid of the sandbox's range
  cgroupPath @9 :Text;      # relative to the agent's cgroup root
  pausedNs @10 :Int64;      # time spent paused, over the pauses that ended
  pausedAtNs @11 :Int64;    # when the current pause began (state PAUSED)
  netIndex @12 :UInt32;     # its address slot on the node's bridge; 0 = no veth
}

struct AuditEntry {
  seq @0 :UInt64;
  timeNs @1 :Int64;
  actor @2 :Text;           # who asked: "unix:uid=0", "tls:CN=gw-1", "agent"
  action @3 :Text;          # "create", "kill", "timeout", "config", ...
  sandboxId @4 :Text;
  tenant @5 :Text;
  detail @6 :Text;
}

struct BilledTotals {
  # How far the usage ledger has billed one sandbox: the sum of its records.
  # Written in the same transaction as each record, so the next record starts
  # exactly where the last committed one stopped, whatever crashed meanwhile.
  sandboxId @0 :Text;
  tenant @1 :Text;
  billedToNs @2 :Int64;       # unix time: the last record's periodEndNs
  cpuNs @3 :UInt64;
  wallRunningNs @4 :UInt64;
  wallPausedNs @5 :UInt64;
  memoryByteSeconds @6 :UInt64;
  egressBytes @7 :UInt64;
  rpcRequests @8 :UInt64;
  lastMemoryBytes @9 :UInt64; # the memory sample taken at billedToNs
  final @10 :Bool;            # the final record is written; nothing more is billed
}
