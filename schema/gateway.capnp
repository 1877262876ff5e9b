@0xf8d5b07eb826605a;
# The gateway API: what a control-plane gateway calls on a node.
#
# Errors: every failure is a Cap'n Proto exception whose description starts
# with "nodeagent.<code>: " where <code> is one of ErrorCode's names (e.g.
# "nodeagent.notFound: sandbox sbx-1234 does not exist"). Clients parse the
# code with nodeagent/api_error.h; the rest of the text is for people.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("nodeagent::api");

enum ErrorCode {
  internal @0;         # a bug or an unexpected host failure
  invalidArgument @1;  # malformed or out-of-range request field
  unknownTemplate @2;
  notFound @3;         # no such sandbox, process or file
  invalidPath @4;      # path escapes the sandbox root, or is not what the call needs
  limitExceeded @5;    # a size, count or resource limit would be exceeded
  alreadyExists @6;
  notRunning @7;       # the sandbox or process has ended
  unavailable @8;      # the node is draining or overloaded
}

struct KeyValue {
  key @0 :Text;
  value @1 :Text;
}

enum NetworkMode {
  off @0;          # loopback only
  restricted @1;   # only SandboxSpec.allow, minus the always-denied set
  open @2;         # everything but the always-denied set
}
# Always denied unless the node's operator allows it: private (RFC 1918),
# shared (100.64/10), link-local and cloud metadata addresses, loopback of
# the host, multicast and reserved ranges, the host's own addresses, other
# sandboxes, and the IPv4-mapped, NAT64, 6to4 and Teredo forms of all these.

enum TimeoutAction {
  kill @0;         # end the sandbox
  pause @1;        # freeze it; it stays until resumed or killed
}

struct SandboxSpec {
  # Zero / empty fields take the template's defaults.
  tenant @0 :Text;
  template @1 :Text;
  memoryBytes @2 :UInt64;
  cpuMillis @3 :UInt32;       # burst CPU, thousandths of a core (1000 = one vCPU)
  pidsMax @4 :UInt32;
  diskBytes @5 :UInt64;       # size of the writable layer
  network @6 :NetworkMode;
  timeoutSeconds @7 :UInt32;  # sandbox lifetime; see onTimeout
  env @8 :List(KeyValue);     # default environment of every exec
  metadata @9 :List(KeyValue);
  cpuSustainedMillis @10 :UInt32;
  # The share the sandbox may use for long. Its quota is cpuMillis while it
  # has credit, the sustained share once the credit is spent, and cpuMillis
  # again once it has saved a tenth of its bucket. Credit accrues at this
  # rate less what the sandbox uses, up to what lasts cpuBurstSeconds at the
  # full burst. Not above cpuMillis.
  onTimeout @11 :TimeoutAction;  # what expiry does; setTimeout re-arms it
  cpuCapMillis @12 :UInt64;   # circuit breaker: CPU time (metered, ms) the sandbox may
                              # use in all; 0 = no cap
  onCpuCap @13 :TimeoutAction;  # what reaching it does: kill ("cpu-cap") or pause
  requestCap @14 :UInt64;     # circuit breaker: API requests on the sandbox (exec,
                              # files, ...) before they fail with limitExceeded;
                              # kill, info and usage are never refused. 0 = no cap
  allow @15 :List(Text);
  # network `restricted`: what the sandbox may reach. Entries: CIDR
  # ("198.51.100.0/24", "2001:db8::/32", one address), CIDR:PORT
  # ("198.51.100.7:443", "[2001:db8::/32]:443"), HOSTNAME ("api.example.com"),
  # *.DOMAIN ("*.example.com": names below it). Names are allowed through
  # the node's DNS: their answers' addresses become reachable for the TTL.
  egressMbps @16 :UInt32;     # egress bandwidth cap; 0 = the template's
  egressByteCap @17 :UInt64;  # circuit breaker: bytes the sandbox may send in
                              # all; beyond it every packet out is dropped. 0 = none
  cpuBurstSeconds @18 :UInt32;  # how long a full bucket of credit lasts at the
                              # burst (see cpuSustainedMillis); 0 = the template's
}

struct NetworkSettings {
  # A sandbox's network, as setNetwork replaces it (all fields at once).
  mode @0 :NetworkMode;
  allow @1 :List(Text);
  egressMbps @2 :UInt32;      # 0 = the template's
  egressByteCap @3 :UInt64;   # 0 = none
}

struct NetworkStatus {
  settings @0 :NetworkSettings;   # as in effect (defaults filled in)
  addresses @1 :List(Text);       # the sandbox's own, empty when off
  gateways @2 :List(Text);        # and its resolver
  egressBytes @3 :UInt64;         # sent out of the sandbox (not loopback)
  egressPackets @4 :UInt64;
  deniedPackets @5 :UInt64;
  deniedCalls @6 :UInt64;         # connect/sendmsg refused
  cutOff @7 :Bool;                # the egress-byte cap is spent
}

struct SandboxEvent {
  # An entry of the node's audit log about one sandbox: lifecycle actions
  # ("create", "pause", "end", ...) and refusals ("egress-denied",
  # "dns-refused", "egress-cap").
  seq @0 :UInt64;
  timeNs @1 :Int64;           # unix time
  actor @2 :Text;
  action @3 :Text;
  detail @4 :Text;
}

enum SandboxState {
  creating @0;
  running @1;
  paused @2;
  stopped @3;
}

struct SandboxInfo {
  id @0 :Text;
  spec @1 :SandboxSpec;       # with defaults filled in
  state @2 :SandboxState;
  createdAtNs @3 :Int64;      # unix time
  expiresAtNs @4 :Int64;
  endedAtNs @5 :Int64;        # 0 while alive
  endReason @6 :Text;         # "killed", "timeout", "init-exited", ...
}

struct Usage {
  cpuUserNs @0 :UInt64;
  cpuSystemNs @1 :UInt64;
  wallRunningNs @2 :UInt64;
  memoryCurrentBytes @3 :UInt64;
  memoryPeakBytes @4 :UInt64;
  pidsCurrent @5 :UInt32;
  rpcRequests @6 :UInt64;
  execs @7 :UInt64;
  wallPausedNs @8 :UInt64;    # time frozen; not part of wallRunningNs
  cpuMeteredNs @9 :UInt64;    # on-CPU time measured in the kernel by the eBPF
                              # sched_switch meter (0 where it cannot run)
  egressBytes @10 :UInt64;    # bytes the sandbox sent off the host (0 without a network)
  cpuQuotaMillis @11 :UInt32; # its CPU quota now: spec.cpuMillis while it has credit,
                              # else spec.cpuSustainedMillis
  cpuCreditNs @12 :Int64;     # CPU time it has saved up above the sustained share
                              # (negative: a burst's overshoot being repaid)
}

struct NodeInfo {
  hostname @0 :Text;
  version @1 :Text;
  sandboxes @2 :UInt32;
  templates @3 :List(Text);
  cgroupMode @4 :Text;        # "v2" or "hybrid"
  maxMessageBytes @5 :UInt64;
  draining @6 :Bool;
  warmPools @7 :List(WarmPool);   # one per template with a warm pool
  publicKey @8 :Data;         # the node's Ed25519 key (32 bytes): it signs usage records
  nodeId @9 :Text;            # fixed when the node's store was created; in every record
  fleetNode @10 :Text;        # its id in the fleet (16 hex digits); empty: not a fleet member
  fleetAddress @11 :Text;     # where the fleet reaches it (cluster.advertise)
}

struct WarmPool {
  # Pre-built sandboxes of a template, owned by no tenant until a create
  # claims one; a claimed sandbox is never returned to the pool.
  template @0 :Text;
  target @1 :UInt32;          # how many idle ones the node keeps
  idle @2 :UInt32;            # ready to be claimed now
  claims @3 :UInt64;          # creates served from the pool since the agent started
}

interface Node {
  create @0 (spec :SandboxSpec) -> (sandbox :Sandbox, id :Text);
  open @1 (id :Text) -> (sandbox :Sandbox);   # reattach by id
  list @2 (tenant :Text) -> (sandboxes :List(SandboxInfo));  # empty tenant = all
  info @3 () -> (info :NodeInfo);
  setTenantWeight @4 (tenant :Text, weight :UInt32);
  # The tenant's CPU weight (1-10000, default 100) against other tenants,
  # however many sandboxes each runs. An admin action: audited.
  drain @5 (draining :Bool);
  # For rolling upgrades: while draining, create is refused with
  # `unavailable`; live sandboxes keep running and serving. Audited.
  usageLedger @6 (afterSeq :UInt64, limit :UInt32)
      -> (records :List(SignedUsageRecord), nextCursor :UInt64);
  # Usage records with seq > afterSeq, oldest first, at most `limit` (0 or
  # over 1000: 1000). Pass nextCursor back to read on: every record is read
  # exactly once, across agent restarts (seq is durable, gap-free and never
  # reused). Verify each with NodeInfo.publicKey before billing it.
  setTenantRequestCap @7 (tenant :Text, cap :UInt64);
  # Circuit breaker: API requests (exec, files, ...) the tenant's sandboxes on
  # this node may make in all, counted across all of them and across agent
  # restarts; beyond it they fail with limitExceeded. Kill, info and usage
  # are never refused. 0 = back to the node's default (limits.tenantRequestCap
  # in the config; 0 there = no cap). Raise it to let a capped tenant on. Audited.

  # The fleet (config `cluster`; without it these fail with `unavailable`).
  place @8 (spec :SandboxSpec) -> (sandbox :Sandbox, id :Text, placement :Placement);
  # Creates the sandbox on whichever node of the fleet has room, this one or
  # another: the gossip view picks candidates, the chosen node admits it
  # against its own capacity ledger (never beyond it) and creates it. The
  # returned capability reaches that node through this one, so the first
  # exec can be pipelined on it. `unavailable` when no node has room.
  members @9 () -> (members :List(FleetMember));       # this node's membership view
  capacity @10 () -> (nodes :List(FleetCapacity));     # its gossip view of free capacity
  gossipKeys @11 (change :GossipKeyChange) -> (keyIds :List(Text), primary :Text);
  # The keyring that seals gossip datagrams. Rotation, node by node: add the
  # new key everywhere, use it everywhere, remove the old one everywhere;
  # nodes on either key interoperate throughout. Kept in the state dir, so a
  # restart keeps it. Audited (key ids only).
}

struct Placement {
  node @0 :Text;          # the fleet member that holds the sandbox (16 hex digits)
  address @1 :Text;       # its gossip/RPC address
  attempts @2 :UInt32;    # reservations asked for (1 = the first candidate took it)
  decisionNs @3 :UInt64;  # from the call to a granted reservation (the create follows)
}

struct FleetMember {
  node @0 :Text;          # 16 hex digits
  address @1 :Text;
  state @2 :Text;         # alive, suspect, dead, left
  generation @3 :UInt64;  # the member's boot (a restart starts a new one)
  incarnation @4 :UInt32;
  self @5 :Bool;
}

struct FleetCapacity {
  node @0 :Text;
  version @1 :UInt64;     # the owner's version of this record (within its generation)
  freeCpuMillis @2 :UInt32;
  freeMemoryBytes @3 :UInt64;
  freeDiskBytes @4 :UInt64;
  freeSlots @5 :UInt32;
  warmTemplates @6 :List(Text);
  healthy @7 :Bool;
  draining @8 :Bool;
}

struct GossipKeyChange {
  union {
    list @0 :Void;
    add @1 :Text;         # 64 hex digits
    use @2 :Text;         # a key id (16 hex digits) in the ring: it seals from now on
    remove @3 :Text;      # a key id; not the primary
  }
}

struct UsageRecord {
  # What one sandbox used over one period: the deltas since its previous
  # record, so a sandbox's records add up to its whole usage. A record is
  # written at every ledger interval (config ledger.intervalSeconds), at
  # pause and resume, and one last time (final) when the sandbox ends.
  seq @0 :UInt64;             # the node's ledger position: 1, 2, 3, ... across sandboxes
  nodeId @1 :Text;
  sandboxId @2 :Text;
  tenant @3 :Text;
  periodStartNs @4 :Int64;    # unix time; the previous record's periodEndNs (or creation)
  periodEndNs @5 :Int64;
  cpuNs @6 :UInt64;           # on-CPU time: the eBPF meter's (cgroup user+system without it)
  wallRunningNs @7 :UInt64;
  wallPausedNs @8 :UInt64;
  memoryByteSeconds @9 :UInt64;  # integral of memory in use (sampled) over the period,
                                 # in byte-seconds (divide by 2^30 for GiB-seconds)
  egressBytes @10 :UInt64;
  rpcRequests @11 :UInt64;    # API requests on the sandbox (refused ones are not counted)
  cause @12 :Text;            # "interval", "pause", "resume", "end", "agent-stop"
  final @13 :Bool;            # the sandbox has ended; no record of it follows
  endReason @14 :Text;        # when final: "killed", "timeout", "lost-on-restart", ...
}

struct SignedUsageRecord {
  record @0 :Data;     # a UsageRecord as one unpacked single-segment message
                       # (capnp::messageToFlatArray): the bytes signed
  signature @1 :Data;  # Ed25519 (libsodium crypto_sign_detached) over exactly
                       # `record`, by the key in NodeInfo.publicKey
}

struct ExecRequest {
  argv @0 :List(Text);
  env @1 :List(KeyValue);     # added to the sandbox's env
  cwd @2 :Text;               # default "/"
  stdin @3 :Bool;             # keep stdin open for Process.writeStdin; else /dev/null
  timeoutSeconds @4 :UInt32;  # 0 = none beyond the sandbox's own
}

enum ExitReason {
  exited @0;
  signaled @1;
  oom @2;
  timeout @3;
  killed @4;       # the sandbox was killed under it
}

struct ExitStatus {
  reason @0 :ExitReason;
  code @1 :Int32;             # exit code when exited
  signal @2 :Int32;           # signal number when signaled / killed
  cpuNs @3 :UInt64;           # CPU time it used (user + system, with the children it
                              # waited for); 0 when killed with its sandbox
}

interface OutputSink {
  # Output of a process, in order, per stream, with flow control.
  stdout @0 (data :Data) -> stream;
  stderr @1 (data :Data) -> stream;
  done @2 ();
  # After the last output. The process's wait() answers only once done()
  # has returned, so a sink that returns from done() after writing out
  # everything it received never loses the tail of the output.
}

interface Process {
  wait @0 () -> (status :ExitStatus);  # resolves after all output was delivered
  signal @1 (signal :Int32);
  writeStdin @2 (data :Data) -> stream;
  closeStdin @3 ();
  pid @4 () -> (pid :UInt32);          # pid inside the sandbox
  attach @5 (output :OutputSink, stdoutOffset :UInt64, stderrOffset :UInt64)
      -> (stdoutOffset :UInt64, stderrOffset :UInt64);
  # Adds a sink: replays each stream from a byte offset, then follows the live
  # output. The agent keeps the last 1 MiB of each stream; an older offset
  # starts at the oldest byte still held, and the results say where replay
  # began. Resolves once the sink has caught up; from then on wait() also
  # waits for this sink's done().
}

struct ProcessInfo {
  pid @0 :UInt32;             # inside the sandbox
  argv @1 :List(Text);
  startedAtNs @2 :Int64;      # unix time
  running @3 :Bool;
  status @4 :ExitStatus;      # when not running
  endedAtNs @5 :Int64;        # 0 while running
  stdoutBytes @6 :UInt64;     # output so far: the end offsets for attach
  stderrBytes @7 :UInt64;
}

struct FileInfo {
  name @0 :Text;
  type @1 :Type;
  size @2 :UInt64;
  mode @3 :UInt32;            # permission bits
  mtimeNs @4 :Int64;
  enum Type {
    file @0;
    directory @1;
    symlink @2;
    other @3;
  }
}

interface ByteSink {
  write @0 (data :Data) -> stream;
  done @1 ();                 # all data written; commit
}

interface Files {
  # Paths are resolved inside the sandbox root; nothing can escape it.
  write @0 (path :Text, mode :UInt32) -> (sink :ByteSink);  # replaces the file at done()
  read @1 (path :Text, sink :ByteSink) -> (size :UInt64);   # streams the file into sink
  list @2 (path :Text) -> (entries :List(FileInfo), truncated :Bool);  # at most 10,000 entries
  stat @3 (path :Text) -> (info :FileInfo);
  mkdir @4 (path :Text, parents :Bool);
  remove @5 (path :Text, recursive :Bool);
}

interface Sandbox {
  exec @0 (request :ExecRequest, output :OutputSink) -> (process :Process);
  # A process outlives its Process capability; it runs until it exits or the
  # sandbox ends. With no output sink its output is only kept (last 1 MiB per
  # stream, read at a bounded rate) for Process.attach.
  files @1 () -> (files :Files);
  kill @2 ();
  setTimeout @3 (seconds :UInt32);    # from now
  info @4 () -> (info :SandboxInfo);
  usage @5 () -> (usage :Usage);
  pause @6 ();    # freezes every process; files still work, exec is refused
  resume @7 ();   # a lifetime that ran out meanwhile starts again (timeoutSeconds)
  processes @8 () -> (processes :List(ProcessInfo));
  # Processes started by exec: the running ones and the last 64 that ended.
  process @9 (pid :UInt32) -> (process :Process);  # a running one, again
  setNetwork @10 (settings :NetworkSettings) -> (status :NetworkStatus);
  # Live: the new policy applies to every connect/send from then on
  # (connections already open to a destination no longer allowed by name
  # or CIDR stay up; always-denied and off take effect on every packet).
  # A change is audited.
  network @11 () -> (status :NetworkStatus);
  events @12 (afterSeq :UInt64, limit :UInt32) -> (events :List(SandboxEvent));
  # Its audit entries with seq > afterSeq, oldest first, at most `limit`
  # (0 = 100, at most 1000).
}
