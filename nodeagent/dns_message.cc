#include "nodeagent/dns_message.h"

#include <string.h>

namespace nodeagent::dns {
namespace {

uint16_t read16(kj::ArrayPtr<const kj::byte> m, size_t at) {
  return uint16_t(m[at] << 8 | m[at + 1]);
}

uint32_t read32(kj::ArrayPtr<const kj::byte> m, size_t at) {
  return uint32_t(m[at]) << 24 | uint32_t(m[at + 1]) << 16 | uint32_t(m[at + 2]) << 8 | m[at + 3];
}

// Reads a (possibly compressed) name starting at `at`; sets `next` to the
// offset after it in the record. Null on anything malformed or looping.
kj::Maybe<std::string> readName(kj::ArrayPtr<const kj::byte> m, size_t at, size_t& next) {
  std::string name;
  bool jumped = false;
  int jumps = 0;
  size_t pos = at;
  for (;;) {
    if (pos >= m.size()) return nullptr;
    uint8_t length = m[pos];
    if ((length & 0xc0) == 0xc0) {
      if (pos + 1 >= m.size() || ++jumps > 16) return nullptr;
      size_t target = size_t(length & 0x3f) << 8 | m[pos + 1];
      if (!jumped) next = pos + 2;
      jumped = true;
      if (target >= pos) return nullptr;  // pointers only go backwards
      pos = target;
      continue;
    }
    if ((length & 0xc0) != 0) return nullptr;
    if (length == 0) {
      if (!jumped) next = pos + 1;
      return name;
    }
    if (pos + 1 + length > m.size()) return nullptr;
    // A NUL or a dot inside a label would make the text form name something
    // else than the wire form (policy is judged on the text): refused.
    for (size_t i = pos + 1; i < pos + 1 + length; ++i) {
      if (m[i] == 0 || m[i] == '.') return nullptr;
    }
    if (!name.empty()) name += '.';
    name.append(reinterpret_cast<const char*>(m.begin() + pos + 1), length);
    if (name.size() > 253) return nullptr;
    pos += 1 + length;
  }
}

}  // namespace

bool sameName(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  auto fold = [](char c) { return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c; };
  for (size_t i = 0; i < a.size(); ++i) {
    if (fold(a[i]) != fold(b[i])) return false;  // every byte, NULs included
  }
  return true;
}

kj::Maybe<Question> parseQuery(kj::ArrayPtr<const kj::byte> m) {
  if (m.size() < kHeaderBytes || m.size() > kMaxMessageBytes) return nullptr;
  uint16_t flags = read16(m, 2);
  bool response = flags & 0x8000;
  uint8_t opcode = (flags >> 11) & 0x0f;
  if (response || opcode != 0 || read16(m, 4) != 1 || read16(m, 6) != 0 || read16(m, 8) != 0) {
    return nullptr;
  }
  Question q;
  q.id = read16(m, 0);
  size_t next = 0;
  KJ_IF_MAYBE (name, readName(m, kHeaderBytes, next)) {
    q.name = kj::mv(*name);
  } else {
    return nullptr;
  }
  if (next + 4 > m.size()) return nullptr;
  q.type = read16(m, next);
  q.klass = read16(m, next + 2);
  q.end = next + 4;
  return q;
}

kj::Maybe<Answer> parseAnswer(kj::ArrayPtr<const kj::byte> m) {
  if (m.size() < kHeaderBytes || m.size() > kMaxMessageBytes) return nullptr;
  uint16_t flags = read16(m, 2);
  if (!(flags & 0x8000)) return nullptr;
  Answer a;
  a.id = read16(m, 0);
  a.rcode = flags & 0x0f;
  a.truncated = flags & 0x0200;
  uint16_t questions = read16(m, 4), answers = read16(m, 6);
  if (questions != 1) return nullptr;
  size_t pos = 0;
  KJ_IF_MAYBE (name, readName(m, kHeaderBytes, pos)) {
    a.questionName = kj::mv(*name);
  } else {
    return nullptr;
  }
  if (pos + 4 > m.size()) return nullptr;
  a.questionType = read16(m, pos);
  pos += 4;
  for (uint16_t i = 0; i < answers; ++i) {
    size_t next = 0;
    if (readName(m, pos, next) == nullptr) return nullptr;
    pos = next;
    if (pos + 10 > m.size()) return nullptr;
    uint16_t type = read16(m, pos);
    uint16_t klass = read16(m, pos + 2);
    uint32_t ttl = read32(m, pos + 4);
    uint16_t length = read16(m, pos + 8);
    pos += 10;
    if (pos + length > m.size()) return nullptr;
    if (klass == 1 && type == kTypeA && length == 4) {
      a.addresses.push_back({IpAddress::fromV4(read32(m, pos)), ttl});
    } else if (klass == 1 && type == kTypeAaaa && length == 16) {
      a.addresses.push_back({IpAddress::fromV6(m.begin() + pos), ttl});
    }
    pos += length;
  }
  return a;
}

kj::Array<kj::byte> makeErrorReply(kj::ArrayPtr<const kj::byte> query, const Question& question,
                                   uint8_t rcode) {
  auto reply = kj::heapArray<kj::byte>(question.end);
  memcpy(reply.begin(), query.begin(), question.end);
  bool recursionDesired = query[2] & 0x01;
  reply[2] = kj::byte(0x80 | (recursionDesired ? 0x01 : 0));  // QR, opcode 0, RD echoed
  reply[3] = kj::byte(0x80 | (rcode & 0x0f));                 // RA
  reply[6] = reply[7] = 0;                                    // no answers
  reply[8] = reply[9] = 0;
  reply[10] = reply[11] = 0;
  return reply;
}

}  // namespace nodeagent::dns
