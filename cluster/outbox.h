// How membership and dissemination send: they hand over a Packet; the node
// stamps the sender, piggybacks queued gossip into the space left, encodes
// it and passes the bytes to Env::send.
#pragma once

#include "cluster/messages.h"

namespace nodeagent::cluster {

class Outbox {
 public:
  virtual ~Outbox() noexcept(false) = default;
  virtual void send(NodeId to, Packet packet) = 0;
  virtual void sendToAddress(kj::StringPtr address, Packet packet) = 0;
  // Several packets' worth of state (a join, an anti-entropy slice): the
  // outbox splits what is added into packets within the budget.
  class Stream {
   public:
    virtual ~Stream() noexcept(false) = default;
    virtual void add(Alive m) = 0;
    virtual void add(Suspect m) = 0;
    virtual void add(Dead m) = 0;
    virtual void add(Leave m) = 0;
    virtual void add(Delta m) = 0;
  };
};

}  // namespace nodeagent::cluster
