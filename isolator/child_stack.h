// A stack for a child started with clone(CLONE_VM, ...), which runs in its
// parent's memory until it execs (the launcher's init, init's commands).
#pragma once

#include <errno.h>
#include <sys/mman.h>

#include <kj/debug.h>

namespace nodeagent::isolator {

class ChildStack {
 public:
  static constexpr size_t kBytes = 64 * 1024;
  ChildStack() {
    base_ = mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK,
                 -1, 0);
    if (base_ == MAP_FAILED) KJ_FAIL_SYSCALL("mmap child stack", errno);
  }
  ~ChildStack() { munmap(base_, kBytes); }
  KJ_DISALLOW_COPY(ChildStack);
  void* top() { return static_cast<char*>(base_) + kBytes; }

 private:
  void* base_;
};

}  // namespace nodeagent::isolator
