// Packets to bytes and back: Cap'n Proto packed encoding of
// schema/cluster.capnp. The bytes are what the transport seals and sends.
#pragma once

#include <kj/array.h>
#include <kj/common.h>

#include "cluster/messages.h"

namespace nodeagent::cluster {

kj::Array<kj::byte> encodePacket(const Packet& packet);

// Null when the bytes are not a well-formed packet (a peer's bug, a stray
// datagram); the caller drops it.
kj::Maybe<Packet> decodePacket(kj::ArrayPtr<const kj::byte> bytes);

// Upper estimates of what a message adds to a packed packet, so a packet can
// be filled to a byte budget without encoding it for every candidate. The
// final size is checked after encoding (see PacketBuilder in node.cc).
size_t estimateBytes(const Ping&);
size_t estimateBytes(const PingReq&);
size_t estimateBytes(const Ack&);
size_t estimateBytes(const Nack&);
size_t estimateBytes(const Alive&);
size_t estimateBytes(const Suspect&);
size_t estimateBytes(const Dead&);
size_t estimateBytes(const Leave&);
size_t estimateBytes(const DigestEntry&);
size_t estimateBytes(const Delta&);
size_t estimateBytes(const Packet&);
constexpr size_t kPacketOverheadBytes = 48;  // segment table, root, sender
constexpr size_t kListOverheadBytes = 12;    // a list pointer and its tag word

}  // namespace nodeagent::cluster
