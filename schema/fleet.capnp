@0xc4d1a7e35b0f9a21;
# Node to node, over Cap'n Proto RPC on TCP with mutual TLS (cluster.bind):
# gossip state transfers that are too big or too important for a datagram,
# and placement's reserve / create.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("nodeagent::fleet");

using Api = import "gateway.capnp";

struct Reply {
  granted @0 :Bool;
  reservation @1 :UInt64;
  # The node's free capacity after deciding: a refused placer folds it into
  # its view instead of waiting for gossip.
  freeCpuMillis @2 :UInt32;
  freeMemoryBytes @3 :UInt64;
  freeSlots @4 :UInt32;
}

interface Peer {
  deliver @0 (packets :List(Data));
  # Gossip packets sealed with the keyring (as datagrams are): a joiner's
  # state transfer, push-pull and anti-entropy answers.

  reserve @1 (cpuMillis :UInt32, memoryBytes :UInt64, slots :UInt32, leaseMillis :UInt32)
      -> (reply :Reply);
  # Admits the request against this node's capacity ledger, or refuses it.

  release @2 (reservation :UInt64);
  # Gives back a reservation that will not be used.

  createReserved @3 (reservation :UInt64, spec :Api.SandboxSpec, actor :Text)
      -> (sandbox :Api.Sandbox, id :Text);
  # Creates the sandbox under a granted reservation (which it commits).
  # `unavailable` when the reservation lapsed. `actor` is the gateway's
  # identity on the placing node, for this node's audit log.
}
