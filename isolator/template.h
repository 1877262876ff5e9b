// The skeleton: the lowest overlay layer of every sandbox's "/". It holds the top-level
// symlinks into /usr, empty mount-point directories and a minimal /etc of its own, so
// nothing of the host's /etc, /root, /home, /var or /run ever shows in a sandbox.
#pragma once

#include <string>
#include <vector>

#include "isolator/skeleton_seed.h"

namespace nodeagent::isolator {

// For nodes without sandbox networking: nothing to resolve with.
inline const std::string kDefaultResolvConf = "nameserver 127.0.0.1\n";

// Builds the skeleton at `dir` unless it already exists. The tree is built in
// "<dir>.tmp" and renamed into place, so `dir` is either complete or absent.
// `usrDir` decides which optional lib symlinks (lib32, libx32) are made.
// Directories are world-traversable on the host side: the sandbox's init mounts the
// overlay with its own (unprivileged on the host) credentials.
// `resolvConf` is /etc/resolv.conf's content (the node's DNS for sandboxes);
// an existing skeleton with another one gets it replaced.
void prepareSkeleton(const std::string& dir, const std::string& usrDir = "/usr",
                     const std::string& resolvConf = kDefaultResolvConf);

// Files in the skeleton larger than this stay in the shared lower layer; init copies
// smaller ones (and all directories) into the sandbox's upper layer so that they are
// owned by the sandbox's root and editable in place.
constexpr size_t kSkeletonCopyUpLimit = 64 * 1024;

// What a seed may hold in all (paths and contents): it travels in every Setup
// message, whose limit (init_protocol.h) is twice this.
constexpr size_t kMaxSeedBytes = 128 * 1024;

// The skeleton's directories and regular files up to kSkeletonCopyUpLimit, in
// tree order, with their modes and contents (skeleton_seed.h), leaving out what
// others may not read. The top-level "root" is 0700 in the seed: the host side
// keeps it traversable for the overlay. Throws past kMaxSeedBytes. Read at the
// agent's start: later changes to the skeleton reach new sandboxes after a restart.
std::vector<SeedEntry> readSkeletonSeed(const std::string& dir);

}  // namespace nodeagent::isolator
