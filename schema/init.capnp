@0x892e6cb90b9e5308;
# The in-sandbox protocol between the agent and a sandbox's init (PID 1).
# One message per SOCK_SEQPACKET datagram; file descriptors travel beside a
# message as SCM_RIGHTS.
#
# The first connection is a socketpair made at launch. init also listens on a
# socket at a host path only root can reach (fd 4, when the launcher gave one):
# an agent that restarted connects there, sends `resync`, and gets every
# process init still tracks, with copies of its pipes and pidfd. init keeps
# those copies until the agent `release`s the process, so output is never cut
# off (no SIGPIPE) while no agent is connected; the writer blocks instead.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("nodeagent::initproto");

struct Setup {
  # First message from the agent: how to build the sandbox's root.
  hostname @0 :Text;
  skeletonDir @1 :Text;     # host dir: the template's /etc, links and empty dirs (overlay lower)
  usrDir @2 :Text;          # host dir mounted as /usr (overlay lower), usually "/usr"
  diskBytes @3 :UInt64;     # size of the tmpfs holding the writable layers
  workDir @4 :Text;         # host dir for the tmpfs mount point (created by the agent)
  seccompFilter @5 :Data;   # BPF program (struct sock_filter[]) init installs on itself
  seed @6 :List(SeedEntry); # what init recreates in the upper layer (isolator/skeleton_seed.h)
}

struct SeedEntry {
  path @0 :Text;            # relative, parents listed before children; no "..", no leading "/"
  mode @1 :UInt32;          # permission bits
  directory @2 :Bool;
  content @3 :Data;         # files only
}

struct Request {
  tag @0 :UInt64;           # echoed in the matching event
  union {
    spawn @1 :Spawn;
    signal @2 :SignalRequest;
    resync @3 :Void;        # answered with one `adopted` per tracked process, then `resynced`
    closeStdin @4 :Int32;   # pid: init drops its copy of the stdin pipe (no reply)
    release @5 :Int32;      # pid of an exited process the agent is done with (no reply)
  }
}

struct Spawn {
  argv @0 :List(Text);
  env @1 :List(Text);       # "KEY=VALUE"
  cwd @2 :Text;
  stdinOpen @3 :Bool;       # else /dev/null
  timeoutAtMonoNs @4 :Int64; # the agent's kill deadline (CLOCK_MONOTONIC), kept for a resync
}

struct SignalRequest {
  pid @0 :Int32;
  signal @1 :Int32;
}

struct Event {
  tag @0 :UInt64;
  union {
    ready @1 :Void;         # setup done; init serves requests
    setupFailed @2 :Text;
    spawned @3 :Spawned;    # fds: [stdin write end (if stdinOpen), stdout read end, stderr read end, pidfd]
    spawnFailed @4 :Text;
    exited @5 :Exited;
    signalResult @6 :Int32; # 0 or errno
    adopted @7 :Adopted;    # fds: [stdin write end (if stdinOpen)], stdout, stderr, pidfd
    resynced @8 :Void;      # the last answer to `resync`
  }
}

struct Spawned {
  pid @0 :Int32;            # in the sandbox's pid namespace
}

struct Exited {
  pid @0 :Int32;
  waitStatus @1 :Int32;     # as from waitpid
  cpuNs @2 :UInt64;         # its CPU time, user + system, with its reaped children (wait4)
}

struct Adopted {
  pid @0 :Int32;
  argv @1 :List(Text);
  startedAtNs @2 :Int64;    # CLOCK_REALTIME at spawn
  timeoutAtMonoNs @3 :Int64;
  stdinOpen @4 :Bool;       # a stdin fd travels with this event
  exited @5 :Bool;
  waitStatus @6 :Int32;     # when exited
  cpuNs @7 :UInt64;         # when exited, as in Exited
}

# The zygote: nodeagent-init started with the argument "zygote" by the agent,
# as root in the host's namespaces (isolator/zygote.h). It starts each new
# init by fork, so a launch skips init's exec and start-up. One request per
# datagram on its socket (fd 3), one reply each; it exits when the agent
# closes the socket.

struct ZygoteRequest {
  newNetwork @0 :Bool;      # else the fds carry a network namespace for init
  hasListener @1 :Bool;
  # fds: [sync, control, stderr, network namespace (unless newNetwork), listener (if hasListener)]
}

struct ZygoteReply {
  union {
    started @0 :Int32;      # init's pid in the host's pid namespace; fds: [its pidfd]
    failed @1 :Text;
  }
}
