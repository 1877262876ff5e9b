// Gate for tests that need root. On a developer machine without root they skip
// with a clear message; under CI (CI=true) a missing privilege is a failure.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace nodeagent::testing {

inline bool runningUnderCi() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && (std::strcmp(ci, "true") == 0 || std::strcmp(ci, "1") == 0);
}

}  // namespace nodeagent::testing

#define NODEAGENT_REQUIRE_ROOT()                                             \
  do {                                                                       \
    if (geteuid() != 0) {                                                    \
      if (::nodeagent::testing::runningUnderCi()) {                          \
        FAIL() << "privileged test needs root and CI=true forbids skipping"; \
      }                                                                      \
      GTEST_SKIP() << "privileged test: needs root (run as root, or in CI)"; \
    }                                                                        \
  } while (0)
