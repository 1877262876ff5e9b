// The recent output of one stream of a process: the last `capacity` bytes,
// addressed by absolute offset (bytes since the process started), so a
// client that reattaches can say where it left off.
#pragma once

#include <stdint.h>

#include <kj/array.h>
#include <kj/vector.h>

namespace nodeagent {

class OutputRing {
 public:
  // Memory grows with the output, up to `capacity`; then the oldest bytes go.
  explicit OutputRing(size_t capacity);

  void append(kj::ArrayPtr<const kj::byte> data);
  uint64_t begin() const { return end_ - buffer_.size(); }  // oldest byte still held
  uint64_t end() const { return end_; }                     // bytes ever appended
  // Up to `maxBytes` from `from`, clamped to [begin(), end()].
  kj::Array<kj::byte> read(uint64_t from, size_t maxBytes) const;

 private:
  size_t capacity_;
  kj::Vector<kj::byte> buffer_;  // once full, a ring whose oldest byte is at head_
  size_t head_ = 0;
  uint64_t end_ = 0;
};

}  // namespace nodeagent
