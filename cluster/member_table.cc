#include "cluster/member_table.h"

#include <algorithm>

namespace nodeagent::cluster {

size_t MemberTable::lowerBound(NodeId id) const {
  return std::lower_bound(members_.begin(), members_.end(), id,
                          [](const Member& m, NodeId id) { return m.id < id; }) -
         members_.begin();
}

Member* MemberTable::find(NodeId id) {
  size_t i = lowerBound(id);
  return i < members_.size() && members_[i].id == id ? &members_[i] : nullptr;
}

const Member* MemberTable::find(NodeId id) const {
  size_t i = lowerBound(id);
  return i < members_.size() && members_[i].id == id ? &members_[i] : nullptr;
}

Member& MemberTable::insert(const Member& m) {
  size_t i = lowerBound(m.id);
  auto it = members_.insert(members_.begin() + i, m);
  if (m.live()) ++live_;
  return *it;
}

void MemberTable::erase(NodeId id) {
  size_t i = lowerBound(id);
  if (i < members_.size() && members_[i].id == id) {
    if (members_[i].live()) --live_;
    members_.erase(members_.begin() + i);
  }
}

void MemberTable::setState(Member& m, MemberState state) {
  bool wasLive = m.live();
  m.state = state;
  if (wasLive && !m.live()) --live_;
  if (!wasLive && m.live()) ++live_;
}

}  // namespace nodeagent::cluster
