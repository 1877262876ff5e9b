@0x8d03e06fc48f361a;
# Test-only interface: Cap'n Proto RPC over the io_uring event port.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("nodeagent::loop::test");

interface Echo {
  echo @0 (text :Text) -> (text :Text);
}
