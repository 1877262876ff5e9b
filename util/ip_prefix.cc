#include "util/ip_prefix.h"

#include <arpa/inet.h>
#include <string.h>

namespace nodeagent {

IpAddress IpAddress::fromV4(uint32_t hostOrder) {
  std::array<uint8_t, 16> b{};
  b[10] = 0xff;
  b[11] = 0xff;
  b[12] = uint8_t(hostOrder >> 24);
  b[13] = uint8_t(hostOrder >> 16);
  b[14] = uint8_t(hostOrder >> 8);
  b[15] = uint8_t(hostOrder);
  return IpAddress(b);
}

IpAddress IpAddress::fromV6(const uint8_t bytes[16]) {
  std::array<uint8_t, 16> b{};
  memcpy(b.data(), bytes, 16);
  return IpAddress(b);
}

kj::Maybe<IpAddress> IpAddress::parse(kj::StringPtr text) {
  in_addr v4;
  if (inet_pton(AF_INET, text.cStr(), &v4) == 1) return fromV4(ntohl(v4.s_addr));
  in6_addr v6;
  if (inet_pton(AF_INET6, text.cStr(), &v6) == 1) return fromV6(v6.s6_addr);
  return nullptr;
}

bool IpAddress::isV4() const {
  for (int i = 0; i < 10; ++i) {
    if (bytes_[i] != 0) return false;
  }
  return bytes_[10] == 0xff && bytes_[11] == 0xff;
}

uint32_t IpAddress::v4() const {
  return uint32_t(bytes_[12]) << 24 | uint32_t(bytes_[13]) << 16 | uint32_t(bytes_[14]) << 8 |
         bytes_[15];
}

std::string IpAddress::toString() const {
  char text[INET6_ADDRSTRLEN];
  if (isV4()) {
    inet_ntop(AF_INET, bytes_.data() + 12, text, sizeof(text));
  } else {
    inet_ntop(AF_INET6, bytes_.data(), text, sizeof(text));
  }
  return text;
}

IpAddress IpAddress::plus(uint64_t n) const {
  std::array<uint8_t, 16> b = bytes_;
  uint64_t carry = n;
  for (int i = 15; i >= 0 && carry != 0; --i) {
    uint64_t sum = b[size_t(i)] + (carry & 0xff);
    b[size_t(i)] = uint8_t(sum);
    carry = (carry >> 8) + (sum >> 8);
  }
  return IpAddress(b);
}

IpPrefix::IpPrefix(IpAddress address, uint8_t length) : length_(length > 128 ? 128 : length) {
  auto b = address.bytes();
  for (int bit = length_; bit < 128; ++bit) b[size_t(bit / 8)] &= uint8_t(~(0x80 >> (bit % 8)));
  address_ = IpAddress(b);
}

kj::Maybe<IpPrefix> IpPrefix::parse(kj::StringPtr text) {
  std::string s(text.cStr());
  size_t slash = s.find('/');
  std::string addressText = s.substr(0, slash);
  KJ_IF_MAYBE (address, IpAddress::parse(addressText.c_str())) {
    unsigned maxLength = address->isV4() ? 32 : 128;
    unsigned length = maxLength;
    if (slash != std::string::npos) {
      std::string lengthText = s.substr(slash + 1);
      if (lengthText.empty() || lengthText.size() > 3) return nullptr;
      length = 0;
      for (char c : lengthText) {
        if (c < '0' || c > '9') return nullptr;
        length = length * 10 + unsigned(c - '0');
      }
      if (length > maxLength) return nullptr;
    }
    uint8_t full = uint8_t(address->isV4() ? 96 + length : length);
    IpPrefix prefix(*address, full);
    if (prefix.address() != *address) return nullptr;  // host bits set
    return prefix;
  }
  return nullptr;
}

bool IpPrefix::contains(const IpAddress& a) const {
  return IpPrefix(a, length_).address() == address_;
}

uint64_t IpPrefix::size() const {
  unsigned hostBits = 128u - length_;
  return hostBits >= 63 ? (uint64_t(1) << 63) : (uint64_t(1) << hostBits);
}

std::string IpPrefix::toString() const {
  return address_.toString() + "/" + std::to_string(familyLength());
}

}  // namespace nodeagent
