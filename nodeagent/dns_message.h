// The few pieces of the DNS wire format (RFC 1035) the agent's resolver
// needs: read a client's query, read the addresses in an upstream answer,
// and write a refusal. Everything is bounds-checked; a malformed message is
// null or an error, never a crash.
#pragma once

#include <kj/array.h>
#include <kj/common.h>

#include <cstdint>
#include <string>
#include <vector>

#include "util/ip_prefix.h"

namespace nodeagent::dns {

constexpr uint16_t kTypeA = 1;
constexpr uint16_t kTypeCname = 5;
constexpr uint16_t kTypeAaaa = 28;
constexpr uint8_t kRcodeServfail = 2;
constexpr uint8_t kRcodeRefused = 5;
constexpr size_t kHeaderBytes = 12;
constexpr size_t kMaxMessageBytes = 65535;

struct Question {
  uint16_t id = 0;
  std::string name;  // as sent, without the final dot (case kept)
  uint16_t type = 0;
  uint16_t klass = 0;
  size_t end = 0;  // offset just past the question
};

// A standard query (QR=0, opcode 0) with exactly one question; null otherwise.
kj::Maybe<Question> parseQuery(kj::ArrayPtr<const kj::byte> message);

struct AnswerAddress {
  IpAddress address;
  uint32_t ttl = 0;
};

struct Answer {
  uint16_t id = 0;
  uint8_t rcode = 0;
  bool truncated = false;
  std::string questionName;
  uint16_t questionType = 0;
  std::vector<AnswerAddress> addresses;  // A and AAAA records of the answer section
};

// Reads an upstream response; null if it is not a well-formed response.
kj::Maybe<Answer> parseAnswer(kj::ArrayPtr<const kj::byte> message);

// A reply to `query` with no records and the given rcode (REFUSED, SERVFAIL).
kj::Array<kj::byte> makeErrorReply(kj::ArrayPtr<const kj::byte> query, const Question& question,
                                   uint8_t rcode);

// Whether two names are the same DNS name (ASCII case-insensitive).
bool sameName(const std::string& a, const std::string& b);

}  // namespace nodeagent::dns
