// The seccomp filter every tenant command runs under: an allow-list at least as strict as
// Docker's default profile for x86_64, minus ptrace and io_uring, with the 32-bit ABIs
// killed outright. init compiles it once (libseccomp) and each spawned child installs the
// ready BPF program with a raw seccomp(2) right before execve, so the child allocates
// nothing and the tenant's very first instruction is already filtered.
#pragma once

#include <linux/filter.h>

#include <cstddef>
#include <vector>

namespace nodeagent::isolator::init {

class SeccompProgram {
 public:
  // Compiles the default profile; throws kj::Exception if libseccomp refuses a rule.
  static SeccompProgram compileDefault();

  // Installs the filter on the calling thread. Needs no_new_privs (init sets it) and is
  // async-signal-safe: for a forked child before exec. Returns false with errno set.
  bool install() const;

  size_t instructions() const { return code_.size(); }

 private:
  std::vector<sock_filter> code_;
};

}  // namespace nodeagent::isolator::init
