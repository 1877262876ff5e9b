// /proc/self/mountinfo, parsed.
#pragma once

#include <string>
#include <vector>

namespace nodeagent::isolator {

struct MountEntry {
  std::string root;        // the path inside the filesystem that is mounted ("/": all of it)
  std::string mountPoint;  // unescaped
  std::string fsType;
  std::string source;
  std::string superOptions;  // the superblock's options, comma-separated
};

// The mount table in mount order: where a path has several entries, the last one
// is the mount that is visible.
std::vector<MountEntry> readMountInfo();

// A comma-separated option list ("rw,nsdelegate") as its options, empty ones left out.
std::vector<std::string> splitMountOptions(const std::string& options);

// Whether a comma-separated option list holds `name` exactly.
bool hasMountOption(const std::string& options, const char* name);

}  // namespace nodeagent::isolator
