#include "cluster/broadcast_queue.h"

#include <algorithm>

#include "cluster/codec.h"

namespace nodeagent::cluster {
namespace {

template <typename T>
bool tryAdd(kj::Vector<T>& list, T msg, size_t& budget) {
  size_t need = estimateBytes(msg) + (list.empty() ? kListOverheadBytes : 0);
  if (need > budget) return false;
  budget -= need;
  list.add(kj::mv(msg));
  return true;
}

}  // namespace

void BroadcastQueue::replace(Item item) {
  bool capacity = item.kind == kCapacity;
  item.seq = nextSeq_++;
  for (auto& i : items_) {
    if (i.node == item.node && (i.kind == kCapacity) == capacity) {
      i = item;
      return;
    }
  }
  items_.push_back(item);
}

void BroadcastQueue::dropCapacity(NodeId owner) {
  items_.erase(
      std::remove_if(items_.begin(), items_.end(),
                     [&](const Item& i) { return i.kind == kCapacity && i.node == owner; }),
      items_.end());
}

void BroadcastQueue::fill(Packet& packet, size_t& budget, uint32_t limit, Sources& sources) {
  if (items_.empty()) return;
  if (limit == 0) {  // retransmission switched off
    items_.clear();
    return;
  }
  std::sort(items_.begin(), items_.end(), [](const Item& a, const Item& b) {
    return a.transmits != b.transmits ? a.transmits < b.transmits : a.seq > b.seq;
  });
  bool spent = false;
  for (auto& item : items_) {
    if (budget < 8) break;
    bool sent = false;
    switch (item.kind) {
      case kAlive:
        sent = tryAdd(
            packet.alives,
            Alive{item.node, item.generation, item.incarnation, sources.addressOf(item.node)},
            budget);
        break;
      case kSuspect:
        sent = tryAdd(packet.suspects,
                      Suspect{item.node, item.generation, item.incarnation, item.from}, budget);
        break;
      case kDead:
        sent = tryAdd(packet.deads, Dead{item.node, item.generation, item.incarnation, item.from},
                      budget);
        break;
      case kLeave:
        sent = tryAdd(packet.leaves, Leave{item.node, item.generation, item.incarnation}, budget);
        break;
      case kCapacity:
        KJ_IF_MAYBE (d, sources.capacity(item.node)) {
          sent = tryAdd(packet.deltas, kj::mv(*d), budget);
        } else {
          item.transmits = limit;  // the record is gone
          spent = true;
        }
        break;
    }
    if (sent && ++item.transmits >= limit) spent = true;
  }
  if (spent) {
    items_.erase(std::remove_if(items_.begin(), items_.end(),
                                [&](const Item& i) { return i.transmits >= limit; }),
                 items_.end());
  }
}

}  // namespace nodeagent::cluster
