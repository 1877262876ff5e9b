// The seccomp filter every tenant command runs under: an allow-list at least as strict as
// Docker's default profile for x86_64, minus ptrace and io_uring, with the 32-bit ABIs
// killed outright. The agent compiles it once (libseccomp takes milliseconds) and hands
// the BPF program to every sandbox's init in its Setup message; init installs it on
// itself once the sandbox is set up and every process it spawns inherits it, so the
// tenant's very first instruction is already filtered.
#pragma once

#include <linux/filter.h>

#include <kj/common.h>

#include <cstddef>
#include <vector>

namespace nodeagent::isolator {

class SeccompProgram {
 public:
  // Compiles the default profile; throws kj::Exception if libseccomp refuses a rule.
  static SeccompProgram compileDefault();

  // The program as struct sock_filter[], for Setup.seccompFilter.
  kj::ArrayPtr<const kj::byte> bytes() const {
    return kj::arrayPtr(reinterpret_cast<const kj::byte*>(code_.data()),
                        code_.size() * sizeof(sock_filter));
  }
  size_t instructions() const { return code_.size(); }

 private:
  std::vector<sock_filter> code_;
};

}  // namespace nodeagent::isolator
