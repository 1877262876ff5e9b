#include "nodeagent/output_ring.h"

#include <string.h>

#include <kj/debug.h>

namespace nodeagent {

OutputRing::OutputRing(size_t capacity) : capacity_(capacity) {
  KJ_REQUIRE(capacity > 0);
}

void OutputRing::append(kj::ArrayPtr<const kj::byte> data) {
  end_ += data.size();
  if (data.size() >= capacity_) {
    // Only the tail survives.
    buffer_.clear();
    buffer_.addAll(data.slice(data.size() - capacity_, data.size()));
    head_ = 0;
    return;
  }
  size_t room = capacity_ - buffer_.size();
  size_t grow = kj::min(room, data.size());
  buffer_.addAll(data.slice(0, grow));
  data = data.slice(grow, data.size());
  // Full: overwrite the oldest bytes in place.
  while (data.size() > 0) {
    size_t n = kj::min(data.size(), capacity_ - head_);
    memcpy(buffer_.begin() + head_, data.begin(), n);
    head_ = (head_ + n) % capacity_;
    data = data.slice(n, data.size());
  }
}

kj::Array<kj::byte> OutputRing::read(uint64_t from, size_t maxBytes) const {
  from = kj::max(kj::min(from, end_), begin());
  size_t n = size_t(kj::min(uint64_t(maxBytes), end_ - from));
  auto out = kj::heapArray<kj::byte>(n);
  // Position of `from` in the buffer: the oldest byte sits at head_.
  size_t at = (head_ + size_t(from - begin())) % kj::max(buffer_.size(), size_t(1));
  for (size_t done = 0; done < n;) {
    size_t chunk = kj::min(n - done, buffer_.size() - at);
    memcpy(out.begin() + done, buffer_.begin() + at, chunk);
    done += chunk;
    at = 0;
  }
  return out;
}

}  // namespace nodeagent
