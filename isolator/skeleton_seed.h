// What of the skeleton a sandbox gets as its own. The skeleton's files belong
// to host root, which is unmapped in a sandbox: through the overlay they would
// show as "nobody" and even the sandbox's root could not change them. So init
// recreates the skeleton's directories and small files in the sandbox's upper
// layer, as the sandbox's root, which makes the merged tree the sandbox's own.
// Symlinks and big files (the CA bundle) stay shared in the lower layer.
//
// The agent reads the list once per template (readSkeletonSeed, template.h)
// and sends it with every Setup, so init plants a few dozen entries instead of
// walking the skeleton (a directory of ~500 symlinks among them) per launch.
#pragma once

#include <sys/types.h>

#include <string>

namespace nodeagent::isolator {

struct SeedEntry {
  std::string path;  // relative to the root, parents before children ("etc", "etc/passwd")
  mode_t mode = 0;   // permission bits, applied exactly (no umask)
  bool directory = false;
  std::string content;  // files only
};

}  // namespace nodeagent::isolator
