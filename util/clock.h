#pragma once

#include <time.h>

#include <cstdint>

namespace nodeagent {

inline int64_t readClockNs(clockid_t clock) {
  timespec ts;
  clock_gettime(clock, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// Wall-clock time for records people read; monotonic time for durations.
inline int64_t unixNowNs() {
  return readClockNs(CLOCK_REALTIME);
}
inline int64_t monotonicNowNs() {
  return readClockNs(CLOCK_MONOTONIC);
}

}  // namespace nodeagent
