// The seam between the gossip protocol and the world. The protocol never
// reads a clock, opens a socket or draws global randomness: the simulator
// implements Env over a discrete-event queue, the agent over its io_uring
// loop, the keyring and a UDP socket.
#pragma once

#include <stdint.h>

#include <kj/common.h>
#include <kj/string.h>

#include "cluster/messages.h"

namespace nodeagent::cluster {

class Env {
 public:
  virtual ~Env() noexcept(false) = default;

  virtual int64_t nowNs() = 0;

  // Best effort, like a datagram: the packet may be lost, late or reordered.
  // `packet` is only valid during the call. The transport seals it.
  virtual void send(NodeId to, kj::ArrayPtr<const kj::byte> packet) = 0;
  // A state transfer packet (Packet::sync: a joiner's view, push-pull and
  // anti-entropy answers). The agent sends these over its node-to-node RPC
  // connection instead of UDP; by default (the simulator) it is a datagram.
  virtual void sendBulk(NodeId to, kj::ArrayPtr<const kj::byte> packet) { send(to, packet); }
  // Joining: seeds are known by address only.
  virtual void sendToAddress(kj::StringPtr address, kj::ArrayPtr<const kj::byte> packet) = 0;

  // Call Node::wake() at (or soon after) `atNs`. Only the latest request
  // counts: the node keeps its own timers and asks for its earliest one.
  virtual void wakeAt(int64_t atNs) = 0;

  virtual uint64_t random() = 0;

  // A member announced where it can be reached. The transport maps NodeId to
  // an address; the simulator ignores it.
  virtual void learnAddress(NodeId node, kj::StringPtr address) {
    (void)node;
    (void)address;
  }
  // What learnAddress was told (for handing our view to a joiner).
  virtual kj::String addressOf(NodeId node) {
    (void)node;
    return kj::str();
  }
};

}  // namespace nodeagent::cluster
