@0x892e6cb90b9e5308;
# The in-sandbox protocol between the agent and a sandbox's init (PID 1).
# One message per SOCK_SEQPACKET datagram; file descriptors travel beside a
# message as SCM_RIGHTS.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("nodeagent::initproto");

struct Setup {
  # First message from the agent: how to build the sandbox's root.
  hostname @0 :Text;
  skeletonDir @1 :Text;     # host dir: the template's /etc, links and empty dirs (overlay lower)
  usrDir @2 :Text;          # host dir mounted as /usr (overlay lower), usually "/usr"
  diskBytes @3 :UInt64;     # size of the tmpfs holding the writable layers
  workDir @4 :Text;         # host dir for the tmpfs mount point (created by the agent)
}

struct Request {
  tag @0 :UInt64;           # echoed in the matching event
  union {
    spawn @1 :Spawn;
    signal @2 :SignalRequest;
  }
}

struct Spawn {
  argv @0 :List(Text);
  env @1 :List(Text);       # "KEY=VALUE"
  cwd @2 :Text;
  stdinOpen @3 :Bool;       # else /dev/null
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
  }
}

struct Spawned {
  pid @0 :Int32;            # in the sandbox's pid namespace
}

struct Exited {
  pid @0 :Int32;
  waitStatus @1 :Int32;     # as from waitpid
}
