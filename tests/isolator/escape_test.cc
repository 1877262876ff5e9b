// Privileged: a hostile tenant's attempts to get out of its sandbox, or to hurt the host
// or a neighbour. Each attempt must fail the way the kernel (or the seccomp profile)
// reports it, and the host and a neighbour sandbox must be untouched afterwards.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <kj/debug.h>

#include <cstddef>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "support/privileged.h"
#include "tests/isolator/sandbox_fixture.h"

namespace nodeagent::isolator::testing {
namespace {

int exitCode(int status) {
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1000 - status;
}

std::string describe(const RunResult& r) {
  return "wait status " + std::to_string(r.waitStatus) + "\nstdout: " + r.out +
         "\nstderr: " + r.err;
}

// Helpers every probe script starts with. probe() makes a raw syscall; attempt() calls a
// Python function. Both print "<name> ok" or "<name> <ERRNO name>", one line each.
constexpr const char kPrelude[] = R"(
import ctypes, errno, os, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def report(name, result):
    print(name, result, flush=True)

def raw(nr, *args):
    conv = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *conv)
    return r, ctypes.get_errno()

def probe(name, nr, *args):
    r, e = raw(nr, *args)
    report(name, 'ok' if r >= 0 else errno.errorcode.get(e, str(e)))
    return r

def attempt(name, f, *args):
    try:
        result = f(*args)
        report(name, 'ok')
        return result
    except OSError as ex:
        report(name, errno.errorcode.get(ex.errno, str(ex.errno)))
)";

// Runs a probe script (kPrelude + body) with python3; expects exit 0 and returns the
// reported outcomes by name.
std::map<std::string, std::string> probe(TestSandbox& sandbox, const std::string& body) {
  RunResult r = sandbox.client().run({"python3", "-c", std::string(kPrelude) + body});
  EXPECT_EQ(exitCode(r.waitStatus), 0) << describe(r);
  std::map<std::string, std::string> outcomes;
  std::istringstream in(r.out);
  std::string name, result;
  while (in >> name >> result) outcomes[name] = result;
  return outcomes;
}

std::string sh(TestSandbox& sandbox, const std::string& script) {
  RunResult r = sandbox.client().run({"/bin/sh", "-c", script});
  EXPECT_EQ(exitCode(r.waitStatus), 0) << script << "\n" << describe(r);
  return r.out;
}

std::string readHostFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A neighbour sandbox with a long-running process and a file of its own; untouched()
// checks that all three (sandbox, process, file) are as they were.
class Neighbour {
 public:
  Neighbour() {
    sleeper_ = sandbox_.client().spawn({"sleep", "1000"});
    KJ_REQUIRE(sleeper_.has_value(), "neighbour: spawn sleep");
    sh(sandbox_, "echo mine > /tmp/neighbour-file");
  }
  TestSandbox& sandbox() { return sandbox_; }
  pid_t sleeperHostPid() { return hostPidOf(sleeper_->pidfd); }
  pid_t initHostPid() { return sandbox_.launched().pid; }

  void expectUntouched() {
    EXPECT_FALSE(pidfdExited(sleeper_->pidfd, 0)) << "the neighbour's process died";
    EXPECT_FALSE(pidfdExited(sandbox_.launched().pidfd, 0)) << "the neighbour's init died";
    EXPECT_EQ(sh(sandbox_, "cat /tmp/neighbour-file && echo 2 > /tmp/more && cat /tmp/more"),
              "mine\n2\n");
  }

 private:
  TestSandbox sandbox_;
  std::optional<SpawnedProcess> sleeper_;
};

// A host file created for one test and removed after it.
class HostFile {
 public:
  HostFile(std::string path, const std::string& content) : path_(kj::mv(path)) {
    std::ofstream(path_) << content;
    KJ_REQUIRE(access(path_.c_str(), F_OK) == 0, path_.c_str());
  }
  ~HostFile() { unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A listening socket in the host's namespaces, closed after the test.
kj::AutoCloseFd listenUnix(const std::string& name, bool abstract) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  KJ_REQUIRE(fd >= 0);
  kj::AutoCloseFd owned(fd);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  size_t offset = abstract ? 1 : 0;  // abstract: a leading NUL
  memcpy(addr.sun_path + offset, name.data(), name.size());
  socklen_t len = socklen_t(offsetof(sockaddr_un, sun_path) + offset + name.size());
  KJ_SYSCALL(bind(fd, reinterpret_cast<sockaddr*>(&addr), len), name.c_str());
  KJ_SYSCALL(listen(fd, 4));
  return owned;
}

kj::AutoCloseFd listenLoopback(uint16_t* port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  KJ_REQUIRE(fd >= 0);
  kj::AutoCloseFd owned(fd);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  KJ_SYSCALL(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)));
  KJ_SYSCALL(listen(fd, 4));
  socklen_t len = sizeof(addr);
  KJ_SYSCALL(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len));
  *port = ntohs(addr.sin_port);
  return owned;
}

// ---------------------------------------------------------------------------------------
// The host's files

TEST(Escape, HostFilesAreNotVisible) {
  NODEAGENT_REQUIRE_ROOT();
  std::string marker = "nodeagent-escape-" + std::to_string(getpid());
  HostFile inRoot("/root/" + marker, "host secret\n");
  HostFile inTmp("/tmp/" + marker, "host secret\n");
  TestSandbox sandbox;
  // What an attacker would try: the usual secrets, the host paths that mountinfo gives
  // away (the overlay's layers), and /proc links that lead to other roots.
  std::string mountinfo = sh(sandbox, "cat /proc/self/mountinfo");
  auto outcomes = probe(sandbox, R"(
marker = ')" + marker + R"('
attempt('shadow', open, '/etc/shadow')
attempt('root_marker', open, '/root/' + marker)
attempt('tmp_marker', open, '/tmp/' + marker)
attempt('skeleton', os.stat, ')" + skeletonDir() +
                                     R"(')
attempt('work_dir', os.stat, ')" + sandbox.spec().workDir +
                                     R"(')
attempt('via_self_root', open, '/proc/self/root/root/' + marker)
attempt('via_init_root', os.listdir, '/proc/1/root/')
attempt('via_dotdot', open, '/../../../root/' + marker)
report('root_listing', ','.join(sorted(os.listdir('/root'))) or 'empty')
report('tmp_listing', ','.join(sorted(os.listdir('/tmp'))) or 'empty')
)");
  EXPECT_EQ(outcomes["shadow"], "ENOENT");
  EXPECT_EQ(outcomes["root_marker"], "ENOENT");
  EXPECT_EQ(outcomes["tmp_marker"], "ENOENT");
  EXPECT_EQ(outcomes["skeleton"], "ENOENT");
  EXPECT_EQ(outcomes["work_dir"], "ENOENT");
  EXPECT_EQ(outcomes["via_self_root"], "ENOENT");
  EXPECT_EQ(outcomes["via_init_root"], "EACCES");  // init is not dumpable: no /proc/1/root
  EXPECT_EQ(outcomes["via_dotdot"], "ENOENT");
  EXPECT_EQ(outcomes["root_listing"], "empty");
  EXPECT_EQ(outcomes["tmp_listing"], "empty");
  // Only the sandbox's own mounts exist in its mount namespace.
  EXPECT_EQ(mountinfo.find(" /work"), std::string::npos) << mountinfo;
  EXPECT_EQ(mountinfo.find("/root "), std::string::npos) << mountinfo;
}

TEST(Escape, HostFilesAreNotWritable) {
  NODEAGENT_REQUIRE_ROOT();
  struct stat before;
  ASSERT_EQ(stat("/usr/bin/python3", &before), 0);
  std::string caBundle = readHostFile(skeletonDir() + "/etc/ssl/certs/ca-certificates.crt");
  TestSandbox sandbox;
  // /usr and the big skeleton files belong to host root, which the sandbox cannot act as:
  // its root's capabilities cover only its own uid range.
  auto outcomes = probe(sandbox, R"(
attempt('append_usr', open, '/usr/bin/python3', 'ab')
attempt('create_usr', open, '/usr/bin/evil', 'w')
attempt('chmod_usr', os.chmod, '/usr/bin/python3', 0o4777)
attempt('chown_usr', os.chown, '/usr/bin/python3', 0, 0)
attempt('rename_usr', os.rename, '/usr/bin/python3', '/usr/bin/p')
attempt('unlink_usr', os.unlink, '/usr/lib/os-release')
attempt('truncate_usr', os.truncate, '/usr/bin/python3', 0)
attempt('utime_usr', os.utime, '/usr/bin/python3', (0, 0))
attempt('append_lower', open, '/etc/ssl/certs/ca-certificates.crt', 'ab')
)");
  EXPECT_EQ(outcomes["append_usr"], "EACCES");
  EXPECT_EQ(outcomes["create_usr"], "EACCES");
  EXPECT_EQ(outcomes["chmod_usr"], "EPERM");
  EXPECT_EQ(outcomes["chown_usr"], "EPERM");
  EXPECT_EQ(outcomes["rename_usr"], "EACCES");
  EXPECT_EQ(outcomes["unlink_usr"], "EACCES");
  EXPECT_EQ(outcomes["truncate_usr"], "EACCES");
  EXPECT_EQ(outcomes["utime_usr"], "EPERM");
  EXPECT_EQ(outcomes["append_lower"], "EACCES");
  struct stat after;
  ASSERT_EQ(stat("/usr/bin/python3", &after), 0);
  EXPECT_EQ(after.st_mode, before.st_mode);
  EXPECT_EQ(after.st_size, before.st_size);
  EXPECT_EQ(after.st_mtim.tv_sec, before.st_mtim.tv_sec);
  EXPECT_NE(access("/usr/bin/evil", F_OK), 0);
  EXPECT_NE(access("/usr/bin/p", F_OK), 0);
  EXPECT_EQ(access("/usr/lib/os-release", F_OK), 0);
  EXPECT_EQ(readHostFile(skeletonDir() + "/etc/ssl/certs/ca-certificates.crt"), caBundle);
}

// ---------------------------------------------------------------------------------------
// Other processes

TEST(Escape, OnlyItsOwnProcessesAreVisibleOrReachable) {
  NODEAGENT_REQUIRE_ROOT();
  Neighbour neighbour;
  TestSandbox sandbox;
  auto sibling = sandbox.client().spawn({"sleep", "1000"});
  ASSERT_TRUE(sibling.has_value());
  std::vector<pid_t> foreign = {neighbour.sleeperHostPid(), neighbour.initHostPid(), getpid(),
                                sandbox.launched().pid};
  std::string pids;
  for (pid_t pid : foreign) pids += std::to_string(pid) + ",";
  auto outcomes = probe(sandbox, R"(
foreign = [)" + pids + R"(]
own = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
report('proc_pids', ','.join(map(str, own)))
for i, pid in enumerate(foreign):
    attempt('kill_%d' % i, os.kill, pid, 9)
    attempt('proc_%d' % i, os.stat, '/proc/%d' % pid)
    probe('pidfd_open_%d' % i, 434, pid, 0)
# kill(-1) reaches every process of the pid namespace but init and the caller.
attempt('kill_everyone', os.kill, -1, 9)
)");
  // init (1), the sibling and python itself: nothing of the host's or the neighbour's.
  EXPECT_EQ(outcomes["proc_pids"],
            "1," + std::to_string(sibling->pid) + "," + std::to_string(sibling->pid + 1))
      << "python should be the next pid after the sibling";
  for (size_t i = 0; i < foreign.size(); ++i) {
    std::string n = std::to_string(i);
    EXPECT_EQ(outcomes["kill_" + n], "ESRCH") << "pid " << foreign[i];
    EXPECT_EQ(outcomes["proc_" + n], "ENOENT") << "pid " << foreign[i];
    EXPECT_EQ(outcomes["pidfd_open_" + n], "ESRCH") << "pid " << foreign[i];
  }
  EXPECT_EQ(outcomes["kill_everyone"], "ok");
  EXPECT_TRUE(pidfdExited(sibling->pidfd, 5000)) << "kill(-1) reaches the sandbox's own";
  EXPECT_FALSE(pidfdExited(sandbox.launched().pidfd, 0)) << "but not its init";
  neighbour.expectUntouched();
}

TEST(Escape, PtraceIsDenied) {
  NODEAGENT_REQUIRE_ROOT();
  Neighbour neighbour;
  TestSandbox sandbox;
  auto sibling = sandbox.client().spawn({"sleep", "1000"});
  ASSERT_TRUE(sibling.has_value());
  // Even the sandbox's own processes: the filter refuses the whole ptrace family.
  std::string targets = "{'sibling': " + std::to_string(sibling->pid) + ", 'init': 1, " +
                        "'neighbour': " + std::to_string(neighbour.sleeperHostPid()) + "}";
  auto outcomes = probe(sandbox, "targets = " + targets + R"(
PTRACE_TRACEME, PTRACE_ATTACH, PTRACE_SEIZE = 0, 16, 0x4206
probe('traceme', 101, PTRACE_TRACEME, 0, 0, 0)
iov = ctypes.create_string_buffer(16)
for name, pid in targets.items():
    probe('attach_' + name, 101, PTRACE_ATTACH, pid, 0, 0)
    probe('seize_' + name, 101, PTRACE_SEIZE, pid, 0, 0)
    probe('vm_readv_' + name, 310, pid, iov, 1, iov, 1, 0)
    probe('vm_writev_' + name, 311, pid, iov, 1, iov, 1, 0)
    probe('kcmp_' + name, 312, os.getpid(), pid, 0, 0, 0)
me = probe('pidfd_self', 434, os.getpid(), 0)
probe('pidfd_getfd', 438, me, 0, 0)
)");
  EXPECT_EQ(outcomes["traceme"], "EPERM");
  for (const char* target : {"sibling", "init", "neighbour"}) {
    std::string t = target;
    EXPECT_EQ(outcomes["attach_" + t], "EPERM") << t;
    EXPECT_EQ(outcomes["seize_" + t], "EPERM") << t;
    EXPECT_EQ(outcomes["vm_readv_" + t], "EPERM") << t;
    EXPECT_EQ(outcomes["vm_writev_" + t], "EPERM") << t;
    EXPECT_EQ(outcomes["kcmp_" + t], "EPERM") << t;
  }
  EXPECT_EQ(outcomes["pidfd_self"], "ok");
  EXPECT_EQ(outcomes["pidfd_getfd"], "EPERM");
  EXPECT_FALSE(pidfdExited(sibling->pidfd, 0));
  EXPECT_EQ(procStatusField(hostPidOf(sibling->pidfd), "TracerPid"), "0");
  EXPECT_EQ(procStatusField(neighbour.sleeperHostPid(), "TracerPid"), "0");
  neighbour.expectUntouched();
}

// ---------------------------------------------------------------------------------------
// The kernel's more dangerous interfaces

TEST(Escape, MountsAndNamespacesAreDenied) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  auto outcomes = probe(sandbox, R"(
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET, SIGCHLD = 0x20000, 0x10000000, 0x40000000, 17
probe('mount_tmpfs', 165, b'tmpfs', b'/tmp', b'tmpfs', 0, 0)
probe('mount_bind', 165, b'/usr', b'/tmp', 0, 0x1000, 0)
probe('umount_mask', 166, b'/proc/keys', 2)
probe('umount_proc', 166, b'/proc', 2)
probe('pivot_root', 155, b'/tmp', b'/tmp')
probe('fsopen', 430, b'tmpfs', 0)
probe('open_tree', 428, -100, b'/usr', 1)
probe('move_mount', 429, -1, b'', -100, b'/tmp', 0)
probe('mount_setattr', 442, -100, b'/usr', 0, 0, 0)
probe('unshare_user', 272, CLONE_NEWUSER)
probe('unshare_mount', 272, CLONE_NEWNS)
probe('unshare_net', 272, CLONE_NEWNET)
ns = os.open('/proc/self/ns/mnt', os.O_RDONLY)
probe('setns', 308, ns, 0)
# A new user namespace through clone: the namespace flags are refused, plain fork works.
for name, flags in (('clone_user', CLONE_NEWUSER), ('clone_net', CLONE_NEWNET),
                    ('clone_plain', 0)):
    r, e = raw(56, flags | SIGCHLD, 0, 0, 0, 0)
    if r == 0:
        os._exit(0)
    if r > 0:
        os.waitpid(r, 0)
    report(name, 'ok' if r >= 0 else errno.errorcode[e])
# clone3 reports ENOSYS so that libc falls back to clone.
args = ctypes.create_string_buffer(struct.pack('QQQQQQQQQQQ', CLONE_NEWUSER, 0, 0, 0, SIGCHLD,
                                               0, 0, 0, 0, 0, 0))
probe('clone3', 435, args, 88)
)");
  for (const char* call : {"mount_tmpfs", "mount_bind", "umount_mask", "umount_proc", "pivot_root",
                           "fsopen", "open_tree", "move_mount", "mount_setattr", "unshare_user",
                           "unshare_mount", "unshare_net", "setns", "clone_user", "clone_net"}) {
    EXPECT_EQ(outcomes[call], "EPERM") << call;
  }
  EXPECT_EQ(outcomes["clone_plain"], "ok");
  EXPECT_EQ(outcomes["clone3"], "ENOSYS");
  // The same through the tools a tenant would reach for.
  RunResult unshare = sandbox.client().run({"unshare", "-U", "-r", "true"});
  EXPECT_EQ(exitCode(unshare.waitStatus), 1) << describe(unshare);
  EXPECT_NE(unshare.err.find("Operation not permitted"), std::string::npos) << unshare.err;
  RunResult mount = sandbox.client().run({"mount", "-t", "tmpfs", "tmpfs", "/tmp"});
  EXPECT_NE(exitCode(mount.waitStatus), 0) << describe(mount);
  EXPECT_NE(mount.err.find("permission denied"), std::string::npos) << mount.err;
  // Threads (clone without namespace flags) still work.
  EXPECT_EQ(sh(sandbox,
               "python3 -c \"import threading; t = threading.Thread(target=print, "
               "args=('thread',)); t.start(); t.join()\""),
            "thread\n");
}

TEST(Escape, KernelAttackSurfaceIsDenied) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  // Arguments a real exploit would use (and that work without the filter), so that what
  // is seen is the filter's answer and not argument validation.
  auto outcomes = probe(sandbox, R"(
# bpf(BPF_MAP_CREATE, array map of one 4-byte element)
attr = ctypes.create_string_buffer(struct.pack('IIII', 2, 4, 4, 1), 128)
probe('bpf', 321, 0, attr, 128)
params = ctypes.create_string_buffer(120)
probe('io_uring_setup', 425, 8, params)
probe('io_uring_enter', 426, 0, 1, 0, 0, 0, 0)
probe('io_uring_register', 427, 0, 0, 0, 0)
# perf_event_open: a user-mode software clock of this process only (allowed natively at
# perf_event_paranoid <= 2)
pattr = ctypes.create_string_buffer(128)
struct.pack_into('IIQ', pattr, 0, 1, 128, 0)
struct.pack_into('Q', pattr, 40, (1 << 5) | (1 << 6))
probe('perf_event_open', 298, pattr, 0, -1, -1, 0)
# userfaultfd(O_CLOEXEC | UFFD_USER_MODE_ONLY): allowed natively to unprivileged users
probe('userfaultfd', 323, 0o2000000 | 1)
probe('keyctl', 250, 0, -3, 1)
probe('add_key', 248, b'user', b'escape', b'secret', 6, -2)
probe('request_key', 249, b'user', b'escape', 0, 0)
probe('init_module', 175, 0, 0, b'')
probe('finit_module', 313, os.open('/dev/null', os.O_RDONLY), b'', 0)
probe('delete_module', 176, b'loop', 0)
probe('kexec_load', 246, 0, 0, 0, 0)
probe('kexec_file_load', 320, -1, -1, 0, b'', 0)
probe('modify_ldt', 154, 0, ctypes.create_string_buffer(16), 16)
probe('sethostname', 170, b'evil', 4)
probe('syslog', 103, 3, ctypes.create_string_buffer(64), 64)
probe('iopl', 172, 3)
probe('open_by_handle_at', 304, -100, ctypes.create_string_buffer(64), 0)
# personality: only Linux, its 32-bit flavour and UNAME26; ASLR cannot be switched off.
probe('personality_query', 135, 0xffffffff)
probe('personality_linux', 135, 0)
probe('personality_no_aslr', 135, 0x0040000)
probe('personality_read_implies_exec', 135, 0x0400000)
# Syscalls newer than the profile: ENOSYS, so libc falls back.
probe('unreviewed', 470, 0, 0, 0)
)");
  for (const char* call :
       {"bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "init_module",
        "finit_module", "delete_module", "kexec_load", "kexec_file_load", "modify_ldt",
        "sethostname", "syslog", "iopl", "open_by_handle_at", "personality_no_aslr",
        "personality_read_implies_exec"}) {
    EXPECT_EQ(outcomes[call], "EPERM") << call;
  }
  for (const char* call : {"io_uring_setup", "io_uring_enter", "io_uring_register", "unreviewed"}) {
    EXPECT_EQ(outcomes[call], "ENOSYS") << call;
  }
  EXPECT_EQ(outcomes["personality_query"], "ok");
  EXPECT_EQ(outcomes["personality_linux"], "ok");
  RunResult setarch = sandbox.client().run({"setarch", "x86_64", "-R", "true"});
  EXPECT_NE(exitCode(setarch.waitStatus), 0) << describe(setarch);
  EXPECT_NE(setarch.err.find("Operation not permitted"), std::string::npos) << setarch.err;
}

// i386 (int 0x80) and x32 syscalls would be looked up in other tables than the filter's
// rules describe: the process is killed instead.
TEST(Escape, ForeignSyscallAbisAreKilled) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  auto runCode = [&](const char* hex) {
    return sandbox.client().run({"python3", "-c",
                                 "import ctypes, mmap, sys\n"
                                 "code = bytes.fromhex(sys.argv[1])\n"
                                 "m = mmap.mmap(-1, 4096, prot=7)\n"
                                 "m.write(code)\n"
                                 "addr = ctypes.addressof(ctypes.c_char.from_buffer(m))\n"
                                 "print(ctypes.CFUNCTYPE(ctypes.c_long)(addr)(), flush=True)\n",
                                 hex});
  };
  // mov eax, 39 (getpid); syscall; ret -- the native ABI works.
  RunResult native = runCode("b8270000000f05c3");
  EXPECT_EQ(exitCode(native.waitStatus), 0) << describe(native);
  EXPECT_NE(native.out, "") << describe(native);
  // mov eax, 20 (i386 getpid); int 0x80; ret
  RunResult i386 = runCode("b814000000cd80c3");
  ASSERT_TRUE(WIFSIGNALED(i386.waitStatus)) << describe(i386);
  EXPECT_EQ(WTERMSIG(i386.waitStatus), SIGSYS);
  // mov eax, 0x40000027 (x32 getpid); syscall; ret
  RunResult x32 = runCode("b8270000400f05c3");
  ASSERT_TRUE(WIFSIGNALED(x32.waitStatus)) << describe(x32);
  EXPECT_EQ(WTERMSIG(x32.waitStatus), SIGSYS);
  // The sandbox goes on.
  EXPECT_EQ(exitCode(sandbox.client().run({"true"}).waitStatus), 0);
}

TEST(Escape, DevicesCannotBeCreated) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  auto outcomes = probe(sandbox, R"(
import stat
attempt('block_sda', os.mknod, '/tmp/sda', stat.S_IFBLK | 0o600, os.makedev(8, 0))
attempt('char_mem', os.mknod, '/tmp/mem', stat.S_IFCHR | 0o600, os.makedev(1, 1))
attempt('char_kmsg', os.mknod, '/dev/shm/kmsg', stat.S_IFCHR | 0o600, os.makedev(1, 11))
attempt('fifo', os.mkfifo, '/tmp/fifo')
attempt('open_dev_mem', open, '/dev/mem', 'rb')
)");
  EXPECT_EQ(outcomes["block_sda"], "EPERM");
  EXPECT_EQ(outcomes["char_mem"], "EPERM");
  EXPECT_EQ(outcomes["char_kmsg"], "EPERM");
  EXPECT_EQ(outcomes["fifo"], "ok");  // fifos are no devices
  EXPECT_EQ(outcomes["open_dev_mem"], "ENOENT");
}

TEST(Escape, DangerousCapabilitiesAreGone) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  auto outcomes = probe(sandbox, R"(
status = dict(l.split(':\t', 1) for l in open('/proc/self/status').read().splitlines()
              if ':\t' in l)
for field in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb'):
    caps = int(status[field], 16)
    for bit, name in ((21, 'SYS_ADMIN'), (13, 'NET_RAW'), (12, 'NET_ADMIN'), (19, 'SYS_PTRACE'),
                      (16, 'SYS_MODULE'), (17, 'SYS_RAWIO'), (2, 'DAC_READ_SEARCH'),
                      (39, 'BPF'), (38, 'PERFMON'), (25, 'SYS_TIME'), (24, 'SYS_RESOURCE')):
        report(field + '_' + name, 'set' if caps & (1 << bit) else 'clear')
report('seccomp', status['Seccomp'].strip())
report('no_new_privs', status['NoNewPrivs'].strip())
attempt('raw_icmp', socket.socket, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
attempt('raw_ipv6', socket.socket, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
attempt('packet', socket.socket, socket.AF_PACKET, socket.SOCK_RAW, 0)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
SO_RCVBUFFORCE, SO_MARK = 33, 36
attempt('rcvbufforce', s.setsockopt, socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 24)
attempt('so_mark', s.setsockopt, socket.SOL_SOCKET, SO_MARK, 1)
)");
  for (const char* field : {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}) {
    for (const char* cap :
         {"SYS_ADMIN", "NET_RAW", "NET_ADMIN", "SYS_PTRACE", "SYS_MODULE", "SYS_RAWIO",
          "DAC_READ_SEARCH", "BPF", "PERFMON", "SYS_TIME", "SYS_RESOURCE"}) {
      std::string key = std::string(field) + "_" + cap;
      EXPECT_EQ(outcomes[key], "clear") << key;
    }
  }
  EXPECT_EQ(outcomes["seccomp"], "2");  // SECCOMP_MODE_FILTER
  EXPECT_EQ(outcomes["no_new_privs"], "1");
  EXPECT_EQ(outcomes["raw_icmp"], "EPERM");
  EXPECT_EQ(outcomes["raw_ipv6"], "EPERM");
  EXPECT_EQ(outcomes["packet"], "EPERM");
  EXPECT_EQ(outcomes["rcvbufforce"], "EPERM");
  EXPECT_EQ(outcomes["so_mark"], "EPERM");
}

// ---------------------------------------------------------------------------------------
// /proc and /sys

TEST(Escape, ProcIsMaskedAndReadOnly) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  auto outcomes = probe(sandbox, R"(
for name in ('kcore', 'keys', 'timer_list', 'sched_debug', 'latency_stats', 'timer_stats',
             'interrupts'):
    path = '/proc/' + name
    if not os.path.exists(path):
        report(name, 'absent')
        continue
    st = os.stat(path)
    masked = (st.st_rdev == os.makedev(1, 3)) and open(path, 'rb').read() == b''
    report(name, 'masked' if masked else 'visible')
for name in ('acpi', 'scsi', 'asound'):
    path = '/proc/' + name
    if not os.path.exists(path):
        report(name, 'absent')
        continue
    report(name, 'empty' if os.listdir(path) == [] else 'visible')
    attempt(name + '_write', open, path + '/x', 'w')
# Knobs of the sandbox's own ipc and pid namespaces (its root could write them without the
# read-only bind), and the host's.
attempt('shmmax', open, '/proc/sys/kernel/shmmax', 'w')
attempt('ns_last_pid', open, '/proc/sys/kernel/ns_last_pid', 'w')
attempt('hostname', open, '/proc/sys/kernel/hostname', 'w')
attempt('core_pattern', open, '/proc/sys/kernel/core_pattern', 'w')
attempt('sysrq_trigger', open, '/proc/sysrq-trigger', 'w')
for name in ('irq', 'bus', 'fs'):
    path = '/proc/' + name
    if os.path.exists(path):
        report(name + '_ro', 'ro' if os.statvfs(path).f_flag & os.ST_RDONLY else 'rw')
    else:
        report(name + '_ro', 'ro')
writable = []
for top, dirs, files in os.walk('/proc/sys'):
    for f in files:
        try:
            open(os.path.join(top, f), 'r+').close()
            writable.append(os.path.join(top, f))
        except OSError:
            pass
report('writable_sysctls', ','.join(writable) or 'none')
report('proc_rw', 'ro' if os.statvfs('/proc').f_flag & os.ST_RDONLY else 'rw')
report('sys_readable', open('/proc/sys/kernel/ostype').read().strip())
)");
  for (const char* name : {"kcore", "keys", "timer_list", "sched_debug", "latency_stats",
                           "timer_stats", "interrupts"}) {
    EXPECT_TRUE(outcomes[name] == "masked" || outcomes[name] == "absent")
        << name << ": " << outcomes[name];
  }
  EXPECT_EQ(outcomes["keys"], "masked");        // present on every kernel with CONFIG_KEYS
  EXPECT_EQ(outcomes["timer_list"], "masked");  // and with timers
  EXPECT_EQ(outcomes["interrupts"], "masked");  // and with interrupts
  for (const char* name : {"acpi", "scsi", "asound"}) {
    std::string n = name;
    EXPECT_TRUE(outcomes[n] == "empty" || outcomes[n] == "absent") << n << ": " << outcomes[n];
    if (outcomes[n] == "empty") {
      EXPECT_EQ(outcomes[n + "_write"], "EROFS") << n;
    }
  }
  EXPECT_EQ(outcomes["shmmax"], "EROFS");
  EXPECT_EQ(outcomes["ns_last_pid"], "EROFS");
  EXPECT_EQ(outcomes["writable_sysctls"], "none");
  EXPECT_EQ(outcomes["hostname"], "EROFS");
  EXPECT_EQ(outcomes["core_pattern"], "EROFS");
  // Without CONFIG_MAGIC_SYSRQ there is none.
  EXPECT_EQ(outcomes["sysrq_trigger"],
            access("/proc/sysrq-trigger", F_OK) == 0 ? "EROFS" : "ENOENT");
  for (const char* name : {"irq_ro", "bus_ro", "fs_ro"}) EXPECT_EQ(outcomes[name], "ro") << name;
  // The rest of /proc works as usual.
  EXPECT_EQ(outcomes["proc_rw"], "rw");
  EXPECT_EQ(outcomes["sys_readable"], "Linux");
  EXPECT_NE(sh(sandbox, "cat /proc/self/status"), "");
}

TEST(Escape, SysAndOtherKernelFilesystemsAreNotMounted) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  std::string types = sh(sandbox, "cut -d' ' -f9- /proc/self/mountinfo | cut -d' ' -f2 | sort -u");
  for (const char* type : {"sysfs", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "bpf",
                           "configfs", "fusectl", "pstore", "efivarfs", "hugetlbfs"}) {
    EXPECT_EQ(("\n" + types).find("\n" + std::string(type) + "\n"), std::string::npos)
        << type << " is mounted:\n"
        << types;
  }
  EXPECT_EQ(sh(sandbox, "ls -A /sys 2>/dev/null | wc -l"), "0\n");
  auto outcomes = probe(sandbox, R"(
attempt('cgroup_procs', open, '/sys/fs/cgroup/cgroup.procs', 'w')
attempt('kernel_debug', os.stat, '/sys/kernel/debug')
)");
  EXPECT_EQ(outcomes["cgroup_procs"], "ENOENT");
  EXPECT_EQ(outcomes["kernel_debug"], "ENOENT");
}

// ---------------------------------------------------------------------------------------
// The agent's socket and the host's network

TEST(Escape, HostSocketsAreUnreachable) {
  NODEAGENT_REQUIRE_ROOT();
  std::string name = "nodeagent-escape-" + std::to_string(getpid());
  kj::AutoCloseFd abstract = listenUnix(name, /*abstract=*/true);
  std::string runPath = "/run/" + name + ".sock";
  std::string tmpPath = "/tmp/" + name + ".sock";
  unlink(runPath.c_str());
  unlink(tmpPath.c_str());
  kj::AutoCloseFd inRun = listenUnix(runPath, false);
  kj::AutoCloseFd inTmp = listenUnix(tmpPath, false);
  KJ_DEFER(unlink(runPath.c_str()); unlink(tmpPath.c_str()));
  uint16_t port = 0;
  kj::AutoCloseFd tcp = listenLoopback(&port);
  TestSandbox sandbox;
  auto outcomes = probe(sandbox, R"(
import stat
name, port = ')" + name + R"(', )" + std::to_string(port) +
                                     R"(
def connect(family, address):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(address)
attempt('abstract', connect, socket.AF_UNIX, '\0' + name)
attempt('run_path', connect, socket.AF_UNIX, '/run/%s.sock' % name)
attempt('tmp_path', connect, socket.AF_UNIX, '/tmp/%s.sock' % name)
attempt('agent_socket', connect, socket.AF_UNIX, '/run/nodeagent.sock')
attempt('host_loopback', connect, socket.AF_INET, ('127.0.0.1', port))
attempt('outside', connect, socket.AF_INET, ('10.0.0.1', 80))
attempt('vsock', socket.socket, 40, socket.SOCK_STREAM)
# With garbage in the upper half of the (int) family argument, which the kernel ignores.
probe('vsock_high_bits', 41, (1 << 32) | 40, socket.SOCK_STREAM, 0)
probe('unix_high_bits', 41, (1 << 32) | socket.AF_UNIX, socket.SOCK_STREAM, 0)
# Families beyond unix, inet, inet6 and netlink are a kernel attack surface.
attempt('alg', socket.socket, 38, socket.SOCK_SEQPACKET)
attempt('tipc', socket.socket, 30, socket.SOCK_RDM)
attempt('netlink', socket.socket, socket.AF_NETLINK, socket.SOCK_RAW, 0)
attempt('inet6', socket.socket, socket.AF_INET6, socket.SOCK_DGRAM)
sockets = []
for top in ('/run', '/tmp', '/var', '/dev'):
    for dirpath, dirs, files in os.walk(top):
        for f in files + dirs:
            p = os.path.join(dirpath, f)
            if stat.S_ISSOCK(os.lstat(p).st_mode):
                sockets.append(p)
report('sockets', ','.join(sockets) or 'none')
)");
  EXPECT_EQ(outcomes["abstract"], "ECONNREFUSED");  // another net namespace
  EXPECT_EQ(outcomes["run_path"], "ENOENT");
  EXPECT_EQ(outcomes["tmp_path"], "ENOENT");
  EXPECT_EQ(outcomes["agent_socket"], "ENOENT");
  EXPECT_EQ(outcomes["host_loopback"], "ECONNREFUSED");  // its own loopback
  EXPECT_EQ(outcomes["outside"], "ENETUNREACH");
  // vsock ignores net namespaces: the filter says no.
  EXPECT_EQ(outcomes["vsock"], "EPERM");
  EXPECT_EQ(outcomes["vsock_high_bits"], "EPERM");
  EXPECT_EQ(outcomes["unix_high_bits"], "ok");
  EXPECT_EQ(outcomes["alg"], "EPERM");
  EXPECT_EQ(outcomes["tipc"], "EPERM");
  EXPECT_EQ(outcomes["netlink"], "ok");
  EXPECT_EQ(outcomes["inet6"], "ok");
  EXPECT_EQ(outcomes["sockets"], "none");
  // Nothing knocked at the host's sockets.
  for (int fd : {abstract.get(), inRun.get(), inTmp.get(), tcp.get()}) {
    int flags = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    EXPECT_LT(accept(fd, nullptr, nullptr), 0);
    EXPECT_EQ(errno, EAGAIN);
  }
}

// ---------------------------------------------------------------------------------------
// Bombs

TEST(Escape, MemoryBombIsOomKilledAndTheNeighbourRuns) {
  NODEAGENT_REQUIRE_ROOT();
  Neighbour neighbour;
  SandboxOptions options;
  options.limits.memoryBytes = 64ull << 20;
  TestSandbox sandbox(options);
  uint64_t before = sandbox.cgroup().stats().oomKills;
  RunResult r = sandbox.client().run({"python3", "-c",
                                      "chunks = []\n"
                                      "while True:\n"
                                      "    chunks.append(bytearray(16 << 20))\n"
                                      "    chunks[-1][::4096] = b'x' * (4 << 10)\n"});
  ASSERT_TRUE(WIFSIGNALED(r.waitStatus)) << describe(r);
  EXPECT_EQ(WTERMSIG(r.waitStatus), SIGKILL);
  EXPECT_GT(sandbox.cgroup().stats().oomKills, before);
  EXPECT_LE(sandbox.cgroup().stats().memoryPeakBytes, 64ull << 20);
  // Only the bomb died: the sandbox's init serves on, the neighbour never noticed.
  EXPECT_EQ(sh(sandbox, "echo alive"), "alive\n");
  neighbour.expectUntouched();
}

TEST(Escape, ForkBombHitsPidsMax) {
  NODEAGENT_REQUIRE_ROOT();
  Neighbour neighbour;
  SandboxOptions options;
  options.limits.pidsMax = 64;
  TestSandbox sandbox(options);
  // Forks sleepers until fork fails, reports why, and stays: the sandbox is left full.
  auto bomb = sandbox.client().spawn({"python3", "-c",
                                      "import errno, os, time\n"
                                      "n = 0\n"
                                      "while True:\n"
                                      "    try:\n"
                                      "        pid = os.fork()\n"
                                      "    except OSError as e:\n"
                                      "        print(n, errno.errorcode[e.errno], flush=True)\n"
                                      "        break\n"
                                      "    if pid == 0:\n"
                                      "        break\n"
                                      "    n += 1\n"
                                      "os.close(1); os.close(2)\n"
                                      "time.sleep(1000)\n"});
  ASSERT_TRUE(bomb.has_value());
  std::string out, errOut;
  readBoth(bomb->stdoutFd, bomb->stderrFd, &out, &errOut);
  std::istringstream in(out);
  int forked = 0;
  std::string err;
  in >> forked >> err;
  EXPECT_EQ(err, "EAGAIN") << out << errOut;
  // pids.max counts init and the bomb itself.
  EXPECT_EQ(forked, 62) << out;
  EXPECT_EQ(sandbox.cgroup().stats().pidsCurrent, 64u);
  // The sandbox is full: init cannot fork either, and says so.
  std::string spawnError;
  EXPECT_FALSE(sandbox.client().spawn({"true"}, &spawnError).has_value());
  EXPECT_NE(spawnError.find("Resource temporarily unavailable"), std::string::npos) << spawnError;
  // The host forks as usual, and the neighbour too.
  pid_t child = fork();
  if (child == 0) _exit(7);
  ASSERT_GT(child, 0);
  int status;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_EQ(exitCode(status), 7);
  neighbour.expectUntouched();
  EXPECT_EQ(sh(neighbour.sandbox(), "for i in 1 2 3 4 5; do sh -c true; done; echo forked"),
            "forked\n");
}

TEST(Escape, FillingTheDiskIsEnospcInsideOnly) {
  NODEAGENT_REQUIRE_ROOT();
  Neighbour neighbour;
  SandboxOptions options;
  options.diskBytes = 16ull << 20;
  TestSandbox sandbox(options);
  auto outcomes = probe(sandbox, R"(
st = os.statvfs('/tmp')
report('disk_bytes', st.f_blocks * st.f_frsize)
def fill(path):
    n = 0
    with open(path, 'wb', buffering=0) as f:
        while True:
            n += f.write(b'x' * 65536)
attempt('fill_bytes', fill, '/tmp/fill')
os.unlink('/tmp/fill')
# Inodes run out too: the file count is bounded as well as the bytes.
def files():
    os.mkdir('/tmp/many')
    for i in range(1000000):
        open('/tmp/many/%d' % i, 'w').close()
attempt('fill_inodes', files)
)");
  // What filled is the sandbox's own 16 MiB, not the host's disk.
  EXPECT_EQ(outcomes["disk_bytes"], std::to_string(16ull << 20));
  EXPECT_EQ(outcomes["fill_bytes"], "ENOSPC");
  EXPECT_EQ(outcomes["fill_inodes"], "ENOSPC");
  HostFile hostWrite(scratchDir() + "/host-write", std::string(1 << 20, 'h'));
  EXPECT_EQ(readHostFile(hostWrite.path()).size(), size_t(1) << 20);
  neighbour.expectUntouched();
  EXPECT_EQ(
      sh(neighbour.sandbox(), "head -c 1048576 /dev/zero > /tmp/one-mib && wc -c < /tmp/one-mib"),
      "1048576\n");
}

}  // namespace
}  // namespace nodeagent::isolator::testing
