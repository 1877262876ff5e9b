// One node's view of the fleet's membership: a compact record per member,
// sorted by id. A 10,000-node simulator holds 10^8 of these, so a record is
// 24 bytes; addresses live in the transport, timers and suspicions elsewhere.
#pragma once

#include <stdint.h>

#include <vector>

#include "cluster/messages.h"

namespace nodeagent::cluster {

enum class MemberState : uint8_t { kAlive, kSuspect, kDead, kLeft };

struct Member {
  NodeId id;
  uint64_t generation;  // the member's boot; a higher one wins over any incarnation
  uint32_t incarnation;
  MemberState state;

  bool live() const { return state == MemberState::kAlive || state == MemberState::kSuspect; }
};
static_assert(sizeof(Member) == 24);

// (generation, incarnation): which of two claims about a member is newer.
inline bool newer(uint64_t gen, uint32_t inc, const Member& m) {
  return gen > m.generation || (gen == m.generation && inc > m.incarnation);
}
inline bool atLeast(uint64_t gen, uint32_t inc, const Member& m) {
  return gen > m.generation || (gen == m.generation && inc >= m.incarnation);
}

class MemberTable {
 public:
  Member* find(NodeId id);
  const Member* find(NodeId id) const;
  // Inserts a record for an unknown id; the pointer is valid until the next insert/erase.
  Member& insert(const Member& m);
  void erase(NodeId id);
  void setState(Member& m, MemberState state);

  size_t size() const { return members_.size(); }
  size_t liveCount() const { return live_; }  // alive + suspect, self included
  Member& at(size_t i) { return members_[i]; }
  const Member& at(size_t i) const { return members_[i]; }
  // Index of the first member with id >= `id`.
  size_t lowerBound(NodeId id) const;
  void reserve(size_t n) { members_.reserve(n); }

 private:
  std::vector<Member> members_;
  size_t live_ = 0;
};

}  // namespace nodeagent::cluster
