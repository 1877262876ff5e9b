// Sandbox lifecycle through the real agent, the sbx CLI and the C++ API
// (needs root): pause and resume, expiry that pauses, exit reasons, and
// background processes listed and reattached by pid.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <string>

#include <kj/debug.h>

#include "e2e/agent_harness.h"
#include "e2e/output_collector.h"
#include "loop/io_context.h"
#include "nodeagent/api_error.h"
#include "nodeagent/config.h"
#include "nodeagent/rpc_endpoint.h"
#include "nodeagent/store.h"
#include "support/privileged.h"

namespace nodeagent::testing {
namespace {

constexpr int64_t kMs = 1000000;

template <typename T>
kj::Maybe<kj::Exception> failureOf(kj::Promise<T>&& promise, kj::WaitScope& ws) {
  return promise
      .then([](auto&&) -> kj::Maybe<kj::Exception> { return nullptr; },
            [](kj::Exception&& e) -> kj::Maybe<kj::Exception> { return kj::mv(e); })
      .wait(ws);
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

class LifecycleTest : public SharedAgentTest<LifecycleTest> {
 protected:
  ~LifecycleTest() noexcept override {}
  void SetUp() override {
    SharedAgentTest::SetUp();
    if (setUpStopped()) return;
    conn_ = connectToNode(io_.port, parseListenAddress(agent_->target()), nullptr, 8 << 20)
                .wait(io_.waitScope);
    node_ = conn_->bootstrap().castAs<api::Node>();
  }

  api::Sandbox::Client open(const std::string& id) {
    auto request = node_.openRequest();
    request.setId(id);
    return request.send().getSandbox();
  }

  // Runs the event loop (so sinks get their calls) for `ms` milliseconds of
  // real time: the loop's timer may still be at the time it last ran.
  void sleepMs(int ms) {
    auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    for (auto now = std::chrono::steady_clock::now(); now < until;
         now = std::chrono::steady_clock::now()) {
      auto left = std::chrono::duration_cast<std::chrono::microseconds>(until - now).count();
      io_.port.timer().afterDelay(left * kj::MICROSECONDS).wait(io_.waitScope);
    }
  }

  capnp::Response<api::Sandbox::UsageResults> usage(api::Sandbox::Client sandbox) {
    return sandbox.usageRequest().send().wait(io_.waitScope);
  }
  uint64_t cpuNs(api::Sandbox::Client sandbox) {
    auto u = usage(sandbox).getUsage();
    return u.getCpuUserNs() + u.getCpuSystemNs();
  }
  api::SandboxState state(api::Sandbox::Client sandbox) {
    return sandbox.infoRequest().send().wait(io_.waitScope).getInfo().getState();
  }

  api::Process::Client exec(api::Sandbox::Client sandbox, std::vector<std::string> argv,
                            kj::Maybe<kj::Own<Collector>> sink) {
    auto request = sandbox.execRequest();
    auto list = request.initRequest().initArgv(argv.size());
    for (size_t i = 0; i < argv.size(); ++i) list.set(i, argv[i]);
    KJ_IF_MAYBE (s, sink) {
      request.setOutput(kj::mv(*s));
    }
    return request.send().getProcess();
  }

  loop::IoContext io_;
  kj::Own<RpcConnection> conn_;
  api::Node::Client node_ = nullptr;
};

TEST_F(LifecycleTest, PauseStopsTheCpuAndTheOutputAndResumeRestartsThem) {
  std::string id = agent().create({"--cpus", "1"});
  auto sandbox = open(id);
  std::string out, err;
  // Burns CPU and says so every 50 ms.
  auto process = exec(sandbox,
                      {"python3", "-c",
                       "import time\n"
                       "while True:\n"
                       "  t = time.time()\n"
                       "  while time.time() - t < 0.05: pass\n"
                       "  print('tick', flush=True)\n"},
                      kj::heap<Collector>(&out, &err));
  for (int i = 0; i < 100 && out.size() < 10; ++i) sleepMs(20);
  ASSERT_GE(out.size(), 10u) << err;

  auto r = agent().sbx({"pause", id});
  ASSERT_EQ(r.exitCode, 0) << r.err;
  EXPECT_EQ(state(sandbox), api::SandboxState::PAUSED);
  EXPECT_NE(agent().sbx({"info", id}).out.find("paused"), std::string::npos);
  sleepMs(50);  // output already on its way
  uint64_t cpuBefore = cpuNs(sandbox);
  size_t outBefore = out.size();
  sleepMs(300);
  uint64_t cpuPaused = cpuNs(sandbox);
  EXPECT_LT(cpuPaused - cpuBefore, uint64_t(5 * kMs)) << "a frozen sandbox used CPU";
  EXPECT_EQ(out.size(), outBefore) << "a frozen process printed";

  r = agent().sbx({"resume", id});
  ASSERT_EQ(r.exitCode, 0) << r.err;
  EXPECT_EQ(state(sandbox), api::SandboxState::RUNNING);
  // Running again: its clock and output move (on a busy host it may wait a
  // while for a CPU, so poll rather than expect a share).
  bool ran = false;
  for (int i = 0; i < 300 && !(ran && out.size() > outBefore); ++i) {
    sleepMs(10);
    ran = cpuNs(sandbox) - cpuPaused > uint64_t(20 * kMs);
  }
  EXPECT_TRUE(ran) << "a resumed sandbox did not run";
  EXPECT_GT(out.size(), outBefore);
  // Pausing twice or resuming a running sandbox changes nothing.
  EXPECT_EQ(agent().sbx({"resume", id}).exitCode, 0);
  agent().sbx({"kill", id});
}

TEST_F(LifecycleTest, ExecIsRefusedWhilePausedButFilesWork) {
  std::string id = agent().create();
  auto sandbox = open(id);
  sandbox.pauseRequest().send().wait(io_.waitScope);
  sandbox.pauseRequest().send().wait(io_.waitScope);

  std::string out, err;
  auto refused = exec(sandbox, {"true"}, kj::heap<Collector>(&out, &err));
  KJ_IF_MAYBE (e, failureOf(refused.pidRequest().send(), io_.waitScope)) {
    EXPECT_EQ(apiErrorCode(*e), api::ErrorCode::NOT_RUNNING) << e->getDescription().cStr();
    EXPECT_TRUE(strstr(e->getDescription().cStr(), "is paused") != nullptr)
        << e->getDescription().cStr();
  } else {
    ADD_FAILURE() << "exec ran in a paused sandbox";
  }
  auto r = agent().sbx({"exec", id, "--", "true"});
  EXPECT_EQ(r.exitCode, 125);
  EXPECT_NE(r.err.find("notRunning"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("paused"), std::string::npos) << r.err;

  // The filesystem is there while its processes sleep.
  std::string local = agent().dir() + "/paused-file";
  FILE* f = fopen(local.c_str(), "w");
  fputs("while paused\n", f);
  fclose(f);
  r = agent().sbx({"cp", local, id + ":/tmp/p"});
  EXPECT_EQ(r.exitCode, 0) << r.err;
  r = agent().sbx({"cp", id + ":/tmp/p", local + ".back"});
  EXPECT_EQ(r.exitCode, 0) << r.err;

  sandbox.resumeRequest().send().wait(io_.waitScope);
  r = agent().sbx({"exec", id, "--", "cat", "/tmp/p"});
  EXPECT_EQ(r.exitCode, 0) << r.err;
  EXPECT_EQ(r.out, "while paused\n");
  agent().sbx({"kill", id});
}

TEST_F(LifecycleTest, KillWhilePausedEndsEverything) {
  std::string id = agent().create();
  auto sandbox = open(id);
  auto busy = exec(sandbox, {"sh", "-c", "while :; do :; done"}, nullptr);
  auto sleeper = exec(sandbox, {"sleep", "1000"}, nullptr);
  sleeper.pidRequest().send().wait(io_.waitScope);
  auto waited = sleeper.waitRequest().send();
  ASSERT_EQ(agent().sbx({"pause", id}).exitCode, 0);

  auto started = std::chrono::steady_clock::now();
  auto r = agent().sbx({"kill", id});
  EXPECT_EQ(r.exitCode, 0) << r.err;
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(2));
  auto info = sandbox.infoRequest().send().wait(io_.waitScope).getInfo();
  EXPECT_EQ(info.getState(), api::SandboxState::STOPPED);
  EXPECT_EQ(info.getEndReason(), "killed");
  EXPECT_EQ(waited.wait(io_.waitScope).getStatus().getReason(), api::ExitReason::KILLED);
  // The cgroup can only go once no process is left in it.
  for (const char* hierarchy : {"unified", "freezer", "pids"}) {
    EXPECT_TRUE(waitGone(agent().cgroupDir(hierarchy, "e2e", id))) << hierarchy;
  }
}

// A kill is answered once the kernel has doomed every task of the sandbox
// (cgroup.kill): from then on none runs tenant code (accrues user time), even
// a busy one or one forking, though the kernel may still be tearing it down.
TEST_F(LifecycleTest, AfterKillAnswersNoTaskRunsTenantCode) {
  std::string id = agent().create();
  auto sandbox = open(id);
  auto forker = exec(sandbox, {"sh", "-c", "while :; do sh -c : ; done"}, nullptr);
  auto spinner = exec(sandbox, {"sh", "-c", "while :; do :; done"}, nullptr);
  spinner.pidRequest().send().wait(io_.waitScope);
  forker.pidRequest().send().wait(io_.waitScope);
  std::string procsPath = agent().cgroupDir("unified", "e2e", id) + "/cgroup.procs";
  std::vector<pid_t> tasks;
  {
    std::ifstream procs(procsPath);
    for (pid_t pid; procs >> pid;) tasks.push_back(pid);
  }
  ASSERT_GE(tasks.size(), 3u);  // init, the two shells (and the forker's child)
  // User CPU ticks (field 14 of /proc/PID/stat), or -1 once the task is gone.
  auto userTicks = [](pid_t pid) -> long long {
    std::string stat = readFile("/proc/" + std::to_string(pid) + "/stat");
    size_t close = stat.rfind(')');
    if (close == std::string::npos) return -1;
    std::istringstream fields(stat.substr(close + 2));
    std::string field;
    for (int i = 3; i <= 14 && fields >> field; ++i) {
      if (i == 14) return std::stoll(field);
    }
    return -1;
  };

  sandbox.killRequest().send().wait(io_.waitScope);
  std::vector<long long> atAnswer;
  for (pid_t pid : tasks) atAnswer.push_back(userTicks(pid));
  usleep(200000);  // a spinner still running would gain ~20 ticks
  for (size_t i = 0; i < tasks.size(); ++i) {
    long long now = userTicks(tasks[i]);
    EXPECT_TRUE(now == -1 || now == atAnswer[i])
        << "task " << tasks[i] << " ran on after the kill: " << atAnswer[i] << " -> " << now;
  }
  auto info = sandbox.infoRequest().send().wait(io_.waitScope).getInfo();
  EXPECT_EQ(info.getState(), api::SandboxState::STOPPED);
  EXPECT_EQ(info.getEndReason(), "killed");
  EXPECT_EQ(spinner.waitRequest().send().wait(io_.waitScope).getStatus().getReason(),
            api::ExitReason::KILLED);
  EXPECT_TRUE(waitGone(agent().cgroupDir("unified", "e2e", id)));
}

// The agent holds each live sandbox's mount namespace (so a kill is answered
// before the kernel unmounts it all) and lets go once the sandbox has ended:
// an ended sandbox's mounts, and the memory of its tmpfs, do not linger.
TEST_F(LifecycleTest, AnEndedSandboxsMountNamespaceIsReleased) {
  auto heldNamespaces = [&]() {
    std::set<std::string> held;
    std::string fds = "/proc/" + std::to_string(agent().pid()) + "/fd";
    for (auto& entry : std::filesystem::directory_iterator(fds)) {
      char target[128];
      ssize_t n = readlink(entry.path().c_str(), target, sizeof(target) - 1);
      if (n > 0 && std::string(target, size_t(n)).rfind("mnt:[", 0) == 0) {
        held.insert(std::string(target, size_t(n)));
      }
    }
    return held;
  };
  std::string id = agent().create();
  auto sandbox = open(id);
  // Any process of the sandbox (its cgroup's first) is in that namespace.
  std::ifstream procs(agent().cgroupDir("unified", "e2e", id) + "/cgroup.procs");
  pid_t member = 0;
  ASSERT_TRUE(procs >> member);
  std::string memberNs = "/proc/" + std::to_string(member) + "/ns/mnt";
  char link[128];
  ssize_t n = readlink(memberNs.c_str(), link, sizeof(link) - 1);
  ASSERT_GT(n, 0) << memberNs;
  std::string ns(link, size_t(n));
  EXPECT_EQ(heldNamespaces().count(ns), 1u) << ns;
  ASSERT_EQ(agent().sbx({"kill", id}).exitCode, 0);
  bool released = false;
  for (int i = 0; i < 200 && !released; ++i) {
    released = heldNamespaces().count(ns) == 0;
    if (!released) usleep(10000);
  }
  EXPECT_TRUE(released) << ns << " still held after the sandbox ended";
}

TEST_F(LifecycleTest, PausedTimeIsNotRunningTime) {
  std::string id = agent().create();
  auto sandbox = open(id);
  sleepMs(200);
  sandbox.pauseRequest().send().wait(io_.waitScope);
  sleepMs(400);
  auto u1 = usage(sandbox);
  uint64_t paused1 = u1.getUsage().getWallPausedNs(), running1 = u1.getUsage().getWallRunningNs();
  EXPECT_GE(paused1, uint64_t(400 * kMs));
  EXPECT_LT(paused1, uint64_t(3000 * kMs));
  EXPECT_GE(running1, uint64_t(200 * kMs));
  sleepMs(200);
  auto u2 = usage(sandbox);
  EXPECT_GE(u2.getUsage().getWallPausedNs(), paused1 + 200 * kMs);
  EXPECT_LT(u2.getUsage().getWallRunningNs() - running1, uint64_t(20 * kMs));

  sandbox.resumeRequest().send().wait(io_.waitScope);
  sleepMs(300);
  auto u3 = usage(sandbox);
  // Only the resume call's own time may still count as paused.
  EXPECT_LT(u3.getUsage().getWallPausedNs() - u2.getUsage().getWallPausedNs(), uint64_t(500 * kMs));
  EXPECT_GE(u3.getUsage().getWallRunningNs(), u2.getUsage().getWallRunningNs() + 300 * kMs);
  EXPECT_NE(agent().sbx({"usage", id}).out.find("wall paused:"), std::string::npos);

  // Once ended, the clocks stop; a sandbox killed while paused was paused to the end.
  sandbox.pauseRequest().send().wait(io_.waitScope);
  sleepMs(100);
  sandbox.killRequest().send().wait(io_.waitScope);
  auto u4 = usage(sandbox);
  sleepMs(100);
  auto u5 = usage(sandbox);
  EXPECT_GE(u4.getUsage().getWallPausedNs(), u3.getUsage().getWallPausedNs() + 100 * kMs);
  EXPECT_EQ(u5.getUsage().getWallPausedNs(), u4.getUsage().getWallPausedNs());
  EXPECT_EQ(u5.getUsage().getWallRunningNs(), u4.getUsage().getWallRunningNs());
}

TEST_F(LifecycleTest, ExpiryWithOnTimeoutPausePausesAndResumeRuns) {
  std::string id = agent().create({"--timeout", "1", "--on-timeout", "pause"});
  auto sandbox = open(id);
  auto r = agent().sbx({"exec", id, "-d", "--", "sleep", "1000"});
  ASSERT_EQ(r.exitCode, 0) << r.err;
  std::string sleeper = trim(r.out);

  auto waitPaused = [&]() {
    for (int i = 0; i < 150 && state(sandbox) != api::SandboxState::PAUSED; ++i) sleepMs(20);
    return state(sandbox) == api::SandboxState::PAUSED;
  };
  ASSERT_TRUE(waitPaused()) << "expiry did not pause the sandbox";
  EXPECT_NE(agent().sbx({"info", id, "--json"}).out.find("\"paused\""), std::string::npos);
  EXPECT_NE(agent().sbx({"ls"}).out.find("paused"), std::string::npos);
  EXPECT_EQ(agent().sbx({"exec", id, "--", "true"}).exitCode, 125);
  // It stays paused, with its processes, until someone decides.
  sleepMs(300);
  EXPECT_EQ(state(sandbox), api::SandboxState::PAUSED);

  ASSERT_EQ(agent().sbx({"resume", id}).exitCode, 0);
  r = agent().sbx({"exec", id, "--", "echo", "back"});
  EXPECT_EQ(r.out, "back\n") << r.err;
  r = agent().sbx({"ps", id});
  EXPECT_NE(r.out.find(sleeper + " "), std::string::npos) << r.out;
  // Resuming an expired sandbox gave it a lifetime again; setTimeout re-arms.
  auto info = sandbox.infoRequest().send().wait(io_.waitScope).getInfo();
  EXPECT_GT(info.getExpiresAtNs(), int64_t(time(nullptr)) * 1000000000);
  auto setTimeout = sandbox.setTimeoutRequest();
  setTimeout.setSeconds(1);
  setTimeout.send().wait(io_.waitScope);
  int64_t expires = sandbox.infoRequest().send().wait(io_.waitScope).getInfo().getExpiresAtNs();
  int64_t now = int64_t(time(nullptr)) * 1000000000;
  EXPECT_GT(expires, now - 1000 * kMs);
  EXPECT_LT(expires, now + 2000 * kMs);
  ASSERT_TRUE(waitPaused()) << "setTimeout after resume did not re-arm";

  // The audit log says who paused it and why.
  auto store = Store::open((agent().dir() + "/state").c_str());
  int timeoutPauses = 0, resumes = 0;
  for (int attempt = 0; attempt < 50 && timeoutPauses < 2; ++attempt) {
    timeoutPauses = resumes = 0;
    for (auto& stored : store->readAudit(0, 100000)) {
      auto e = stored->get();
      if (e.getSandboxId() != id.c_str()) continue;
      if (e.getAction() == "timeout-pause") {
        ++timeoutPauses;
        EXPECT_EQ(e.getActor(), "agent");
      }
      if (e.getAction() == "resume") {
        ++resumes;
        EXPECT_TRUE(e.getActor().startsWith("unix:")) << e.getActor().cStr();
      }
    }
    if (timeoutPauses < 2) usleep(20000);
  }
  EXPECT_EQ(timeoutPauses, 2);
  EXPECT_EQ(resumes, 1);
  KJ_IF_MAYBE (record, store->getSandbox(id.c_str())) {
    EXPECT_EQ((*record)->get().getState(), api::SandboxState::PAUSED);
  } else {
    ADD_FAILURE() << "no stored record";
  }
  EXPECT_EQ(agent().sbx({"kill", id}).exitCode, 0);
}

TEST_F(LifecycleTest, OutOfMemoryIsAnExitReason) {
  std::string id = agent().create({"--memory", "64M"});
  const char* hog =
      "x = []\n"
      "while True: x.append(b'x' * (1 << 20))\n";
  auto r = agent().sbx({"exec", id, "--", "python3", "-c", hog});
  EXPECT_EQ(r.exitCode, 137) << r.err;

  std::string out, err;
  auto process = exec(open(id), {"python3", "-c", hog}, kj::heap<Collector>(&out, &err));
  auto status = process.waitRequest().send().wait(io_.waitScope).getStatus();
  EXPECT_EQ(status.getReason(), api::ExitReason::OOM);
  EXPECT_EQ(status.getSignal(), SIGKILL);
  // The sandbox survives its process's OOM kill.
  r = agent().sbx({"exec", id, "--", "echo", "alive"});
  EXPECT_EQ(r.out, "alive\n") << r.err;
  r = agent().sbx({"ps", id});
  EXPECT_NE(r.out.find("oom"), std::string::npos) << r.out;
  agent().sbx({"kill", id});
}

// `sbx timeout`: a running sandbox's lifetime, shortened (it ends with reason
// timeout, as on-timeout kill says) or extended (it outlives its first one).
TEST_F(LifecycleTest, TheTimeoutChangesWhileRunning) {
  std::string shortened = agent().create({"--timeout", "600"});
  std::string extended = agent().create({"--timeout", "2"});
  ASSERT_EQ(agent().sbx({"timeout", shortened, "1"}).exitCode, 0);
  ASSERT_EQ(agent().sbx({"timeout", extended, "600"}).exitCode, 0);
  bool ended = false;
  for (int i = 0; i < 60 && !ended; ++i) {
    sleepMs(100);
    ended = state(open(shortened)) == api::SandboxState::STOPPED;
  }
  EXPECT_TRUE(ended) << agent().sbx({"info", shortened}).out;
  auto info = agent().sbx({"info", shortened, "--json"}).out;
  EXPECT_NE(info.find("\"endReason\": \"timeout\""), std::string::npos) << info;
  sleepMs(2500);  // past the first lifetime of the extended one
  EXPECT_EQ(state(open(extended)), api::SandboxState::RUNNING);
  EXPECT_EQ(agent().sbx({"exec", extended, "--", "echo", "alive"}).out, "alive\n");
  auto bad = agent().sbx({"timeout", extended, "soon"});
  EXPECT_NE(bad.exitCode, 0);
  EXPECT_NE(bad.err.find("usage"), std::string::npos) << bad.err;
  agent().sbx({"kill", extended});
}

// An exec's timeout belongs to the process, not to whoever streams its
// output: a client that goes away early leaves it to run until its timeout,
// and then it ends with reason timeout (124 from sbx, which says so).
TEST_F(LifecycleTest, AnExecTimeoutIsTheProcesssNotItsStreams) {
  std::string id = agent().create();
  auto r = agent().sbx({"exec", id, "--exec-timeout", "1", "--", "sleep", "30"});
  EXPECT_EQ(r.exitCode, 124);
  EXPECT_NE(r.err.find("(timeout)"), std::string::npos) << r.err;

  // The client is gone after a second, its stream with it.
  auto gone =
      runCommand({"/usr/bin/timeout", "1", binDir() + "/sbx", "--connect", agent().target(), "exec",
                  id, "--exec-timeout", "3", "--", "sh", "-c", "echo started; sleep 30"});
  EXPECT_EQ(gone.out, "started\n");
  auto stillRunning = agent().sbx({"ps", id, "--json"}).out;
  std::regex sleeper(
      "\"argv\": \\[\"sh\", \"-c\", \"echo started; sleep 30\"\\],[^{}]*\"running\": true");
  EXPECT_TRUE(std::regex_search(stillRunning, sleeper)) << stillRunning;
  bool timedOut = false;
  std::regex ended(
      "\"argv\": \\[\"sh\", \"-c\", \"echo started; sleep 30\"\\],[^{}]*"
      "\"running\": false,\\s*\"status\": \\{\"reason\": \"timeout\"");
  for (int i = 0; i < 60 && !timedOut; ++i) {
    sleepMs(100);
    timedOut = std::regex_search(agent().sbx({"ps", id, "--json"}).out, ended);
  }
  EXPECT_TRUE(timedOut) << agent().sbx({"ps", id, "--json"}).out;
  agent().sbx({"kill", id});
}

// `sbx signal` delivers any signal; a process that catches it decides how it
// ends, and its status says so.
TEST_F(LifecycleTest, SignalsReachTheProcess) {
  std::string id = agent().create();
  auto r = agent().sbx(
      {"exec", id, "-d", "--", "sh", "-c", "trap 'exit 7' TERM; while :; do sleep 0.05; done"});
  ASSERT_EQ(r.exitCode, 0) << r.err;
  std::string pid = trim(r.out);
  sleepMs(200);  // the trap is set
  ASSERT_EQ(agent().sbx({"signal", id, pid, "TERM"}).exitCode, 0);
  r = agent().sbx({"exec", id, "-d", "--", "sleep", "30"});
  std::string sleeper = trim(r.out);
  ASSERT_EQ(agent().sbx({"signal", id, sleeper, "9"}).exitCode, 0);
  auto endedAs = [&](const std::string& pid, const std::string& status) {
    std::regex ended("\\{\\s*\"pid\": " + pid + ",[^{}]*\"running\": false,\\s*\"status\": \\{" +
                     status);
    for (int i = 0; i < 40; ++i) {
      if (std::regex_search(agent().sbx({"ps", id, "--json"}).out, ended)) return true;
      sleepMs(50);
    }
    return false;
  };
  EXPECT_TRUE(endedAs(pid, "\"reason\": \"exited\", \"code\": 7"))
      << agent().sbx({"ps", id, "--json"}).out;
  EXPECT_TRUE(endedAs(sleeper, "\"reason\": \"signaled\",[^{}]*\"signal\": 9"))
      << agent().sbx({"ps", id, "--json"}).out;
  auto bad = agent().sbx({"signal", id, sleeper, "NOSUCH"});
  EXPECT_NE(bad.err.find("not a signal"), std::string::npos) << bad.err;
  auto gone = agent().sbx({"signal", id, "99999", "TERM"});
  EXPECT_NE(gone.exitCode, 0);
  EXPECT_NE(gone.err.find("notFound"), std::string::npos) << gone.err;
  agent().sbx({"kill", id});
}

// Reattaching from a byte offset replays from there; an offset older than
// what the agent keeps (1 MiB a stream) starts at the oldest byte it has,
// and sbx says where.
TEST_F(LifecycleTest, AttachReplaysFromAnOffset) {
  std::string id = agent().create();
  auto r = agent().sbx({"exec", id, "-d", "--", "sh", "-c", "printf 0123456789; sleep 30"});
  std::string pid = trim(r.out);
  auto fromFour = runCommand({"/usr/bin/timeout", "1.5", binDir() + "/sbx", "--connect",
                              agent().target(), "attach", id, pid, "--stdout-from", "4"});
  EXPECT_EQ(fromFour.out, "456789");
  EXPECT_EQ(fromFour.err.find("gone"), std::string::npos) << fromFour.err;

  // 1.5 MiB of output: the first half MiB is gone.
  r = agent().sbx(
      {"exec", id, "-d", "--", "sh", "-c", "head -c 1572864 /dev/zero | tr '\\0' a; sleep 30"});
  pid = trim(r.out);
  std::regex all("\"pid\": " + pid + ",[^{}]*\"stdoutBytes\": \"1572864\"");
  bool written = false;
  for (int i = 0; i < 100 && !written; ++i) {
    sleepMs(50);
    written = std::regex_search(agent().sbx({"ps", id, "--json"}).out, all);
  }
  ASSERT_TRUE(written) << agent().sbx({"ps", id, "--json"}).out;
  auto old = runCommand({"/usr/bin/timeout", "3", binDir() + "/sbx", "--connect", agent().target(),
                         "attach", id, pid, "--stdout-from", "0"});
  EXPECT_EQ(old.out.size(), size_t(1) << 20);
  EXPECT_NE(old.err.find("replayed stdout from byte 524288"), std::string::npos) << old.err;
  auto past = runCommand({"/usr/bin/timeout", "1.5", binDir() + "/sbx", "--connect",
                          agent().target(), "attach", id, pid, "--stdout-from", "1572800"});
  EXPECT_EQ(past.out, std::string(64, 'a'));
  agent().sbx({"kill", id});
}

TEST_F(LifecycleTest, PsListsBackgroundAndEndedProcesses) {
  std::string id = agent().create();
  auto r = agent().sbx({"exec", id, "-d", "--", "sleep", "1000"});
  ASSERT_EQ(r.exitCode, 0) << r.err;
  std::string sleeper = trim(r.out);
  EXPECT_EQ(agent().sbx({"exec", id, "--", "sh", "-c", "exit 3"}).exitCode, 3);

  r = agent().sbx({"ps", id});
  ASSERT_EQ(r.exitCode, 0) << r.err;
  auto lineOf = [&](const std::string& needle) {
    size_t at = r.out.find(needle);
    if (at == std::string::npos) return std::string();
    size_t begin = r.out.rfind('\n', at) + 1;
    return r.out.substr(begin, r.out.find('\n', at) - begin);
  };
  std::string sleepLine = lineOf("sleep 1000");
  EXPECT_EQ(sleepLine.rfind(sleeper + " ", 0), 0u) << r.out;
  EXPECT_NE(sleepLine.find("running"), std::string::npos) << r.out;
  EXPECT_NE(lineOf("sh -c exit 3").find("exited(3)"), std::string::npos) << r.out;

  r = agent().sbx({"ps", id, "--json"});
  EXPECT_NE(r.out.find("\"pid\": " + sleeper), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"running\": true"), std::string::npos) << r.out;

  // Output of a background process is kept for `sbx attach`, which replays
  // it, follows the rest and exits with the process's code.
  r = agent().sbx({"exec", id, "-d", "--", "sh", "-c",
                   "echo hello; echo oops >&2; sleep 0.5; echo bye; exit 4"});
  ASSERT_EQ(r.exitCode, 0) << r.err;
  std::string talker = trim(r.out);
  sleepMs(100);
  r = agent().sbx({"attach", id, talker});
  EXPECT_EQ(r.exitCode, 4) << r.err;
  EXPECT_EQ(r.out, "hello\nbye\n");
  EXPECT_EQ(r.err, "oops\n");
  r = agent().sbx({"attach", id, talker});
  EXPECT_EQ(r.exitCode, 125);
  EXPECT_NE(r.err.find("notRunning"), std::string::npos) << r.err;
  agent().sbx({"kill", id});
}

TEST_F(LifecycleTest, ReattachByPid) {
  std::string id = agent().create();
  uint32_t pid;
  {
    // One gateway starts it and goes away.
    auto& io = io_;
    auto conn = connectToNode(io.port, parseListenAddress(agent().target()), nullptr, 8 << 20)
                    .wait(io.waitScope);
    auto node = conn->bootstrap().castAs<api::Node>();
    auto request = node.openRequest();
    request.setId(id);
    auto exec = request.send().getSandbox().execRequest();
    auto argv = exec.initRequest().initArgv(3);
    argv.set(0, "sh");
    argv.set(1, "-c");
    argv.set(2, "echo started; echo warn >&2; exec sleep 1000");
    pid = exec.send().getProcess().pidRequest().send().wait(io.waitScope).getPid();
  }
  // Another finds it by pid, replays its output and waits for it.
  auto sandbox = open(id);
  auto request = sandbox.processRequest();
  request.setPid(pid);
  auto process = request.send().getProcess();
  auto written = [&]() {
    for (auto p : sandbox.processesRequest().send().wait(io_.waitScope).getProcesses()) {
      if (p.getPid() == pid) return p.getStdoutBytes() + p.getStderrBytes();
    }
    return uint64_t(0);
  };
  for (int i = 0; i < 100 && written() < 13; ++i) sleepMs(20);
  std::string out, err;
  int dones = 0;
  auto attach = process.attachRequest();
  attach.setOutput(kj::heap<Collector>(&out, &err, &dones));
  auto started = attach.send().wait(io_.waitScope);
  EXPECT_EQ(started.getStdoutOffset(), 0u);
  EXPECT_EQ(out, "started\n");
  EXPECT_EQ(err, "warn\n");
  auto waited = process.waitRequest().send();
  sleepMs(100);
  EXPECT_EQ(dones, 0);

  // Killed by a signal through yet another handle: SIGKILL that is not the
  // OOM killer's is "signaled".
  auto again = sandbox.processRequest();
  again.setPid(pid);
  auto signal = again.send().getProcess().signalRequest();
  signal.setSignal(SIGKILL);
  signal.send().wait(io_.waitScope);
  auto status = waited.wait(io_.waitScope).getStatus();
  EXPECT_EQ(status.getReason(), api::ExitReason::SIGNALED);
  EXPECT_EQ(status.getSignal(), SIGKILL);
  EXPECT_GE(dones, 1);

  auto processes = sandbox.processesRequest().send().wait(io_.waitScope).getProcesses();
  bool listed = false;
  for (auto p : processes) {
    if (p.getPid() != pid) continue;
    listed = true;
    EXPECT_FALSE(p.getRunning());
    EXPECT_EQ(p.getStatus().getReason(), api::ExitReason::SIGNALED);
    EXPECT_EQ(p.getStdoutBytes(), 8u);
    EXPECT_GT(p.getEndedAtNs(), p.getStartedAtNs());
  }
  EXPECT_TRUE(listed);
  auto gone = sandbox.processRequest();
  gone.setPid(pid);
  KJ_IF_MAYBE (e, failureOf(gone.send().getProcess().pidRequest().send(), io_.waitScope)) {
    EXPECT_EQ(apiErrorCode(*e), api::ErrorCode::NOT_RUNNING) << e->getDescription().cStr();
  } else {
    ADD_FAILURE() << "an exited process was reattached";
  }
  auto unknown = sandbox.processRequest();
  unknown.setPid(4242);
  KJ_IF_MAYBE (e, failureOf(unknown.send().getProcess().pidRequest().send(), io_.waitScope)) {
    EXPECT_EQ(apiErrorCode(*e), api::ErrorCode::NOT_FOUND) << e->getDescription().cStr();
  } else {
    ADD_FAILURE() << "an unknown pid was found";
  }
  agent().sbx({"kill", id});
}

// A tenant's cgroup dirs outlive its last sandbox for tenantCgroupLingerSeconds,
// so that its next create need not make them again; then they go. Empty ones
// left by an earlier agent go at start.
TEST(TenantCgroups, StayForTheLingerAfterTheLastSandboxThenGo) {
  NODEAGENT_REQUIRE_ROOT();
  AgentProcess agent({}, true, ",\"tenantCgroupLingerSeconds\": 2");
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  std::string tenantDir = agent.cgroupDir("pids", "e2e", "");
  std::string id = agent.create();
  ASSERT_FALSE(id.empty());
  ASSERT_EQ(agent.sbx({"kill", id}).exitCode, 0);
  EXPECT_TRUE(waitGone(agent.cgroupDir("pids", "e2e", id)));
  EXPECT_EQ(access(tenantDir.c_str(), F_OK), 0) << "gone with its last sandbox";
  // A create within the linger uses them, and restarts the linger at its end.
  std::string again = agent.create();
  ASSERT_FALSE(again.empty());
  EXPECT_EQ(agent.sbx({"exec", again, "--", "true"}).exitCode, 0);
  ASSERT_EQ(agent.sbx({"kill", again}).exitCode, 0);
  EXPECT_EQ(access(tenantDir.c_str(), F_OK), 0);
  EXPECT_TRUE(waitGone(tenantDir, 6000)) << "still there after the linger";
  for (const char* hierarchy : {"unified", "memory", "cpu"}) {
    std::string dir = agent.cgroupDir(hierarchy, "e2e", "");
    EXPECT_NE(access(dir.c_str(), F_OK), 0) << dir;
  }

  // Left behind empty (an agent stopped within its linger): removed at start.
  agent.stop();
  std::string stale = agent.cgroupDir("pids", "stale", "");
  ASSERT_EQ(mkdir(stale.c_str(), 0755), 0) << stale;
  agent.startAgain();
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  EXPECT_NE(access(stale.c_str(), F_OK), 0);
}

// A graceful stop while an ended sandbox is still being torn down (here a
// cgroup the test made inside its cgroup keeps that from going): the agent
// still exits cleanly, and the next agent finishes the teardown.
TEST(AgentStop, ExitsCleanlyWhileAnEndedSandboxIsStillBeingTornDown) {
  NODEAGENT_REQUIRE_ROOT();
  AgentProcess agent;
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  std::string id = agent.create();
  ASSERT_FALSE(id.empty()) << agent.log();
  std::string sandboxDir = agent.cgroupDir("unified", "e2e", id);
  std::string busy = sandboxDir + "/busy";
  ASSERT_EQ(mkdir(busy.c_str(), 0755), 0) << busy;
  ASSERT_EQ(agent.sbx({"kill", id}).exitCode, 0);
  // Init is gone by now; the agent retries the cgroup's removal for 200 ms.
  usleep(50000);
  int status = agent.stop();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << "\n" << agent.log();
  EXPECT_EQ(agent.log().find("agent.fatal"), std::string::npos) << agent.log();
  EXPECT_EQ(access(sandboxDir.c_str(), F_OK), 0) << "the removal cannot have succeeded";

  ASSERT_EQ(rmdir(busy.c_str()), 0) << busy;
  agent.startAgain();
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  EXPECT_TRUE(waitGone(sandboxDir)) << agent.log();
}

}  // namespace
}  // namespace nodeagent::testing
