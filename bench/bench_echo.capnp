@0xadbad1dc0f0d3576;
# Benchmark-only interface: one call, one payload back.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("nodeagent::bench");

interface BenchEcho {
  echo @0 (data :Data) -> (data :Data);
}
