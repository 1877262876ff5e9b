// IPv4 and IPv6 addresses and prefixes in one 16-byte form: IPv4 as its
// IPv4-mapped IPv6 address (::ffff:a.b.c.d), so one table and one comparison
// serve both families and a mapped address is judged as the IPv4 one it is.
//
//   auto p = IpPrefix::parse("10.0.0.0/8");     // ::ffff:10.0.0.0/104
//   p->contains(*IpAddress::parse("::ffff:10.1.2.3"))  // true
#pragma once

#include <kj/common.h>
#include <kj/string.h>

#include <array>
#include <cstdint>
#include <string>

struct sockaddr_storage;

namespace nodeagent {

class IpAddress {
 public:
  IpAddress() = default;
  explicit IpAddress(const std::array<uint8_t, 16>& bytes) : bytes_(bytes) {}
  static IpAddress fromV4(uint32_t hostOrder);
  static IpAddress fromV6(const uint8_t bytes[16]);
  // Dotted quad or RFC 4291 text (no zone, no brackets); null if neither.
  static kj::Maybe<IpAddress> parse(kj::StringPtr text);

  bool isV4() const;    // IPv4-mapped
  uint32_t v4() const;  // host order; only when isV4()
  const std::array<uint8_t, 16>& bytes() const { return bytes_; }
  // "10.1.2.3" or "2001:db8::1".
  std::string toString() const;
  // Adds `n` to the address (carrying across bytes); for pool arithmetic.
  IpAddress plus(uint64_t n) const;

  bool operator==(const IpAddress& other) const { return bytes_ == other.bytes_; }
  bool operator!=(const IpAddress& other) const { return bytes_ != other.bytes_; }
  bool operator<(const IpAddress& other) const { return bytes_ < other.bytes_; }

 private:
  std::array<uint8_t, 16> bytes_{};
};

class IpPrefix {
 public:
  IpPrefix() = default;
  // `length` counts bits of the 16-byte form (an IPv4 /8 is 104); bits past it are cleared.
  IpPrefix(IpAddress address, uint8_t length);
  // "10.0.0.0/8", "2001:db8::/32", or a bare address (a /32 or /128). Host
  // bits must be zero ("10.0.0.1/8" is refused: it is usually a typo).
  static kj::Maybe<IpPrefix> parse(kj::StringPtr text);

  const IpAddress& address() const { return address_; }
  uint8_t length() const { return length_; }  // of the 16-byte form
  bool isV4() const { return address_.isV4() && length_ >= 96; }
  // The length as written: 0..32 for IPv4, 0..128 for IPv6.
  uint8_t familyLength() const { return isV4() ? uint8_t(length_ - 96) : length_; }
  bool contains(const IpAddress& a) const;
  // How many addresses it holds, saturated at 2^63.
  uint64_t size() const;
  std::string toString() const;

 private:
  IpAddress address_;
  uint8_t length_ = 0;
};

}  // namespace nodeagent
