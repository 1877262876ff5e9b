#include "isolator/mountinfo.h"

#include <kj/debug.h>

#include <fstream>
#include <sstream>

namespace nodeagent::isolator {
namespace {

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescapeMountField(const std::string& field) {
  std::string out;
  for (size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size()) {
      int value = 0;
      bool octal = true;
      for (size_t j = 1; j <= 3; ++j) {
        char c = field[i + j];
        if (c < '0' || c > '7') octal = false;
        value = value * 8 + (c - '0');
      }
      if (octal) {
        out.push_back(char(value));
        i += 3;
        continue;
      }
    }
    out.push_back(field[i]);
  }
  return out;
}

}  // namespace

std::vector<MountEntry> readMountInfo() {
  std::ifstream in("/proc/self/mountinfo");
  KJ_REQUIRE(in.good(), "cannot read /proc/self/mountinfo");
  std::vector<MountEntry> out;
  std::string line;
  // Fields: id parent major:minor root mountpoint options [optional...] - fstype source super.
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, device, root, mountPoint, options, field;
    fields >> id >> parent >> device >> root >> mountPoint >> options;
    while (fields >> field && field != "-") {
    }
    MountEntry entry;
    fields >> entry.fsType >> entry.source >> entry.superOptions;
    entry.root = unescapeMountField(root);
    entry.mountPoint = unescapeMountField(mountPoint);
    out.push_back(std::move(entry));
  }
  return out;
}

std::vector<std::string> splitMountOptions(const std::string& options) {
  std::vector<std::string> out;
  std::stringstream in(options);
  std::string option;
  while (std::getline(in, option, ',')) {
    if (!option.empty()) out.push_back(option);
  }
  return out;
}

bool hasMountOption(const std::string& options, const char* name) {
  for (const std::string& option : splitMountOptions(options)) {
    if (option == name) return true;
  }
  return false;
}

}  // namespace nodeagent::isolator
