#include "nodeagent/output_ring.h"

#include <gtest/gtest.h>

#include <string>

namespace nodeagent {
namespace {

void append(OutputRing& ring, const std::string& s) {
  ring.append(kj::arrayPtr(reinterpret_cast<const kj::byte*>(s.data()), s.size()));
}

std::string read(const OutputRing& ring, uint64_t from, size_t max = 1000) {
  auto bytes = ring.read(from, max);
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

TEST(OutputRing, KeepsEverythingUntilFull) {
  OutputRing ring(8);
  EXPECT_EQ(read(ring, 0), "");
  append(ring, "abc");
  append(ring, "de");
  EXPECT_EQ(ring.begin(), 0u);
  EXPECT_EQ(ring.end(), 5u);
  EXPECT_EQ(read(ring, 0), "abcde");
  EXPECT_EQ(read(ring, 3), "de");
  EXPECT_EQ(read(ring, 1, 2), "bc");
  EXPECT_EQ(read(ring, 99), "");  // past the end: nothing
}

TEST(OutputRing, DropsTheOldestOnceFull) {
  OutputRing ring(8);
  append(ring, "abcdef");
  append(ring, "ghijk");  // wraps
  EXPECT_EQ(ring.begin(), 3u);
  EXPECT_EQ(ring.end(), 11u);
  EXPECT_EQ(read(ring, 0), "defghijk");  // before begin(): from the oldest held
  EXPECT_EQ(read(ring, 6), "ghijk");
  EXPECT_EQ(read(ring, 5, 4), "fghi");
  for (int i = 0; i < 5; ++i) append(ring, "xyz");
  EXPECT_EQ(ring.end(), 26u);
  EXPECT_EQ(ring.begin(), 18u);
  EXPECT_EQ(read(ring, 0), "yzxyzxyz");  // offsets 18..25 of "...k" + "xyz" * 5
  EXPECT_EQ(read(ring, 24), "yz");
}

TEST(OutputRing, AChunkLargerThanTheRingKeepsItsTail) {
  OutputRing ring(4);
  append(ring, "ab");
  append(ring, "0123456789");
  EXPECT_EQ(ring.begin(), 8u);
  EXPECT_EQ(read(ring, 0), "6789");
  append(ring, "X");
  EXPECT_EQ(read(ring, 0), "789X");
}

}  // namespace
}  // namespace nodeagent
