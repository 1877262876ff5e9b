// Privileged: launches real sandboxes (namespaces, overlay root, cgroups) and talks to
// their init.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/nsfs.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <kj/debug.h>

#include <atomic>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "isolator/file_util.h"
#include "isolator/launcher.h"
#include "isolator/netns_pool.h"
#include "support/privileged.h"
#include "tests/isolator/sandbox_fixture.h"

namespace nodeagent::isolator::testing {
namespace {

std::string readHostFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

int exitCode(int status) {
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1000 - status;
}

// Runs `script` with /bin/sh -c; expects exit 0 and returns stdout.
std::string sh(TestSandbox& sandbox, const std::string& script) {
  RunResult r = sandbox.client().run({"/bin/sh", "-c", script});
  EXPECT_EQ(exitCode(r.waitStatus), 0) << script << "\nstdout: " << r.out << "\nstderr: " << r.err;
  return r.out;
}

TEST(Sandbox, PythonStdoutStderrAndExitCode) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  RunResult r =
      sandbox.client().run({"python3", "-c",
                            "import sys; print('to stdout'); print('to stderr', file=sys.stderr); "
                            "sys.exit(3)"});
  EXPECT_EQ(r.out, "to stdout\n");
  EXPECT_EQ(r.err, "to stderr\n");
  ASSERT_TRUE(WIFEXITED(r.waitStatus));
  EXPECT_EQ(WEXITSTATUS(r.waitStatus), 3);
}

TEST(Sandbox, NodeRuns) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  RunResult r = sandbox.client().run({"node", "-e", "console.log(6*7); console.error('oops')"});
  EXPECT_EQ(r.out, "42\n");
  EXPECT_EQ(r.err, "oops\n");
  EXPECT_EQ(exitCode(r.waitStatus), 0);
}

TEST(Sandbox, StdinPipe) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  auto p = sandbox.client().spawn({"cat"}, nullptr, {}, "", /*stdinOpen=*/true);
  ASSERT_TRUE(p.has_value());
  ASSERT_EQ(write(p->stdinFd, "hello\n", 6), 6);
  sandbox.client().closeStdin(*p);
  std::string out, err;
  readBoth(p->stdoutFd, p->stderrFd, &out, &err);
  EXPECT_EQ(out, "hello\n");
  EXPECT_EQ(exitCode(sandbox.client().waitExit(p->pid)), 0);
}

TEST(Sandbox, SignalsShowInExited) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  auto p = sandbox.client().spawn({"sleep", "1000"});
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(sandbox.client().signal(p->pid, SIGTERM), 0);
  int status = sandbox.client().waitExit(p->pid);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGTERM);
  // Gone now: ESRCH. init itself and "everyone" are refused.
  EXPECT_EQ(sandbox.client().signal(p->pid, SIGTERM), ESRCH);
  EXPECT_EQ(sandbox.client().signal(1, SIGKILL), EPERM);
  EXPECT_EQ(sandbox.client().signal(-1, SIGKILL), EINVAL);
}

TEST(Sandbox, SpawnFailures) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  std::string error;
  EXPECT_FALSE(sandbox.client().spawn({"no-such-binary-xyz"}, &error).has_value());
  EXPECT_NE(error.find("exec \"no-such-binary-xyz\": No such file or directory"), std::string::npos)
      << error;
  EXPECT_FALSE(sandbox.client().spawn({"/usr/bin/nope"}, &error).has_value());
  EXPECT_NE(error.find("No such file or directory"), std::string::npos) << error;
  EXPECT_FALSE(sandbox.client().spawn({"true"}, &error, {}, "/does/not/exist").has_value());
  EXPECT_NE(error.find("chdir \"/does/not/exist\""), std::string::npos) << error;
  EXPECT_FALSE(sandbox.client().spawn({"/etc/passwd"}, &error).has_value());
  EXPECT_NE(error.find("Permission denied"), std::string::npos) << error;
  // init still serves after failures.
  EXPECT_EQ(exitCode(sandbox.client().run({"true"}).waitStatus), 0);
}

TEST(Sandbox, EnvCwdAndPath) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  auto p = sandbox.client().spawn({"sh", "-c", "echo $FOO; pwd; echo $PATH"}, nullptr, {"FOO=bar"},
                                  "/tmp");
  ASSERT_TRUE(p.has_value());
  std::string out, err;
  readBoth(p->stdoutFd, p->stderrFd, &out, &err);
  EXPECT_EQ(out, "bar\n/tmp\n/usr/local/bin:/usr/bin:/bin\n");
  EXPECT_EQ(exitCode(sandbox.client().waitExit(p->pid)), 0);
}

TEST(Sandbox, OnlyItsOwnProcesses) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  auto sleeper = sandbox.client().spawn({"sleep", "1000"});
  ASSERT_TRUE(sleeper.has_value());
  RunResult psRun = sandbox.client().run({"ps", "-e", "-o", "pid=,comm="});
  EXPECT_EQ(exitCode(psRun.waitStatus), 0) << psRun.err;
  std::string ps = psRun.out;
  std::set<std::string> lines;
  std::istringstream in(ps);
  std::string line;
  while (std::getline(in, line)) lines.insert(line.substr(line.find_first_not_of(' ')));
  EXPECT_TRUE(lines.count("1 nodeagent-init")) << ps;
  EXPECT_TRUE(lines.count(std::to_string(sleeper->pid) + " sleep")) << ps;
  EXPECT_EQ(lines.size(), 3u) << ps;  // init, sleep, ps
  std::string procPids = sh(sandbox, "ls /proc | grep -E '^[0-9]+$' | sort -n | head -1");
  EXPECT_EQ(procPids, "1\n");
}

TEST(Sandbox, HostnameAndIdentity) {
  NODEAGENT_REQUIRE_ROOT();
  SandboxOptions options;
  options.hostname = "box-42";
  TestSandbox sandbox(options);
  EXPECT_EQ(sh(sandbox, "uname -n"), "box-42\n");
  EXPECT_EQ(sh(sandbox, "cat /etc/hostname"), "box-42\n");
  EXPECT_NE(sh(sandbox, "cat /etc/hosts").find("box-42"), std::string::npos);
  EXPECT_EQ(sh(sandbox, "id -u; id -g; id -un"), "0\n0\nroot\n");
  // Loopback is up, nothing else exists.
  EXPECT_EQ(sh(sandbox,
               "ls /sys/class/net 2>/dev/null; cat /proc/net/dev | tail -n +3 | cut -d: "
               "-f1 | tr -d ' '"),
            "lo\n");
  EXPECT_NE(sh(sandbox,
               "python3 -c \"import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); "
               "s.listen(); c=socket.create_connection(s.getsockname()); print('ok')\""),
            "");
}

ino_t inodeOf(int fd) {
  struct stat st;
  EXPECT_EQ(fstat(fd, &st), 0);
  return st.st_ino;
}

ino_t inodeOf(const std::string& path) {
  struct stat st;
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
  return st.st_ino;
}

TEST(NetnsPool, KeepsItsSparesReadyAndHandsEachOutOnce) {
  NODEAGENT_REQUIRE_ROOT();
  const ino_t host = inodeOf("/proc/thread-self/ns/net");
  NetnsPool pool(2);
  ASSERT_EQ(pool.waitReady(2, std::chrono::seconds(10)), 2u) << pool.lastError();
  kj::AutoCloseFd a = pool.take();
  kj::AutoCloseFd b = pool.take();
  ASSERT_GE(a.get(), 0);
  ASSERT_GE(b.get(), 0);
  EXPECT_EQ(ioctl(a, NS_GET_NSTYPE), CLONE_NEWNET);
  std::set<ino_t> seen = {inodeOf(a), inodeOf(b), host};
  EXPECT_EQ(seen.size(), 3u);  // two new namespaces, neither the host's
  // Taking wakes the pool's thread: it makes replacements, never the same ones.
  ASSERT_EQ(pool.waitReady(2, std::chrono::seconds(10)), 2u) << pool.lastError();
  kj::AutoCloseFd c = pool.take();
  ASSERT_GE(c.get(), 0);
  EXPECT_TRUE(seen.insert(inodeOf(c)).second);
  // No thread of ours stays in a namespace it handed out, the pool's own included.
  DIR* tasks = opendir("/proc/self/task");
  ASSERT_NE(tasks, nullptr);
  int threads = 0;
  while (struct dirent* task = readdir(tasks)) {
    if (task->d_name[0] == '.') continue;
    ++threads;
    EXPECT_EQ(inodeOf(std::string("/proc/self/task/") + task->d_name + "/ns/net"), host);
  }
  closedir(tasks);
  EXPECT_GE(threads, 2);  // the pool's thread was among them
}

// What every sandbox gets on its loopback, whether its namespace came from the
// pool or not: port 80 for the sandbox's root and for an ordinary user.
void expectLowPortsOpen(TestSandbox& sandbox) {
  EXPECT_EQ(sh(sandbox,
               "python3 -c \"\nimport os, socket\nfor uid in (0, 1000):\n"
               "  pid = os.fork()\n  if pid == 0:\n    os.setuid(uid)\n"
               "    s = socket.socket(); s.bind(('127.0.0.1', 80)); s.listen()\n"
               "    c = socket.create_connection(('127.0.0.1', 80)); os._exit(0)\n"
               "  print(uid, os.waitpid(pid, 0)[1], flush=True)\n\""),
            "0 0\n1000 0\n");
}

TEST(Sandbox, ItsOwnNetworkNamespaceHasLoopbackAndLowPortsLikeAPooledOne) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;  // no netnsFd: init sets its namespace up itself
  EXPECT_EQ(sh(sandbox, "cat /proc/sys/net/ipv4/ip_unprivileged_port_start"), "0\n");
  expectLowPortsOpen(sandbox);
}

TEST(NetnsPool, ASandboxInAReadyNamespaceHasLoopbackAndLowPortsAndCannotReconfigureIt) {
  NODEAGENT_REQUIRE_ROOT();
  const ino_t host = inodeOf("/proc/thread-self/ns/net");
  NetnsPool pool(2);
  ASSERT_EQ(pool.waitReady(2, std::chrono::seconds(10)), 2u) << pool.lastError();
  kj::AutoCloseFd netns = pool.take();
  SandboxOptions options;
  options.netnsFd = netns.get();
  TestSandbox sandbox(options);
  EXPECT_EQ(inodeOf("/proc/" + std::to_string(sandbox.launched().pid) + "/ns/net"), inodeOf(netns));
  // The zygote that forked init went back to the host's namespace.
  EXPECT_EQ(inodeOf("/proc/" + std::to_string(testZygote().pid()) + "/ns/net"), host);
  {
    // So does the launching thread, which enters it around the clone on the exec path.
    kj::AutoCloseFd second = pool.take();
    SandboxOptions execd;
    execd.netnsFd = second.get();
    execd.execInit = true;
    TestSandbox execdSandbox(execd);
    EXPECT_EQ(inodeOf("/proc/" + std::to_string(execdSandbox.launched().pid) + "/ns/net"),
              inodeOf(second));
    EXPECT_EQ(inodeOf("/proc/thread-self/ns/net"), host);
  }
  EXPECT_EQ(sh(sandbox, "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '"), "lo\n");
  expectLowPortsOpen(sandbox);
  // The namespace belongs to the host's user namespace, not the sandbox's.
  int owner = ioctl(netns, NS_GET_USERNS);
  ASSERT_GE(owner, 0) << strerror(errno);
  kj::AutoCloseFd ownerFd(owner);
  EXPECT_EQ(inodeOf(ownerFd), inodeOf("/proc/self/ns/user"));
  EXPECT_NE(inodeOf(ownerFd),
            inodeOf("/proc/" + std::to_string(sandbox.launched().pid) + "/ns/user"));
  // So taking loopback down is refused.
  EXPECT_EQ(sh(sandbox,
               "python3 -c \"\nimport fcntl, socket, struct\ns = socket.socket()\n"
               "try:\n  fcntl.ioctl(s, 0x8914, struct.pack('16sh22x', b'lo', 0))\n"
               "  print('changed')\nexcept OSError as e:\n  print(e.errno)\n\""),
            "1\n");
}

TEST(Sandbox, HostUidIsTheMappedRange) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  auto p = sandbox.client().spawn({"sleep", "1000"});
  ASSERT_TRUE(p.has_value());
  pid_t host = hostPidOf(p->pidfd);
  ASSERT_GT(host, 0);
  std::string base = std::to_string(sandbox.spec().uidBase);
  EXPECT_EQ(procStatusField(host, "Uid"), base + "\t" + base + "\t" + base + "\t" + base);
  EXPECT_EQ(procStatusField(host, "Gid"), base + "\t" + base + "\t" + base + "\t" + base);
  EXPECT_EQ(procStatusField(host, "Groups"), "");
  EXPECT_EQ(procStatusField(host, "NoNewPrivs"), "1");
  // Docker's default capability set without CAP_NET_RAW, nothing more, and the filter.
  EXPECT_EQ(procStatusField(host, "CapEff"), "00000000a80405fb");
  EXPECT_EQ(procStatusField(host, "CapBnd"), "00000000a80405fb");
  EXPECT_EQ(procStatusField(host, "Seccomp"), "2");
  EXPECT_EQ(procStatusField(host, "Seccomp_filters"), "1");
  // init too runs as the range's root, not as host root.
  EXPECT_EQ(procStatusField(sandbox.launched().pid, "Uid"),
            base + "\t" + base + "\t" + base + "\t" + base);
  EXPECT_EQ(sandbox.client().signal(p->pid, SIGKILL), 0);
}

TEST(Sandbox, FilesystemIsTheSkeletonAndUsr) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  EXPECT_EQ(sh(sandbox, "cat /etc/passwd"), readHostFile(skeletonDir() + "/etc/passwd"));
  EXPECT_EQ(sh(sandbox, "ls -A /home /root"), "/home:\n\n/root:\n");
  EXPECT_EQ(sh(sandbox, "stat -c '%a %U' /root /tmp / /etc /etc/passwd"),
            "700 root\n1777 root\n755 root\n755 root\n644 root\n");
  sh(sandbox, "test -x /usr/bin/python3 && test -L /bin && test -e /bin/sh");
  sh(sandbox, "test -s /etc/ssl/certs/ca-certificates.crt");
  // /usr belongs to (unmapped) host root: not writable, even for the sandbox's root.
  RunResult w = sandbox.client().run({"/bin/sh", "-c", "echo x > /usr/bin/evil"});
  EXPECT_NE(exitCode(w.waitStatus), 0);
  EXPECT_NE(w.err.find("Permission denied"), std::string::npos) << w.err;
  EXPECT_NE(exitCode(sandbox.client().run({"rm", "-f", "/usr/bin/python3"}).waitStatus), 0);
  EXPECT_TRUE(access("/usr/bin/python3", X_OK) == 0);
  struct stat st;
  EXPECT_NE(stat("/usr/bin/evil", &st), 0);
  // The writable parts are the sandbox's own.
  EXPECT_EQ(sh(sandbox,
               "echo hi > /tmp/f && cat /tmp/f && echo 1 >> /etc/hosts && "
               "mkdir /root/x && echo ok"),
            "hi\nok\n");
  // The host's /etc is not there.
  std::string hostname = readHostFile("/etc/hostname");
  EXPECT_NE(sh(sandbox, "cat /etc/hostname"), hostname);
  sh(sandbox, "test ! -e /etc/shadow && test ! -e /etc/machine-id && test ! -e /var/lib/dpkg");
  // A minimal /dev.
  EXPECT_EQ(sh(sandbox, "ls /dev | tr '\\n' ' '"),
            "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero ");
  EXPECT_EQ(sh(sandbox, "head -c 4 /dev/zero | od -An -tx1"), " 00 00 00 00\n");
  sh(sandbox, "echo x > /dev/null && echo x > /dev/shm/y && test -c /dev/urandom");
  // A pty from /dev/ptmx, in a devpts instance of its own: numbered from 0,
  // none of the host's ptys in it.
  EXPECT_EQ(sh(sandbox,
               "python3 -c \"import os; m, s = os.openpty(); print(os.ttyname(s)); "
               "print(sorted(os.listdir('/dev/pts')))\""),
            "/dev/pts/0\n['0', 'ptmx']\n");
  struct stat hostPts;
  ASSERT_EQ(stat("/dev/pts", &hostPts), 0);
  EXPECT_NE(sh(sandbox, "stat -c %d /dev/pts"), std::to_string(hostPts.st_dev) + "\n");
  // /dev/shm holds data, not programs (noexec, as Docker mounts it).
  RunResult shmExec =
      sandbox.client().run({"/bin/sh", "-c", "cp /bin/true /dev/shm/t && /dev/shm/t"});
  EXPECT_NE(exitCode(shmExec.waitStatus), 0);
  EXPECT_NE(shmExec.err.find("Permission denied"), std::string::npos) << shmExec.err;
  // Nothing mounted inside leaks out; the host's work dir stays an empty mount point.
  DIR* dir = opendir(sandbox.spec().workDir.c_str());
  ASSERT_NE(dir, nullptr);
  int entries = 0;
  while (struct dirent* e = readdir(dir)) entries += e->d_name[0] != '.';
  closedir(dir);
  EXPECT_EQ(entries, 0);
}

TEST(Sandbox, OnlyStdioIsInherited) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  // ls's own directory fd shows as 3.
  EXPECT_EQ(sh(sandbox, "ls /proc/self/fd | tr '\\n' ' '"), "0 1 2 3 ");
}

TEST(Sandbox, DiskFullIsEnospc) {
  NODEAGENT_REQUIRE_ROOT();
  SandboxOptions options;
  options.diskBytes = 32ull << 20;
  options.limits.memoryBytes = 512ull << 20;
  TestSandbox sandbox(options);
  RunResult r = sandbox.client().run({"python3", "-c",
                                      "import errno\n"
                                      "n = 0\n"
                                      "f = open('/tmp/fill', 'wb', buffering=0)\n"
                                      "try:\n"
                                      "    while True:\n"
                                      "        n += f.write(b'x' * 65536)\n"
                                      "except OSError as e:\n"
                                      "    assert e.errno == errno.ENOSPC, e\n"
                                      "    print(n)\n"});
  ASSERT_EQ(exitCode(r.waitStatus), 0) << r.err;
  uint64_t written = std::stoull(r.out);
  EXPECT_GT(written, (32ull << 20) * 9 / 10);
  EXPECT_LE(written, 32ull << 20);
}

TEST(Sandbox, CgroupLimitsAreApplied) {
  NODEAGENT_REQUIRE_ROOT();
  SandboxOptions options;
  options.limits.memoryBytes = 256ull << 20;
  options.limits.pidsMax = 64;
  options.limits.cpuMillis = 500;
  options.limits.cpuPeriodMicros = 100000;
  TestSandbox sandbox(options);
  CgroupTree& tree = sandbox.tree();
  std::string tenant = testTenant(), id = sandbox.spec().sandboxId;
  for (const CgroupHierarchy& h : tree.hierarchies()) {
    std::string path = tree.sandboxPath(h, tenant, id);
    EXPECT_NE(readHostFile(path + "/cgroup.procs").find(std::to_string(sandbox.launched().pid)),
              std::string::npos)
        << path;
    if (h.memory) {
      EXPECT_EQ(readHostFile(path + (h.v2 ? "/memory.max" : "/memory.limit_in_bytes")),
                std::to_string(256ull << 20) + "\n");
    }
    if (h.pids) {
      EXPECT_EQ(readHostFile(path + "/pids.max"), "64\n");
    }
    if (h.cpu) {
      EXPECT_EQ(readHostFile(path + (h.v2 ? "/cpu.max" : "/cpu.cfs_quota_us")),
                h.v2 ? "50000 100000\n" : "50000\n");
    }
  }
  // Inside, the cgroup namespace hides the host's tree.
  std::string own = sh(sandbox, "cat /proc/self/cgroup");
  EXPECT_EQ(own.find("nodeagent"), std::string::npos) << own;
  // The pid limit holds.
  RunResult fork = sandbox.client().run({"python3", "-c",
                                         "import os, time\n"
                                         "n = 0\n"
                                         "try:\n"
                                         "    for i in range(200):\n"
                                         "        if os.fork() == 0:\n"
                                         "            time.sleep(30); os._exit(0)\n"
                                         "        n += 1\n"
                                         "except OSError:\n"
                                         "    pass\n"
                                         "print(n, flush=True)\n"
                                         "os.killpg(0, 9)\n"});
  EXPECT_LT(std::stoi(fork.out.empty() ? "999" : fork.out), 64) << fork.err;
  CgroupStats stats = sandbox.cgroup().stats();
  EXPECT_GT(stats.cpuUserNs + stats.cpuSystemNs, 0u);
  EXPECT_GT(stats.memoryPeakBytes, 0u);
}

TEST(Sandbox, MemoryHogIsOomKilled) {
  NODEAGENT_REQUIRE_ROOT();
  SandboxOptions options;
  options.limits.memoryBytes = 64ull << 20;
  TestSandbox sandbox(options);
  uint64_t before = sandbox.cgroup().stats().oomKills;
  RunResult r = sandbox.client().run(
      {"python3", "-c", "b = bytearray(512 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\n"});
  ASSERT_TRUE(WIFSIGNALED(r.waitStatus)) << r.waitStatus << r.err;
  EXPECT_EQ(WTERMSIG(r.waitStatus), SIGKILL);
  EXPECT_GT(sandbox.cgroup().stats().oomKills, before);
  // init survived.
  EXPECT_EQ(exitCode(sandbox.client().run({"true"}).waitStatus), 0);
}

void expectKillAllLeavesNothing(KillMethod method) {
  SandboxOptions options;
  options.limits.pidsMax = 128;  // the forking loop below must not exhaust the host
  TestSandbox sandbox(options);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(sandbox.client().spawn({"sleep", "1000"}).has_value());
  // A process that keeps forking, and a daemonized orphan.
  ASSERT_TRUE(sandbox.client().spawn({"sh", "-c", "while true; do sleep 1000 & sleep 0.01; done"}));
  ASSERT_TRUE(sandbox.client().spawn({"sh", "-c", "(setsid sleep 1000 &)"}));
  usleep(200 * 1000);
  std::vector<pid_t> members = sandbox.cgroup().pids();
  ASSERT_GT(members.size(), 5u);
  std::vector<kj::AutoCloseFd> pidfds;
  for (pid_t pid : members) {
    int fd = int(syscall(SYS_pidfd_open, pid, 0));
    if (fd >= 0) pidfds.emplace_back(fd);
  }
  sandbox.cgroup().killAll(method);
  for (auto& fd : pidfds) EXPECT_TRUE(pidfdExited(fd, 5000)) << "pid " << hostPidOf(fd);
  int status = sandbox.shutdown();
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  EXPECT_TRUE(sandbox.cgroup().pids().empty());
  std::vector<std::string> paths;
  for (const CgroupHierarchy& h : sandbox.tree().hierarchies()) {
    paths.push_back(sandbox.tree().sandboxPath(h, testTenant(), sandbox.spec().sandboxId));
  }
  sandbox.removeCgroup();
  for (const std::string& path : paths) {
    struct stat st;
    EXPECT_NE(stat(path.c_str(), &st), 0) << path;
  }
}

TEST(Sandbox, KillAllWithFreezerLeavesNothing) {
  NODEAGENT_REQUIRE_ROOT();
  if (detectCgroupMode() != CgroupMode::kHybrid) GTEST_SKIP() << "no v1 freezer here";
  expectKillAllLeavesNothing(KillMethod::kV1Freezer);
}

TEST(Sandbox, KillAllWithCgroupKillLeavesNothing) {
  NODEAGENT_REQUIRE_ROOT();
  expectKillAllLeavesNothing(KillMethod::kV2CgroupKill);
}

TEST(Sandbox, KillingInitTakesTheTree) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  std::vector<SpawnedProcess> processes;
  for (int i = 0; i < 3; ++i) {
    auto p = sandbox.client().spawn({"sleep", "1000"});
    ASSERT_TRUE(p.has_value());
    processes.push_back(kj::mv(*p));
  }
  ASSERT_TRUE(sandbox.client().spawn({"sh", "-c", "(setsid sleep 1000 &)"}));
  ASSERT_EQ(syscall(SYS_pidfd_send_signal, sandbox.launched().pidfd.get(), SIGKILL, nullptr, 0), 0);
  EXPECT_EQ(sandbox.shutdown(), SIGKILL);
  for (auto& p : processes) EXPECT_TRUE(pidfdExited(p.pidfd, 5000));
  for (int i = 0; i < 500 && sandbox.cgroup().populated(); ++i) usleep(10000);
  EXPECT_FALSE(sandbox.cgroup().populated());
}

TEST(Sandbox, InitSurvivesSignalsFromInside) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  sandbox.client().run({"sh", "-c", "kill -9 1; kill -TERM 1"});
  EXPECT_FALSE(pidfdExited(sandbox.launched().pidfd, 100));
  EXPECT_EQ(exitCode(sandbox.client().run({"true"}).waitStatus), 0);
}

TEST(Sandbox, InitOutlivesTheAgentConnection) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  auto p = sandbox.client().spawn({"sh", "-c", "sleep 0.2; echo done"});
  ASSERT_TRUE(p.has_value());
  sandbox.launched().control = nullptr;  // the agent "dies"
  std::string out, err;
  readBoth(p->stdoutFd, p->stderrFd, &out, &err);
  EXPECT_EQ(out, "done\n");
  EXPECT_TRUE(pidfdExited(p->pidfd, 5000));
  // init keeps running (and reaping: the cgroup holds only init afterwards).
  EXPECT_FALSE(pidfdExited(sandbox.launched().pidfd, 200));
  for (int i = 0; i < 100 && sandbox.cgroup().pids().size() > 1; ++i) usleep(10000);
  EXPECT_EQ(sandbox.cgroup().pids().size(), 1u);
}

TEST(Sandbox, AReconnectedAgentGetsEveryTrackedProcessBack) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  auto cat = sandbox.client().spawn({"cat"}, nullptr, {}, "", /*stdinOpen=*/true);
  ASSERT_TRUE(cat.has_value());
  auto quick = sandbox.client().spawn({"sh", "-c", "echo early; exit 3"});
  ASSERT_TRUE(quick.has_value());
  int32_t catPid = cat->pid, quickPid = quick->pid;
  // The agent dies: every fd it held goes, and `quick` ends meanwhile.
  cat.reset();
  quick.reset();
  sandbox.launched().control = nullptr;
  usleep(200000);

  auto adopted = sandbox.reconnect().resync();
  ASSERT_EQ(adopted.size(), 2u);
  std::map<int32_t, AdoptedProcess*> byPid;
  for (auto& a : adopted) byPid[a.process.pid] = &a;
  ASSERT_TRUE(byPid.count(catPid) && byPid.count(quickPid));

  // The one that ended: its status, and the output it wrote with no agent there.
  AdoptedProcess& ended = *byPid[quickPid];
  EXPECT_TRUE(ended.exited);
  EXPECT_EQ(exitCode(ended.waitStatus), 3);
  EXPECT_EQ(ended.argv, (std::vector<std::string>{"sh", "-c", "echo early; exit 3"}));
  std::string out, err;
  readBoth(ended.process.stdoutFd, ended.process.stderrFd, &out, &err);
  EXPECT_EQ(out, "early\n");

  // The one still running: stdin, stdout and pidfd all work again.
  AdoptedProcess& running = *byPid[catPid];
  EXPECT_FALSE(running.exited);
  ASSERT_GE(running.process.stdinFd.get(), 0);
  ASSERT_EQ(write(running.process.stdinFd, "again\n", 6), 6);
  sandbox.client().closeStdin(running.process);
  out.clear();
  readBoth(running.process.stdoutFd, running.process.stderrFd, &out, &err);
  EXPECT_EQ(out, "again\n");
  EXPECT_EQ(exitCode(sandbox.client().waitExit(catPid)), 0);
  EXPECT_TRUE(pidfdExited(running.process.pidfd, 5000));

  // Released processes are forgotten; the next resync is empty.
  sandbox.client().release(catPid);
  sandbox.client().release(quickPid);
  EXPECT_TRUE(sandbox.client().resync().empty());
}

TEST(Sandbox, OnlyRootReachesInitsControlSocket) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  struct stat st;
  ASSERT_EQ(stat(sandbox.spec().controlSocketPath.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(st.st_uid, 0u);
  // From inside the sandbox the path does not exist.
  std::string script = "test -e '" + sandbox.spec().controlSocketPath + "' && echo visible || true";
  EXPECT_EQ(sh(sandbox, script), "");
}

TEST(Sandbox, SetupFailureIsReported) {
  NODEAGENT_REQUIRE_ROOT();
  SandboxOptions options;
  options.skeleton = scratchDir() + "/no-such-skeleton";
  try {
    TestSandbox sandbox(options);
    ADD_FAILURE() << "launch should fail";
  } catch (const kj::Exception& e) {
    std::string message = e.getDescription().cStr();
    EXPECT_NE(message.find("setup failed"), std::string::npos) << message;
    EXPECT_NE(message.find("no-such-skeleton"), std::string::npos) << message;
  }
}

TEST(Sandbox, ASeedPathOutsideTheUpperLayerFailsSetup) {
  NODEAGENT_REQUIRE_ROOT();
  for (const char* path : {"../escape", "/etc/escape", "etc/../../escape", "etc//x", ""}) {
    SandboxOptions options;
    options.seed = skeletonSeed();
    options.seed->push_back(SeedEntry{path, 0644, false, "x"});
    try {
      TestSandbox sandbox(options);
      ADD_FAILURE() << "launch should fail for " << path;
    } catch (const kj::Exception& e) {
      std::string message = e.getDescription().cStr();
      EXPECT_NE(message.find("bad seed path"), std::string::npos) << message;
    }
  }
  // An absolute path, unchecked, would have gone to the host's /etc.
  struct stat st;
  EXPECT_NE(stat("/etc/escape", &st), 0);
}

TEST(Sandbox, TheSkeletonsFilesAreTheSandboxRootsOwn) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  // Planted from the seed: owned by the sandbox's root, the skeleton's modes.
  EXPECT_EQ(sh(sandbox, "stat -c '%u %a' /etc /etc/passwd /tmp /root /var/tmp"),
            "0 755\n0 644\n0 1777\n0 700\n0 1777\n");
  EXPECT_EQ(sh(sandbox,
               "echo 'extra:x:2000:2000::/tmp:/bin/sh' >> /etc/passwd && "
               "grep -c . /etc/passwd && mkdir /etc/mine && echo ok"),
            "4\nok\n");
  // Symlinks stay the skeleton's, in the shared lower layer.
  EXPECT_EQ(sh(sandbox, "readlink /bin"), "usr/bin\n");
}

TEST(Sandbox, DynamicProgramsFindTheirLibrariesThroughTheLoaderCache) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  // Without /etc/ld.so.cache the loader walks its whole search path per library.
  std::string trace = sh(sandbox, "LD_DEBUG=libs /bin/true 2>&1");
  EXPECT_NE(trace.find("search cache=/etc/ld.so.cache"), std::string::npos) << trace;
  EXPECT_EQ(trace.find("search path="), std::string::npos) << trace;
  // Read-only for the sandbox: it stays in the shared lower layer, not the seed.
  EXPECT_EQ(sh(sandbox, "stat -c %u /etc/ld.so.cache"), "65534\n");
}

TEST(Sandbox, ABrokenSeccompProgramFailsSetup) {
  NODEAGENT_REQUIRE_ROOT();
  auto tree = CgroupTree::open(kTestCgroupRoot);
  // Not a whole instruction, then a whole one the kernel's checker refuses
  // (BPF_LD | BPF_W | BPF_ABS from past the end of seccomp_data).
  const kj::byte truncated[7] = {};
  const kj::byte invalid[8] = {0x20, 0, 0, 0, 0xff, 0xff, 0, 0};
  for (kj::ArrayPtr<const kj::byte> filter :
       {kj::arrayPtr(truncated, sizeof(truncated)), kj::arrayPtr(invalid, sizeof(invalid))}) {
    LaunchSpec spec;
    spec.sandboxId = uniqueId("badfilter");
    spec.hostname = "x";
    spec.uidBase = nextUidBase();
    spec.uidCount = 65536;
    spec.initPath = initPath();
    spec.skeletonDir = skeletonDir();
    spec.workDir = scratchDir() + "/work-" + spec.sandboxId;
    spec.diskBytes = 1 << 20;
    spec.seccompFilter = filter;
    spec.seed = &skeletonSeed();
    try {
      launch(spec);
      ADD_FAILURE() << "launch should fail";
    } catch (const kj::Exception& e) {
      std::string message = e.getDescription().cStr();
      EXPECT_NE(message.find("setup failed"), std::string::npos) << message;
      EXPECT_NE(message.find("seccomp"), std::string::npos) << message;
    }
    rmdir(spec.workDir.c_str());
  }
}

TEST(Sandbox, BadInitPathIsReported) {
  NODEAGENT_REQUIRE_ROOT();
  auto tree = CgroupTree::open(kTestCgroupRoot);
  LaunchSpec spec;
  spec.sandboxId = uniqueId("bad");
  spec.hostname = "x";
  spec.uidBase = nextUidBase();
  spec.uidCount = 65536;
  spec.initPath = "/etc/passwd";  // not executable
  spec.skeletonDir = skeletonDir();
  spec.workDir = scratchDir() + "/work-" + spec.sandboxId;
  spec.diskBytes = 1 << 20;
  spec.seccompFilter = seccompFilter();
  spec.seed = &skeletonSeed();
  try {
    launch(spec);
    ADD_FAILURE() << "launch should fail";
  } catch (const kj::Exception& e) {
    std::string message = e.getDescription().cStr();
    EXPECT_NE(message.find("execveat(init): Permission denied"), std::string::npos) << message;
  }
  rmdir(spec.workDir.c_str());
}

TEST(Sandbox, ConcurrentLaunchesFromAThreadedCaller) {
  NODEAGENT_REQUIRE_ROOT();
  skeletonDir();
  // Other threads hammer malloc and stdio locks while clone3 happens: the child must not
  // need any of them between clone and exec.
  std::atomic<bool> stop{false};
  std::vector<std::thread> noise;
  for (int i = 0; i < 2; ++i) {
    noise.emplace_back([&] {
      while (!stop) {
        std::vector<std::string> junk(64, std::string(1000, 'x'));
        fflush(stdout);
      }
    });
  }
  // Both ways to start init: the exec'd one clones this very process; the zygote serves
  // the threads' requests one at a time.
  std::vector<std::thread> launchers;
  std::atomic<int> ok{0};
  for (int i = 0; i < 4; ++i) {
    launchers.emplace_back([&, i] {
      for (int j = 0; j < 3; ++j) {
        SandboxOptions options;
        options.execInit = (i + j) % 2 == 0;
        TestSandbox sandbox(options);
        if (sandbox.client().run({"echo", "hi"}).out == "hi\n") ++ok;
      }
    });
  }
  for (auto& t : launchers) t.join();
  stop = true;
  for (auto& t : noise) t.join();
  EXPECT_EQ(ok.load(), 12);
}

TEST(Sandbox, InitIsASessionLeader) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  EXPECT_EQ(sh(sandbox, "ps -o sid= -p 1 | tr -d ' '"), "1\n");
}

TEST(Sandbox, InvalidSpecsAreRejectedBeforeCloning) {
  NODEAGENT_REQUIRE_ROOT();
  LaunchSpec spec;
  spec.sandboxId = "x";
  spec.hostname = "ok";
  spec.uidBase = nextUidBase();
  spec.uidCount = 65536;
  spec.initPath = initPath();
  spec.skeletonDir = skeletonDir();
  spec.workDir = scratchDir() + "/never-created";
  spec.diskBytes = 1 << 20;
  spec.seccompFilter = seccompFilter();
  spec.seed = &skeletonSeed();
  LaunchSpec bad = spec;
  bad.hostname = "evil\n1.2.3.4 bank.example";
  EXPECT_THROW(launch(bad), kj::Exception);
  bad = spec;
  bad.uidBase = 0;  // would map the sandbox's root to host root
  EXPECT_THROW(launch(bad), kj::Exception);
  bad = spec;
  bad.skeletonDir = "relative";
  EXPECT_THROW(launch(bad), kj::Exception);
  bad = spec;
  bad.seccompFilter = nullptr;  // never an unfiltered sandbox
  EXPECT_THROW(launch(bad), kj::Exception);
  bad = spec;
  bad.seed = nullptr;  // a root the sandbox could not write to
  EXPECT_THROW(launch(bad), kj::Exception);
  struct stat st;
  EXPECT_NE(stat(spec.workDir.c_str(), &st), 0);
}

TEST(Sandbox, NoFdLeaksInTheLauncher) {
  NODEAGENT_REQUIRE_ROOT();
  skeletonDir();
  testZygote();
  int before = countOpenFds();
  {
    TestSandbox sandbox;
    // control + pidfd + the cgroup's directory fds, nothing else.
    int expected = before + 2 + int(sandbox.tree().hierarchies().size());
    EXPECT_EQ(countOpenFds(), expected);
    RunResult r = sandbox.client().run({"true"});
    EXPECT_EQ(exitCode(r.waitStatus), 0);
    EXPECT_EQ(countOpenFds(), expected);
  }
  EXPECT_EQ(countOpenFds(), before);
}

// ---------------------------------------------------------------------------------------
// The zygote (isolator/zygote.h)

std::string fdTarget(pid_t pid, const std::string& fd) {
  char buf[256];
  std::string link = "/proc/" + std::to_string(pid) + "/fd/" + fd;
  ssize_t n = readlink(link.c_str(), buf, sizeof(buf));
  return n < 0 ? "" : std::string(buf, size_t(n));
}

std::set<std::string> fdTargetsOf(pid_t pid) {
  std::set<std::string> targets;
  std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return targets;
  while (struct dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') targets.insert(fdTarget(pid, e->d_name));
  }
  closedir(d);
  return targets;
}

TEST(Zygote, ItsInitsAreTheCallersChildrenAndServeLikeExecdOnes) {
  NODEAGENT_REQUIRE_ROOT();
  for (bool execInit : {false, true}) {
    SandboxOptions options;
    options.execInit = execInit;
    options.hostname = "forked-or-not";
    TestSandbox sandbox(options);
    pid_t host = hostPidOf(sandbox.launched().pidfd);
    // The caller's child (CLONE_PARENT), so the caller reaps it, not the zygote.
    EXPECT_EQ(procStatusField(host, "PPid"), std::to_string(getpid())) << execInit;
    EXPECT_EQ(sh(sandbox, "hostname; id -u; echo $$"),
              "forked-or-not\n0\n" + std::to_string(2) + "\n")
        << execInit;
    // Its command line reads as an exec'd init's, whichever way it started.
    EXPECT_EQ(sh(sandbox, "ps -o args= -p 1"), "nodeagent-init\n") << execInit;
    EXPECT_EQ(procStatusField(host, "Seccomp"), "2") << execInit;
    EXPECT_EQ(procStatusField(host, "NoNewPrivs"), "1") << execInit;
  }
}

TEST(Zygote, AnInitHoldsNothingOfTheZygotes) {
  NODEAGENT_REQUIRE_ROOT();
  TestSandbox sandbox;
  pid_t zygote = testZygote().pid();
  pid_t init = hostPidOf(sandbox.launched().pidfd);
  std::set<std::string> initFds = fdTargetsOf(init);
  ASSERT_FALSE(initFds.empty());
  // Above all not its socket to the agent, which starts sandboxes as root.
  std::string zygoteSocket = fdTarget(zygote, "3");
  ASSERT_EQ(zygoteSocket.rfind("socket:", 0), 0u) << zygoteSocket;
  // Shared by design: /dev/null, and the caller's stderr, where both write diagnostics.
  std::string stderrTarget = fdTarget(getpid(), "2");
  for (const std::string& target : fdTargetsOf(zygote)) {
    if (target == "/dev/null" || target == stderrTarget) continue;
    EXPECT_EQ(initFds.count(target), 0u) << target;
  }
  for (const std::string& target : initFds) {
    EXPECT_EQ(target.rfind("net:", 0), std::string::npos) << target;  // no namespace fds
  }
}

// An init that fails before its setup exits as an exec'd one would (status 1, nothing
// sent), not back into the zygote's loop, which would take its control socket for the
// zygote's.
TEST(Zygote, AnInitThatFailsBeforeSetupExitsLikeAnExecdOne) {
  NODEAGENT_REQUIRE_ROOT();
  auto pairOf = [](kj::AutoCloseFd& ours, kj::AutoCloseFd& theirs) {
    int fds[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds), 0);
    ours = kj::AutoCloseFd(fds[0]);
    theirs = kj::AutoCloseFd(fcntl(fds[1], F_DUPFD_CLOEXEC, 10));
    close(fds[1]);
  };
  kj::AutoCloseFd control, childControl, sync, childSync;
  pairOf(control, childControl);
  pairOf(sync, childSync);
  kj::AutoCloseFd devNull(open("/dev/null", O_RDWR | O_CLOEXEC));
  kj::AutoCloseFd stderrCopy(fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 10));
  Zygote::Started started = testZygote().start(
      InitEntryFds{childSync, childControl, -1, devNull, stderrCopy}, /*netnsFd=*/-1);
  childControl = nullptr;
  childSync = nullptr;
  std::string map = "0 " + std::to_string(nextUidBase()) + " 65536\n";
  for (const char* file : {"uid_map", "gid_map"}) {
    std::ofstream out("/proc/" + std::to_string(started.pid) + "/" + file);
    out << map;
  }
  ASSERT_EQ(send(sync, "g", 1, MSG_NOSIGNAL), 1);
  // Not a Setup: init cannot decode it and gives up.
  const char garbage[16] = {'\xff', '\xff', '\xff', '\xff'};
  ASSERT_EQ(send(control, garbage, sizeof(garbage), MSG_NOSIGNAL), ssize_t(sizeof(garbage)));
  pollfd p{control, POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 10000), 1);
  char reply[256];
  EXPECT_EQ(recv(control, reply, sizeof(reply), 0), 0) << "init answered instead of exiting";
  siginfo_t info{};
  ASSERT_EQ(waitid(idtype_t(P_PIDFD), id_t(started.pidfd.get()), &info, WEXITED), 0);
  EXPECT_EQ(info.si_code, CLD_EXITED);
  EXPECT_EQ(info.si_status, 1);
}

TEST(Zygote, AZygoteThatDiedIsReplacedAtTheNextLaunch) {
  NODEAGENT_REQUIRE_ROOT();
  Zygote zygote(initPath(), STDERR_FILENO);
  pid_t first = zygote.pid();
  ASSERT_EQ(kill(first, SIGKILL), 0);
  // Dead, and still the caller's to reap: the next start() does that and starts anew.
  for (int i = 0; i < 200 && procStatusField(first, "State").rfind("Z", 0) != 0; ++i) {
    usleep(5000);
  }
  std::vector<SeedEntry> seed = skeletonSeed();
  auto tree = CgroupTree::open(kTestCgroupRoot);
  std::string id = uniqueId("rezygote");
  auto cgroup = SandboxCgroup::create(*tree, testTenant(), id, CgroupLimits{});
  LaunchSpec spec;
  spec.sandboxId = id;
  spec.hostname = "again";
  spec.uidBase = nextUidBase();
  spec.uidCount = 65536;
  spec.initPath = initPath();
  spec.skeletonDir = skeletonDir();
  spec.workDir = scratchDir() + "/work-" + id;
  spec.diskBytes = 1 << 20;
  spec.cgroup = cgroup.get();
  spec.seccompFilter = seccompFilter();
  spec.seed = &seed;
  spec.zygote = &zygote;
  LaunchedSandbox launched = launch(spec);
  EXPECT_NE(zygote.pid(), first);
  EXPECT_EQ(kill(first, 0), -1);  // reaped
  InitClient client(launched.control);
  EXPECT_EQ(client.run({"hostname"}).out, "again\n");
  cgroup->killAll();
  reap(launched);
  cgroup->remove();
  rmdir(spec.workDir.c_str());
}

TEST(Zygote, ItEndsWithItsOwnerWhileItsSandboxesRunOn) {
  NODEAGENT_REQUIRE_ROOT();
  auto zygote = kj::heap<Zygote>(initPath(), STDERR_FILENO);
  pid_t zygotePid = zygote->pid();
  SandboxOptions options;
  TestSandbox sandbox(options);  // lends its tree and spec to the one this zygote starts
  std::vector<SeedEntry> seed = skeletonSeed();
  std::string id = uniqueId("outlive");
  auto cgroup = SandboxCgroup::create(sandbox.tree(), testTenant(), id, CgroupLimits{});
  LaunchSpec spec = sandbox.spec();
  spec.sandboxId = id;
  spec.uidBase = nextUidBase();
  spec.workDir = scratchDir() + "/work-" + id;
  spec.controlSocketPath = "";
  spec.cgroup = cgroup.get();
  spec.seed = &seed;
  spec.zygote = zygote.get();
  LaunchedSandbox launched = launch(spec);
  zygote = nullptr;
  EXPECT_EQ(kill(zygotePid, 0), -1);  // ended and reaped
  InitClient client(launched.control);
  EXPECT_EQ(client.run({"echo", "still here"}).out, "still here\n");
  cgroup->killAll();
  reap(launched);
  cgroup->remove();
  rmdir(spec.workDir.c_str());
}

}  // namespace
}  // namespace nodeagent::isolator::testing
