#include "isolator/init/seccomp_install.h"

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <kj/debug.h>

#include <cstring>
#include <vector>

namespace nodeagent::isolator::init {

void installSeccompFilter(kj::ArrayPtr<const kj::byte> program) {
  KJ_REQUIRE(program.size() > 0 && program.size() % sizeof(sock_filter) == 0 &&
                 program.size() / sizeof(sock_filter) <= BPF_MAXINSNS,
             "Setup carries no valid seccomp program", program.size());
  // Copied: the message's bytes need not be aligned for sock_filter.
  std::vector<sock_filter> code(program.size() / sizeof(sock_filter));
  memcpy(code.data(), program.begin(), program.size());
  sock_fprog prog{static_cast<unsigned short>(code.size()), code.data()};
  KJ_SYSCALL(syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog), "installing seccomp filter");
}

}  // namespace nodeagent::isolator::init
