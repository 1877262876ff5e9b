// The skeleton: the lowest overlay layer of every sandbox's "/". It holds the top-level
// symlinks into /usr, empty mount-point directories and a minimal /etc of its own, so
// nothing of the host's /etc, /root, /home, /var or /run ever shows in a sandbox.
#pragma once

#include <string>

namespace nodeagent::isolator {

// Builds the skeleton at `dir` unless it already exists. The tree is built in
// "<dir>.tmp" and renamed into place, so `dir` is either complete or absent.
// `usrDir` decides which optional lib symlinks (lib32, libx32) are made.
// Directories are world-traversable on the host side: the sandbox's init mounts the
// overlay with its own (unprivileged on the host) credentials.
void prepareSkeleton(const std::string& dir, const std::string& usrDir = "/usr");

// Files in the skeleton larger than this stay in the shared lower layer; init copies
// smaller ones (and all directories) into the sandbox's upper layer so that they are
// owned by the sandbox's root and editable in place.
constexpr size_t kSkeletonCopyUpLimit = 64 * 1024;

}  // namespace nodeagent::isolator
