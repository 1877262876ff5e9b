@0xe2419f9451113b8b;
# Fleet gossip: SWIM/Lifeguard membership and scuttlebutt capacity exchange.
# One Packet is one datagram (packed, later sealed with the cluster keyring),
# kept under the configured packet budget (~1400 bytes). A packet carries any
# mix of the lists below; the probe messages ride with piggybacked gossip.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("nodeagent::wire");

struct Packet {
  sender @0 :UInt64;            # node id
  senderGeneration @1 :UInt64;  # the sender's boot generation
  pings @2 :List(Ping);
  pingReqs @3 :List(PingReq);
  acks @4 :List(Ack);
  nacks @5 :List(Nack);
  alives @6 :List(Alive);
  suspects @7 :List(Suspect);   # on a ping to a suspect: the buddy suspicion
  deads @8 :List(Dead);
  leaves @9 :List(Leave);
  digests @10 :List(Digest);
  deltas @11 :List(Delta);
  sync @12 :Bool;               # a state transfer (join, anti-entropy): merge, don't re-gossip
  wantSync @13 :Bool;           # a joiner asks its seed for the whole member and capacity view
}

struct Ping {
  seqNo @0 :UInt32;
  target @1 :UInt64;            # a ping for someone else (a reused address) is dropped
}

struct PingReq {                # "ping target for me and forward its ack"
  seqNo @0 :UInt32;             # the requester's sequence number
  target @1 :UInt64;
}

struct Ack {
  seqNo @0 :UInt32;
}

struct Nack {                   # a helper could not reach the target in time
  seqNo @0 :UInt32;
}

struct Alive {
  node @0 :UInt64;
  generation @1 :UInt64;
  incarnation @2 :UInt32;
  address @3 :Text;             # where the transport reaches it ("ip:port")
}

struct Suspect {
  node @0 :UInt64;
  generation @1 :UInt64;
  incarnation @2 :UInt32;
  from @3 :UInt64;
}

struct Dead {
  node @0 :UInt64;
  generation @1 :UInt64;
  incarnation @2 :UInt32;
  from @3 :UInt64;
}

struct Leave {                  # graceful: the node itself says it is going
  node @0 :UInt64;
  generation @1 :UInt64;
  incarnation @2 :UInt32;
}

struct DigestEntry {
  owner @0 :UInt64;
  generation @1 :UInt64;
  version @2 :UInt64;           # 0 with generation 0: "I have nothing"
}

struct Digest {
  # A sweep digest covers every owner in [rangeStart, rangeEnd] the sender
  # knows; the peer answers with deltas it has newer (including owners the
  # sender did not list) and a request digest for owners the sender has newer.
  # A request digest lists exactly the owners wanted.
  rangeStart @0 :UInt64;
  rangeEnd @1 :UInt64;
  request @2 :Bool;
  entries @3 :List(DigestEntry);
}

struct NodeState {
  freeCpuMillis @0 :UInt32;
  freeMemoryBytes @1 :UInt64;
  freeDiskBytes @2 :UInt64;
  freeSlots @3 :UInt32;
  warmTemplates @4 :List(Text);
  volumes @5 :List(Text);
  healthy @6 :Bool;
  draining @7 :Bool;
}

struct Delta {
  # Each owner's state is one record; (generation, version) orders them, so a
  # delta is the whole record and a receiver keeps only the newest: no gaps.
  owner @0 :UInt64;
  generation @1 :UInt64;
  version @2 :UInt64;
  state @3 :NodeState;
}
