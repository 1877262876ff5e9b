@0xb393fab1dc09739c;
# The agent's configuration. Every field has an embedded default; the optional
# config file is JSON with any subset of these fields (capnp JSON names).

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("nodeagent::config");

struct Config {
  stateDir @0 :Text = "/var/lib/nodeagent";
  listen @1 :List(Text) = ["unix:/run/nodeagent.sock"];
  tls @2 :Tls;
  cgroupRoot @3 :Text = "nodeagent";    # below each cgroup mount
  uidBase @4 :UInt32 = 200000000;       # first host uid given to sandboxes
  uidRangeSize @5 :UInt32 = 65536;      # uids per sandbox
  maxSandboxes @6 :UInt32 = 1000;
  maxMessageBytes @7 :UInt64 = 8388608; # RPC message limit, both ends
  logLevel @8 :Text = "info";           # debug, info, warn, error
  initPath @9 :Text;                    # the sandbox init binary; default: beside nodeagent
  templates @10 :List(Template);        # empty = the built-in templates
  maxFileBytes @11 :UInt64 = 4294967296;
  busyPollMicros @12 :UInt32 = 50;
  agentCgroup @13 :Bool = true;
  # Run the agent in "<cgroupRoot>/agent" with a CPU weight of 1000 (and, on
  # pure v2, memory.min of 256 MiB), outside every sandbox's cgroup. Turn off
  # where a supervisor (systemd with Delegate=yes) places the agent itself.
  # Before the event loop sleeps it keeps reaping completions for this long.
  # Waking an idle thread costs tens of microseconds (more on VMs), so a short
  # spin after activity cuts request latency; an idle agent never spins.

  cgroupFavorDynmods @18 :Bool = true;
  # Set the cgroup2 mount option "favordynmods" at start (keeping the mount's
  # other options). Without it every move of a process between cgroups (each
  # launch and warm claim) waits for an RCU grace period: 10-20 ms on an idle
  # host. The cost is a memory barrier per fork and exit, host-wide. The option
  # outlives the agent; turn this off to leave the host's mount as it is.
  spareNetns @19 :UInt32 = 4;
  # Network namespaces kept ready for launches (isolator/netns_pool.h): making
  # one takes ~0.6 ms, the largest single step of a cold create. 0: each
  # launch makes its own.
  tenantCgroupLingerSeconds @21 :UInt32 = 60;
  # A tenant's cgroup dirs stay this long after its last sandbox ended, so that
  # its next create does not make them again (a mkdir per hierarchy and a
  # dozen more calls, ~0.3 ms here). 0: they go with the last sandbox.
  initZygote @20 :Bool = true;
  # Start each sandbox's init by fork from a zygote (isolator/zygote.h), one
  # nodeagent-init process exec'd at start, instead of an exec per launch:
  # ~0.7 ms less per cold create here. Every init then shares the zygote's
  # address layout. Off: each launch execs initPath anew.

  ledger @14 :Ledger;
  limits @15 :Limits;
  network @16 :Network;
  cluster @17 :Cluster;

  struct Cluster {
    # Fleet membership (SWIM with Lifeguard), capacity gossip and placement.
    # Gossip datagrams go over UDP on `bind`, sealed with the keyring; state
    # transfers and placement go over Cap'n Proto RPC on TCP on the same
    # address, with mutual TLS (the `tls` files; a peer's certificate must
    # name its address as an IP subjectAltName).
    enabled @0 :Bool = false;
    bind @1 :Text = "0.0.0.0:7946";
    advertise @2 :Text;           # "ip:port" peers use; default: bind (then not 0.0.0.0)
    seeds @3 :List(Text);         # "ip:port" of members to join through (retried until one answers)
    keyFile @4 :Text;             # the keyring: hex keys one per line, the first seals;
                                  # default <stateDir>/gossip.keys; changes via Node.gossipKeys
    capacity @5 :Capacity;        # what this node offers; placement admits against it
    profile @6 :Text = "fast-lan";  # timing profile: fast-lan, or memberlist (its LAN defaults)
    leaseMillis @7 :UInt32 = 5000;  # a placement's reservation lapses unless the create follows
    tuning @8 :Tuning;            # overrides of the profile, field by field

    struct Tuning {
      # Zero: the profile's value (cluster/config.cc says why each is what it is).
      probeIntervalMillis @0 :UInt32;
      probeTimeoutMillis @1 :UInt32;
      indirectChecks @2 :UInt32;
      suspicionMult @3 :Float64;
      suspicionMaxTimeoutMult @4 :Float64;
      suspicionConfirmations @5 :UInt32;
      awarenessMaxMultiplier @6 :UInt32;
      gossipIntervalMillis @7 :UInt32;
      gossipNodes @8 :UInt32;
      retransmitMult @9 :UInt32;
      pushPullIntervalMillis @10 :UInt32;
      digestIntervalMillis @11 :UInt32;
      gossipToTheDeadMillis @12 :UInt32;
      reconnectIntervalMillis @13 :UInt32;
      reapMillis @14 :UInt32;
      packetBudgetBytes @15 :UInt32;
    }

    struct Capacity {
      # Zero: the host's. A sandbox needs its sustained CPU share, its memory
      # limit and one slot.
      cpuMillis @0 :UInt32;       # default: 1000 per CPU
      memoryBytes @1 :UInt64;     # default: MemTotal less 1 GiB for the host
      slots @2 :UInt32;           # default: maxSandboxes
    }
  }

  struct Network {
    # Sandboxes with network `restricted` or `open` get a veth on this bridge,
    # an address from the pools, and source NAT out of the host. The gateway
    # (first address of each pool) is the host's side and the agent's DNS
    # server (port 53, as resolv.conf cannot name another).
    bridge @0 :Text = "nabr0";           # at most 9 characters; veths are "<bridge>v<n>"
    ipv4Pool @1 :Text = "10.250.0.0/16";
    ipv6Pool @2 :Text = "fd6e:6100::/64";  # empty: IPv4 only
    dnsUpstreams @3 :List(Text) = [];     # "ADDR" or "ADDR:PORT" ("[V6]:PORT");
    # empty: the nameservers of the host's /etc/resolv.conf
    dnsMinTtlSeconds @4 :UInt32 = 30;     # a resolved address stays allowed at least this long
    dnsMaxAddressesPerName @5 :UInt32 = 16;
    operatorAllowed @6 :List(Text) = [];  # CIDRs exempt from the always-denied set
    extraDenied @7 :List(Text) = [];      # CIDRs denied on top of the built-in set
    nat @8 :Bool = true;                  # masquerade the pools out of the host (nftables)
    enabled @9 :Bool = true;
    # false: every sandbox is `off` and the agent sets up no bridge, NAT,
    # DNS or egress programs (hosts without them).
  }

  struct Tls {
    certFile @0 :Text;
    keyFile @1 :Text;
    caFile @2 :Text;        # gateways' client certificates must chain to it
  }

  struct Ledger {
    intervalSeconds @0 :UInt32 = 60;
    # Every live sandbox gets a usage record at least this often (besides
    # pause, resume and end). Memory is sampled for the GiB-second integral
    # every 5 s or more often (the interval divided evenly).
  }

  struct Limits {
    tenantRequestCap @0 :UInt64 = 0;
    # API requests per tenant on this node, across its sandboxes and agent
    # restarts, for tenants without a cap of their own (Node.setTenantRequestCap);
    # 0 = none.
  }
}

struct Template {
  name @0 :Text;
  usrDir @1 :Text = "/usr";
  memoryBytes @2 :UInt64 = 536870912;
  cpuMillis @3 :UInt32 = 1000;
  pidsMax @4 :UInt32 = 256;
  diskBytes @5 :UInt64 = 1073741824;
  timeoutSeconds @6 :UInt32 = 300;
  cpuSustainedMillis @7 :UInt32 = 250;  # with cpuMillis as the burst (code runtime: 1 / 0.25)
  warmPool @8 :UInt32 = 0;
  # Idle pre-built sandboxes kept for this template, refilled in the
  # background. A create whose disk size is the template's claims one.
  egressMbps @9 :UInt32 = 100;          # egress bandwidth cap of a networked sandbox
  cpuBurstSeconds @10 :UInt32 = 30;
  # How long a sandbox that has saved up its full bucket of CPU credit may
  # run at cpuMillis before it drops to cpuSustainedMillis (0: it never
  # bursts above the sustained share).
}
