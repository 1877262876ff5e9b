#include "isolator/seccomp_profile.h"

#include <errno.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <kj/debug.h>
#include <kj/io.h>

#include <cstdint>
#include <cstring>
#include <string>

namespace nodeagent::isolator {
namespace {

// Everything not allowed below fails with EPERM, as in Docker.
constexpr int kDefaultErrno = EPERM;

// Allowed whatever the arguments: Docker's default list for x86_64, restricted to what a
// process holding Docker's default capabilities may call, without the ptrace family,
// io_uring, modify_ldt and the 32-bit-only names. (Grouped by hand; clang-format would put
// one name per line.)
// clang-format off
constexpr const char* kAllowed[] = {
    // Process lifetime, identity and limits.
    "exit", "exit_group", "fork", "vfork", "execve", "execveat", "wait4", "waitid",
    "set_tid_address", "set_robust_list", "get_robust_list", "rseq", "restart_syscall",
    "getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp", "getsid", "setsid",
    "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
    "setfsuid", "setfsgid", "capget", "capset", "prctl", "arch_prctl", "get_thread_area",
    "set_thread_area", "getpriority", "setpriority", "getrlimit", "setrlimit", "prlimit64",
    "getrusage", "times", "sysinfo", "uname", "umask", "getcpu", "ioprio_get", "ioprio_set",
    "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getattr", "sched_setattr",
    "sched_getparam", "sched_setparam", "sched_getscheduler", "sched_setscheduler",
    "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval",
    // Further self-restriction is always fine.
    "seccomp", "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
    // CAP_SYS_CHROOT is kept (capabilities.cc), as in Docker.
    "chroot",

    // Signals. The pid namespace bounds who can be reached.
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open",
    "pidfd_send_signal", "process_mrelease", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn",
    "rt_sigpending", "rt_sigsuspend", "rt_sigtimedwait", "sigaltstack", "signalfd", "signalfd4",
    "pause", "alarm", "getitimer", "setitimer",

    // Memory.
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "mincore", "msync", "mlock",
    "mlock2", "munlock", "mlockall", "munlockall", "membarrier", "memfd_create", "memfd_secret",
    "remap_file_pages", "pkey_alloc", "pkey_free", "pkey_mprotect", "map_shadow_stack", "mseal",

    // Time (setting clocks needs CAP_SYS_TIME; adjtimex without it only reads).
    "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time",
    "clock_adjtime", "adjtimex", "timer_create", "timer_delete", "timer_gettime",
    "timer_settime", "timer_getoverrun", "timerfd_create", "timerfd_gettime", "timerfd_settime",

    // Files and directories.
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2",
    "pwritev2", "open", "openat", "openat2", "creat", "close", "close_range", "dup", "dup2",
    "dup3", "lseek", "fcntl", "flock", "ioctl", "fsync", "fdatasync", "sync", "syncfs",
    "sync_file_range", "truncate", "ftruncate", "fallocate", "fadvise64", "readahead",
    "sendfile", "splice", "tee", "vmsplice", "copy_file_range", "cachestat", "stat", "fstat",
    "lstat", "newfstatat", "statx", "statfs", "fstatfs", "access", "faccessat", "faccessat2",
    "getdents", "getdents64", "getcwd", "chdir", "fchdir", "mkdir", "mkdirat", "rmdir",
    "rename", "renameat", "renameat2", "link", "linkat", "symlink", "symlinkat", "unlink",
    "unlinkat", "readlink", "readlinkat", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown",
    "fchown", "lchown", "fchownat", "utime", "utimes", "utimensat", "futimesat",
    // Devices need CAP_MKNOD in the initial user namespace; fifos and sockets are fine.
    "mknod", "mknodat", "name_to_handle_at", "getxattr", "lgetxattr", "fgetxattr",
    "getxattrat", "setxattr", "lsetxattr", "fsetxattr", "setxattrat", "listxattr",
    "llistxattr", "flistxattr", "listxattrat", "removexattr", "lremovexattr", "fremovexattr",
    "removexattrat", "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
    "fanotify_mark",

    // Waiting for events.
    "poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1", "epoll_ctl",
    "epoll_ctl_old", "epoll_wait", "epoll_wait_old", "epoll_pwait", "epoll_pwait2", "eventfd",
    "eventfd2", "futex", "futex_waitv", "futex_wake", "futex_wait", "futex_requeue",
    "getrandom",

    // Legacy AIO (small surface, per-process rings); io_uring is not allowed.
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents",

    // SysV and POSIX IPC: namespaced by the sandbox's ipc namespace.
    "pipe", "pipe2", "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semtimedop",
    "semctl", "shmget", "shmat", "shmdt", "shmctl", "mq_open", "mq_unlink", "mq_timedsend",
    "mq_timedreceive", "mq_notify", "mq_getsetattr",

    // Sockets (socket() itself is conditional, below). The net namespace bounds them.
    "socketpair", "bind", "listen", "accept", "accept4", "connect", "getsockname",
    "getpeername", "getsockopt", "setsockopt", "sendto", "recvfrom", "sendmsg", "recvmsg",
    "sendmmsg", "recvmmsg", "shutdown",
};
// clang-format on

// Denied (EPERM, the default) on purpose. Listed so that nobody allows one by accident:
// compileDefault() refuses a profile that allows any of them.
// clang-format off
constexpr const char* kDenied[] = {
    // Mounts and namespaces: the sandbox's shape is init's business. unshare and setns
    // would also reach a fresh user namespace with every capability inside it.
    "mount", "umount2", "pivot_root", "unshare", "setns", "fsopen", "fsconfig", "fsmount",
    "fspick", "move_mount", "open_tree", "open_tree_attr", "mount_setattr", "statmount",
    "listmount",
    // Debugging other processes. Docker allows ptrace on kernels >= 4.8; a sandbox does not
    // need it (no gdb/strace) and it is a large, often-exploited surface.
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "pidfd_getfd",
    "kcmp",
    // Kernel attack surface with no use in a tenant sandbox.
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "modify_ldt",
    "lsm_get_self_attr", "lsm_set_self_attr", "lsm_list_modules",
    // The host's business.
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
    "swapon", "swapoff", "acct", "syslog", "quotactl", "quotactl_fd", "settimeofday",
    "clock_settime", "sethostname", "setdomainname", "vhangup", "iopl", "ioperm",
    "open_by_handle_at", "fanotify_init", "lookup_dcookie", "nfsservctl", "uselib", "ustat",
    "sysfs", "_sysctl", "mbind", "get_mempolicy", "set_mempolicy", "set_mempolicy_home_node",
    "migrate_pages", "move_pages",
};
// clang-format on

// Programs probe these and fall back to older calls on ENOSYS, but not on EPERM: glibc
// retries clone3 as clone (which the namespace-flag rule below can check: clone3 passes
// its flags in memory), and libuv and others treat ENOSYS as "kernel without io_uring".
constexpr const char* kNotImplemented[] = {
    "clone3",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
};

// Newest x86_64 syscall reviewed here (file_setattr, Linux 6.17). Higher numbers fail with
// ENOSYS, as runc does, so that a newer libc's wrappers fall back to the calls above.
constexpr int kNewestReviewedSyscall = 469;
constexpr int kHighestSyscall = 511;  // 512.. are x32-only numbers

// x86_64 numbers of syscalls newer than libseccomp 2.5.4 (Debian 12) can name.
struct SyscallNumber {
  const char* name;
  int number;
};
constexpr SyscallNumber kNewerSyscalls[] = {
    {"cachestat", 451},         {"fchmodat2", 452},        {"map_shadow_stack", 453},
    {"futex_wake", 454},        {"futex_wait", 455},       {"futex_requeue", 456},
    {"statmount", 457},         {"listmount", 458},        {"lsm_get_self_attr", 459},
    {"lsm_set_self_attr", 460}, {"lsm_list_modules", 461}, {"mseal", 462},
    {"setxattrat", 463},        {"getxattrat", 464},       {"listxattrat", 465},
    {"removexattrat", 466},     {"open_tree_attr", 467},
};

constexpr uint64_t kNamespaceFlags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
                                     CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWCGROUP;

// socket(2) families. Docker allows all but vsock (which would reach the VM host: it is not
// network-namespaced); these four are all a sandbox uses (netlink for getifaddrs and ip),
// and the rest (AF_ALG, AF_TIPC, AF_RDS, AF_CAN, ...) are a recurring source of kernel bugs.
constexpr uint64_t kSocketFamilies[] = {AF_UNIX, AF_INET, AF_INET6, AF_NETLINK};

// personality(2) values Docker allows: Linux, its 32-bit flavour, UNAME26, and the query.
constexpr uint64_t kPersonalities[] = {0x0, 0x8, 0x20000, 0x20008, 0xffffffff};

int resolve(const char* name) {
  int number = seccomp_syscall_resolve_name(name);
  if (number >= 0) return number;
  for (const SyscallNumber& s : kNewerSyscalls) {
    if (strcmp(s.name, name) == 0) return s.number;
  }
  KJ_FAIL_REQUIRE("seccomp profile names an unknown syscall", name);
}

// Owns a libseccomp filter context.
class Filter {
 public:
  explicit Filter(uint32_t defaultAction) : ctx_(seccomp_init(defaultAction)) {
    KJ_REQUIRE(ctx_ != nullptr, "seccomp_init failed");
  }
  ~Filter() { seccomp_release(ctx_); }
  KJ_DISALLOW_COPY(Filter);

  void setAttribute(scmp_filter_attr attribute, uint32_t value) {
    check(seccomp_attr_set(ctx_, attribute, value), "seccomp_attr_set");
  }

  template <typename... Conditions>
  void add(uint32_t action, const char* name, Conditions... conditions) {
    addNumber(action, resolve(name), name, conditions...);
  }

  template <typename... Conditions>
  void addNumber(uint32_t action, int number, const char* name, Conditions... conditions) {
    int rc = seccomp_rule_add(ctx_, action, number, sizeof...(conditions), conditions...);
    if (rc < 0) KJ_FAIL_SYSCALL("seccomp_rule_add", -rc, name);
  }

  std::vector<sock_filter> exportBpf() {
    int fd;
    KJ_SYSCALL(fd = memfd_create("seccomp-bpf", MFD_CLOEXEC));
    kj::AutoCloseFd memfd(fd);
    check(seccomp_export_bpf(ctx_, fd), "seccomp_export_bpf");
    off_t size;
    KJ_SYSCALL(size = lseek(fd, 0, SEEK_END));
    KJ_REQUIRE(size > 0 && size % sizeof(sock_filter) == 0 &&
                   size_t(size) / sizeof(sock_filter) <= BPF_MAXINSNS,
               "bad seccomp program size", size);
    std::vector<sock_filter> code(size_t(size) / sizeof(sock_filter));
    ssize_t n;
    KJ_SYSCALL(n = pread(fd, code.data(), size_t(size), 0));
    KJ_REQUIRE(n == size, "short read of the seccomp program");
    return code;
  }

 private:
  static void check(int rc, const char* what) {
    if (rc < 0) KJ_FAIL_SYSCALL(what, -rc);
  }

  scmp_filter_ctx ctx_;
};

void requireNothingDeniedIsAllowed() {
  for (const char* denied : kDenied) {
    for (const char* allowed : kAllowed) {
      KJ_REQUIRE(strcmp(denied, allowed) != 0, "seccomp profile allows a denied syscall", denied);
    }
    resolve(denied);  // a typo would deny nothing
  }
}

}  // namespace

SeccompProgram SeccompProgram::compileDefault() {
  requireNothingDeniedIsAllowed();
  Filter filter(SCMP_ACT_ERRNO(kDefaultErrno));
  // Only the native x86_64 ABI: a syscall made through the i386 (int 0x80) or x32 ABI
  // would index a different table and slip past these rules, so it kills the process.
  filter.setAttribute(SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS);
  // A binary search instead of a chain of ~300 comparisons.
  filter.setAttribute(SCMP_FLTATR_CTL_OPTIMIZE, 2);

  for (const char* name : kAllowed) filter.add(SCMP_ACT_ALLOW, name);
  for (const char* name : kNotImplemented) filter.add(SCMP_ACT_ERRNO(ENOSYS), name);
  for (int number = kNewestReviewedSyscall + 1; number <= kHighestSyscall; ++number) {
    filter.addNumber(SCMP_ACT_ERRNO(ENOSYS), number, "unreviewed syscall");
  }

  // clone without namespace flags: threads and processes, never a new user namespace. (The
  // flags lie in the low half of the argument, the only half the kernel reads.)
  filter.add(SCMP_ACT_ALLOW, "clone", SCMP_A0(SCMP_CMP_MASKED_EQ, kNamespaceFlags, 0));
  // Exact 64-bit matches: the kernel truncates to an int, so it sees just these values.
  for (uint64_t persona : kPersonalities) {
    filter.add(SCMP_ACT_ALLOW, "personality", SCMP_A0(SCMP_CMP_EQ, persona));
  }
  // The family is an int: compare only the low half the kernel reads, or garbage in the
  // upper half would slip a denied family past (as it does past a 64-bit "!= AF_VSOCK").
  for (uint64_t family : kSocketFamilies) {
    filter.add(SCMP_ACT_ALLOW, "socket", SCMP_A0(SCMP_CMP_MASKED_EQ, 0xffffffffull, family));
  }

  SeccompProgram program;
  program.code_ = filter.exportBpf();
  return program;
}

}  // namespace nodeagent::isolator
