#include "cluster/codec.h"

#include <capnp/message.h>
#include <capnp/serialize-packed.h>
#include <kj/io.h>

#include "schema/cluster.capnp.h"

namespace nodeagent::cluster {
namespace {

// Packed encoding spends a tag byte per word plus the word's nonzero bytes.
size_t nz(uint64_t v) {
  size_t n = 0;
  for (; v != 0; v >>= 8) n += (v & 0xff) != 0;
  return n;
}
size_t textBytes(kj::StringPtr s) {
  return 2 + s.size() + s.size() / 8 + 4;  // pointer word, content and its tags
}

void fillState(wire::NodeState::Builder b, const NodeState& s) {
  b.setFreeCpuMillis(s.freeCpuMillis);
  b.setFreeMemoryBytes(s.freeMemoryBytes);
  b.setFreeDiskBytes(s.freeDiskBytes);
  b.setFreeSlots(s.freeSlots);
  b.setHealthy(s.healthy);
  b.setDraining(s.draining);
  if (!s.warmTemplates.empty()) {
    auto l = b.initWarmTemplates(s.warmTemplates.size());
    for (unsigned i = 0; i < l.size(); ++i) l.set(i, s.warmTemplates[i]);
  }
  if (!s.volumes.empty()) {
    auto l = b.initVolumes(s.volumes.size());
    for (unsigned i = 0; i < l.size(); ++i) l.set(i, s.volumes[i]);
  }
}

NodeState readState(wire::NodeState::Reader r) {
  NodeState s;
  s.freeCpuMillis = r.getFreeCpuMillis();
  s.freeMemoryBytes = r.getFreeMemoryBytes();
  s.freeDiskBytes = r.getFreeDiskBytes();
  s.freeSlots = r.getFreeSlots();
  s.healthy = r.getHealthy();
  s.draining = r.getDraining();
  for (auto t : r.getWarmTemplates()) s.warmTemplates.add(kj::str(t));
  for (auto v : r.getVolumes()) s.volumes.add(kj::str(v));
  return s;
}

}  // namespace

size_t estimateBytes(const Ping& m) {
  return 2 + nz(m.seqNo) + nz(m.target);
}
size_t estimateBytes(const PingReq& m) {
  return 2 + nz(m.seqNo) + nz(m.target);
}
size_t estimateBytes(const Ack& m) {
  return 1 + nz(m.seqNo);
}
size_t estimateBytes(const Nack& m) {
  return 1 + nz(m.seqNo);
}
size_t estimateBytes(const Alive& m) {
  return 3 + nz(m.node) + nz(m.generation) + nz(m.incarnation) + textBytes(m.address);
}
size_t estimateBytes(const Suspect& m) {
  return 4 + nz(m.node) + nz(m.generation) + nz(m.incarnation) + nz(m.from);
}
size_t estimateBytes(const Dead& m) {
  return 4 + nz(m.node) + nz(m.generation) + nz(m.incarnation) + nz(m.from);
}
size_t estimateBytes(const Leave& m) {
  return 3 + nz(m.node) + nz(m.generation) + nz(m.incarnation);
}
size_t estimateBytes(const DigestEntry& m) {
  return 3 + nz(m.owner) + nz(m.generation) + nz(m.version);
}
size_t estimateBytes(const Delta& m) {
  const NodeState& s = m.state;
  size_t n = 4 + nz(m.owner) + nz(m.generation) + nz(m.version);  // header + struct pointer
  n += 4 + 4 + nz(s.freeCpuMillis) + nz(s.freeSlots) + nz(s.freeMemoryBytes) + nz(s.freeDiskBytes) +
       1;  // data words
  n += 4;  // two list pointers
  for (auto& t : s.warmTemplates) n += textBytes(t) + 2;
  for (auto& v : s.volumes) n += textBytes(v) + 2;
  return n;
}

size_t estimateBytes(const Packet& p) {
  size_t n = kPacketOverheadBytes;
  auto list = [&](auto& l) {
    if (l.empty()) return;
    n += kListOverheadBytes;
    for (auto& m : l) n += estimateBytes(m);
  };
  list(p.pings);
  list(p.pingReqs);
  list(p.acks);
  list(p.nacks);
  list(p.alives);
  list(p.suspects);
  list(p.deads);
  list(p.leaves);
  list(p.deltas);
  for (auto& d : p.digests) {
    n += kListOverheadBytes + 24;
    for (auto& e : d.entries) n += estimateBytes(e);
  }
  return n;
}

bool Packet::empty() const {
  return pings.empty() && pingReqs.empty() && acks.empty() && nacks.empty() && alives.empty() &&
         suspects.empty() && deads.empty() && leaves.empty() && digests.empty() && deltas.empty() &&
         !wantSync;
}

kj::Array<kj::byte> encodePacket(const Packet& p) {
  capnp::MallocMessageBuilder message(256);
  auto b = message.initRoot<wire::Packet>();
  b.setSender(p.sender);
  b.setSenderGeneration(p.senderGeneration);
  b.setSync(p.sync);
  b.setWantSync(p.wantSync);
  if (!p.pings.empty()) {
    auto l = b.initPings(p.pings.size());
    for (unsigned i = 0; i < l.size(); ++i) {
      l[i].setSeqNo(p.pings[i].seqNo);
      l[i].setTarget(p.pings[i].target);
    }
  }
  if (!p.pingReqs.empty()) {
    auto l = b.initPingReqs(p.pingReqs.size());
    for (unsigned i = 0; i < l.size(); ++i) {
      l[i].setSeqNo(p.pingReqs[i].seqNo);
      l[i].setTarget(p.pingReqs[i].target);
    }
  }
  if (!p.acks.empty()) {
    auto l = b.initAcks(p.acks.size());
    for (unsigned i = 0; i < l.size(); ++i) l[i].setSeqNo(p.acks[i].seqNo);
  }
  if (!p.nacks.empty()) {
    auto l = b.initNacks(p.nacks.size());
    for (unsigned i = 0; i < l.size(); ++i) l[i].setSeqNo(p.nacks[i].seqNo);
  }
  if (!p.alives.empty()) {
    auto l = b.initAlives(p.alives.size());
    for (unsigned i = 0; i < l.size(); ++i) {
      auto& m = p.alives[i];
      l[i].setNode(m.node);
      l[i].setGeneration(m.generation);
      l[i].setIncarnation(m.incarnation);
      if (m.address.size() > 0) l[i].setAddress(m.address);
    }
  }
  if (!p.suspects.empty()) {
    auto l = b.initSuspects(p.suspects.size());
    for (unsigned i = 0; i < l.size(); ++i) {
      auto& m = p.suspects[i];
      l[i].setNode(m.node);
      l[i].setGeneration(m.generation);
      l[i].setIncarnation(m.incarnation);
      l[i].setFrom(m.from);
    }
  }
  if (!p.deads.empty()) {
    auto l = b.initDeads(p.deads.size());
    for (unsigned i = 0; i < l.size(); ++i) {
      auto& m = p.deads[i];
      l[i].setNode(m.node);
      l[i].setGeneration(m.generation);
      l[i].setIncarnation(m.incarnation);
      l[i].setFrom(m.from);
    }
  }
  if (!p.leaves.empty()) {
    auto l = b.initLeaves(p.leaves.size());
    for (unsigned i = 0; i < l.size(); ++i) {
      auto& m = p.leaves[i];
      l[i].setNode(m.node);
      l[i].setGeneration(m.generation);
      l[i].setIncarnation(m.incarnation);
    }
  }
  if (!p.digests.empty()) {
    auto l = b.initDigests(p.digests.size());
    for (unsigned i = 0; i < l.size(); ++i) {
      auto& d = p.digests[i];
      l[i].setRangeStart(d.rangeStart);
      l[i].setRangeEnd(d.rangeEnd);
      l[i].setRequest(d.request);
      auto e = l[i].initEntries(d.entries.size());
      for (unsigned j = 0; j < e.size(); ++j) {
        e[j].setOwner(d.entries[j].owner);
        e[j].setGeneration(d.entries[j].generation);
        e[j].setVersion(d.entries[j].version);
      }
    }
  }
  if (!p.deltas.empty()) {
    auto l = b.initDeltas(p.deltas.size());
    for (unsigned i = 0; i < l.size(); ++i) {
      auto& d = p.deltas[i];
      l[i].setOwner(d.owner);
      l[i].setGeneration(d.generation);
      l[i].setVersion(d.version);
      fillState(l[i].initState(), d.state);
    }
  }
  kj::VectorOutputStream out(512);
  capnp::writePackedMessage(out, message);
  return kj::heapArray(out.getArray());
}

kj::Maybe<Packet> decodePacket(kj::ArrayPtr<const kj::byte> bytes) {
  kj::Maybe<Packet> result;
  // A malformed datagram throws inside Cap'n Proto; it must cost the
  // receiver nothing but the drop.
  KJ_IF_MAYBE (
      e, kj::runCatchingExceptions([&]() {
        kj::ArrayInputStream in(bytes);
        capnp::ReaderOptions options;
        options.traversalLimitInWords = 64 * 1024;
        capnp::PackedMessageReader message(in, options);
        auto r = message.getRoot<wire::Packet>();
        Packet p;
        p.sender = r.getSender();
        p.senderGeneration = r.getSenderGeneration();
        p.sync = r.getSync();
        p.wantSync = r.getWantSync();
        for (auto m : r.getPings()) p.pings.add(Ping{m.getSeqNo(), m.getTarget()});
        for (auto m : r.getPingReqs()) p.pingReqs.add(PingReq{m.getSeqNo(), m.getTarget()});
        for (auto m : r.getAcks()) p.acks.add(Ack{m.getSeqNo()});
        for (auto m : r.getNacks()) p.nacks.add(Nack{m.getSeqNo()});
        for (auto m : r.getAlives()) {
          p.alives.add(
              Alive{m.getNode(), m.getGeneration(), m.getIncarnation(), kj::str(m.getAddress())});
        }
        for (auto m : r.getSuspects()) {
          p.suspects.add(Suspect{m.getNode(), m.getGeneration(), m.getIncarnation(), m.getFrom()});
        }
        for (auto m : r.getDeads()) {
          p.deads.add(Dead{m.getNode(), m.getGeneration(), m.getIncarnation(), m.getFrom()});
        }
        for (auto m : r.getLeaves()) {
          p.leaves.add(Leave{m.getNode(), m.getGeneration(), m.getIncarnation()});
        }
        for (auto d : r.getDigests()) {
          Digest digest;
          digest.rangeStart = d.getRangeStart();
          digest.rangeEnd = d.getRangeEnd();
          digest.request = d.getRequest();
          for (auto e : d.getEntries()) {
            digest.entries.add(DigestEntry{e.getOwner(), e.getGeneration(), e.getVersion()});
          }
          p.digests.add(kj::mv(digest));
        }
        for (auto d : r.getDeltas()) {
          p.deltas.add(
              Delta{d.getOwner(), d.getGeneration(), d.getVersion(), readState(d.getState())});
        }
        result = kj::mv(p);
      })) {
    (void)e;
    return nullptr;
  }
  return result;
}

NodeState NodeState::clone() const {
  NodeState s;
  s.freeCpuMillis = freeCpuMillis;
  s.freeMemoryBytes = freeMemoryBytes;
  s.freeDiskBytes = freeDiskBytes;
  s.freeSlots = freeSlots;
  for (auto& t : warmTemplates) s.warmTemplates.add(kj::str(t));
  for (auto& v : volumes) s.volumes.add(kj::str(v));
  s.healthy = healthy;
  s.draining = draining;
  return s;
}

bool NodeState::operator==(const NodeState& o) const {
  if (freeCpuMillis != o.freeCpuMillis || freeMemoryBytes != o.freeMemoryBytes ||
      freeDiskBytes != o.freeDiskBytes || freeSlots != o.freeSlots || healthy != o.healthy ||
      draining != o.draining || warmTemplates.size() != o.warmTemplates.size() ||
      volumes.size() != o.volumes.size()) {
    return false;
  }
  for (size_t i = 0; i < volumes.size(); ++i)
    if (volumes[i] != o.volumes[i]) return false;
  for (size_t i = 0; i < warmTemplates.size(); ++i)
    if (warmTemplates[i] != o.warmTemplates[i]) return false;
  return true;
}

}  // namespace nodeagent::cluster
