// The seccomp filter every tenant command runs under: an allow-list at least as strict as
// Docker's default profile for x86_64, minus ptrace and io_uring, with the 32-bit ABIs
// killed outright. init compiles it (libseccomp) and installs it on itself once the
// sandbox is set up; every process it spawns inherits it, so the tenant's very first
// instruction is already filtered and no spawn pays for loading a filter.
#pragma once

#include <linux/filter.h>

#include <cstddef>
#include <vector>

namespace nodeagent::isolator::init {

class SeccompProgram {
 public:
  // Compiles the default profile; throws kj::Exception if libseccomp refuses a rule.
  static SeccompProgram compileDefault();

  // Installs the filter on the calling thread. Needs no_new_privs (init sets it).
  // Returns false with errno set.
  bool install() const;

  size_t instructions() const { return code_.size(); }

 private:
  std::vector<sock_filter> code_;
};

}  // namespace nodeagent::isolator::init
