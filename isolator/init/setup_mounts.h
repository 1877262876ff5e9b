// Builds the sandbox's root filesystem and identity from inside its fresh namespaces:
// tmpfs for the writable layers, overlays for "/" and "/usr", /proc (masked), a minimal /dev,
// pivot_root, hostname and loopback.
#pragma once

#include <kj/array.h>
#include <cstdint>

#include <string>
#include <vector>

#include "isolator/skeleton_seed.h"

namespace nodeagent::isolator::init {

struct SetupConfig {
  std::string hostname;
  std::string skeletonDir;
  std::string usrDir;
  std::string workDir;
  uint64_t diskBytes = 0;
  kj::Array<kj::byte> seccompFilter;  // installed by main() after setup, not here
  std::vector<SeedEntry> seed;        // planted in the upper layer
};

// Throws kj::Exception naming the step that failed.
void setupSandbox(const SetupConfig& config);

}  // namespace nodeagent::isolator::init
