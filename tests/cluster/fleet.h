// A small simulated fleet for protocol tests.
#pragma once

#include <gtest/gtest.h>

#include "cluster/codec.h"
#include "cluster/sim/simulator.h"

namespace nodeagent::cluster::testing {

constexpr int64_t kMs = 1'000'000;
constexpr int64_t kSec = 1'000'000'000;

inline NodeState testState(uint32_t slots = 8) {
  NodeState s;
  s.freeCpuMillis = 4000;
  s.freeMemoryBytes = uint64_t(8) << 30;
  s.freeDiskBytes = uint64_t(100) << 30;
  s.freeSlots = slots;
  return s;
}

struct Fleet {
  explicit Fleet(size_t n, Config c = Config::fastLan(), uint64_t seed = 1) : sim(seed, c) {
    sim.addConvergedFleet(n, testState());
  }

  const Member* view(size_t observer, size_t target) {
    return sim.node(observer).membership().members().find(sim.id(target));
  }
  // How many running nodes other than `target` see it in `state`.
  size_t seeing(size_t target, MemberState state) {
    size_t n = 0;
    for (size_t i = 0; i < sim.size(); ++i) {
      if (i == target || !sim.up(i)) continue;
      const Member* m = view(i, target);
      if (m != nullptr && m->state == state) ++n;
    }
    return n;
  }
  size_t others(size_t target) {
    size_t n = 0;
    for (size_t i = 0; i < sim.size(); ++i) n += i != target && sim.up(i);
    return n;
  }
  void inject(size_t to, Packet p) { sim.node(to).receive(encodePacket(p)); }
  void run(int64_t forNs) { sim.runUntil(sim.now() + forNs); }

  sim::Simulator sim;
};

}  // namespace nodeagent::cluster::testing
