// A runaway sandbox hurts only itself: CPU quota and fair share between
// tenants, pids.max, the disk size, memory (needs root; real agent and CLI).
#include <sys/statvfs.h>

#include <fstream>
#include <regex>
#include <thread>

#include "e2e/agent_harness.h"
#include "support/privileged.h"

namespace nodeagent::testing {
namespace {

class ContainmentTest : public SharedAgentTest<ContainmentTest> {
 protected:
  static std::string create(const std::string& tenant, std::vector<std::string> extra) {
    std::vector<std::string> args = {"create", "--template", "python", "--tenant", tenant};
    args.insert(args.end(), extra.begin(), extra.end());
    auto r = agent_->sbx(args);
    EXPECT_EQ(r.exitCode, 0) << r.err;
    while (!r.out.empty() && r.out.back() == '\n') r.out.pop_back();
    return r.out;
  }

  // User + system CPU seconds the sandbox has used so far.
  static double cpuSeconds(const std::string& id) {
    auto r = agent_->sbx({"usage", id, "--json"});
    auto field = [&](const std::string& name) {
      size_t at = r.out.find("\"" + name + "\": \"");
      if (at == std::string::npos) return 0.0;
      return std::stod(r.out.substr(at + name.size() + 5)) / 1e9;
    };
    return field("cpuUserNs") + field("cpuSystemNs");
  }

  // Starts a CPU hog in the background of each sandbox, for `seconds`; with
  // `cpu`, pinned to that CPU (so that hogs compete there on any host).
  static void hog(const std::vector<std::string>& ids, int seconds, int cpu = -1) {
    std::string pin = cpu >= 0 ? "taskset -c " + std::to_string(cpu) + " " : "";
    for (auto& id : ids) {
      auto r = agent_->sbx({"exec", id, "--", "sh", "-c",
                            pin + "timeout " + std::to_string(seconds) +
                                " sh -c 'while :; do :; done' >/dev/null 2>&1 & echo started"});
      ASSERT_EQ(r.out, "started\n") << r.err;
    }
  }
};

TEST_F(ContainmentTest, CpuHogGetsItsQuotaAndNoMore) {
  std::string id = create("hog", {"--cpus", "0.5"});
  double before = cpuSeconds(id);
  hog({id}, 2);
  std::this_thread::sleep_for(std::chrono::milliseconds(2300));
  double used = cpuSeconds(id) - before;
  // 0.5 CPU for 2 s is 1 CPU-second; a free run would be 2.
  EXPECT_LE(used, 1.2) << "the quota did not hold";
  EXPECT_GE(used, 0.6) << "the hog did not get its quota";
  // The agent kept answering throughout.
  EXPECT_EQ(agent_->sbx({"exec", id, "--", "true"}).exitCode, 0);
  agent_->sbx({"kill", id});
}

// 1 CPU burst, 0.25 sustained (the code runtime's), with a bucket that lasts
// one second at the burst: a hog runs at 1 CPU while its credit lasts, then
// at 0.25, and gets the burst back once it has idled long enough to save
// some again.
TEST_F(ContainmentTest, AHogBurstsOnItsCreditThenGetsItsSustainedShare) {
  std::string id =
      create("burst", {"--cpus", "1", "--cpus-sustained", "0.25", "--burst-seconds", "1"});
  auto usageField = [&](const std::string& name) {
    auto r = agent_->sbx({"usage", id, "--json"});
    std::smatch m;
    EXPECT_TRUE(std::regex_search(r.out, m, std::regex("\"" + name + "\": \"?(-?[0-9]+)")))
        << name << " in " << r.out;
    return m.empty() ? int64_t(-1) : std::stoll(m[1]);
  };
  std::string quotaFile = agent_->cgroupDir("cpu", "burst", id) + "/cpu.cfs_quota_us";
  EXPECT_EQ(usageField("cpuQuotaMillis"), 1000);
  EXPECT_EQ(usageField("cpuCreditNs") / 1000000, 750);  // 0.75 CPU for 1 s
  EXPECT_EQ(readFile(quotaFile), "100000\n");

  // Timed by the quota's changes, not by the clock: other tests may be
  // taking CPU from the hog meanwhile.
  double before = cpuSeconds(id);
  hog({id}, 30);
  auto start = std::chrono::steady_clock::now();
  bool sustained = false;
  while (!sustained && std::chrono::steady_clock::now() - start < std::chrono::seconds(15)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    sustained = usageField("cpuQuotaMillis") == 250;
  }
  ASSERT_TRUE(sustained) << "the credit never ran out";
  EXPECT_EQ(readFile(quotaFile), "25000\n");
  double burst = cpuSeconds(id) - before;
  // It spent its bucket (0.75 s) above the sustained share before the drop.
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(burst, 0.75 + 0.25 * elapsed * 0.8) << "dropped before its credit was spent";
  // From now on the sustained share holds: 0.25 CPU over 2 s.
  double held = cpuSeconds(id);
  std::this_thread::sleep_for(std::chrono::seconds(2));
  held = cpuSeconds(id) - held;
  EXPECT_LE(held, 0.7) << "the sustained share did not hold";
  EXPECT_GE(held, 0.2) << "the hog got less than its sustained share";
  ASSERT_EQ(agent_->sbx({"exec", id, "--", "pkill", "-f", "while"}).exitCode, 0);

  // Idle, it saves a tenth of its bucket (0.075 s at 0.25 a second) and
  // bursts again.
  bool burstAgain = false;
  for (int i = 0; i < 40 && !burstAgain; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    burstAgain = usageField("cpuQuotaMillis") == 1000;
  }
  EXPECT_TRUE(burstAgain);
  EXPECT_EQ(readFile(quotaFile), "100000\n");
  agent_->sbx({"kill", id});
}

TEST_F(ContainmentTest, ABurstBucketBeyondADayIsRefused) {
  auto r = agent_->sbx(
      {"create", "--template", "python", "--tenant", "burst", "--burst-seconds", "90000"});
  EXPECT_NE(r.exitCode, 0);
  EXPECT_NE(r.err.find("invalidArgument"), std::string::npos) << r.err;
}

TEST_F(ContainmentTest, TenantsShareByWeightNotBySandboxCount) {
  // Tenant "many" runs three hogs, tenant "one" runs one, all on CPU 0 (so
  // they compete on a host of any size): equal weights give each tenant half
  // of it.
  std::vector<std::string> many, one;
  for (int i = 0; i < 3; ++i)
    many.push_back(create("many", {"--cpus", "2", "--cpus-sustained", "2"}));
  one.push_back(create("one", {"--cpus", "2", "--cpus-sustained", "2"}));
  auto total = [&](const std::vector<std::string>& ids) {
    double sum = 0;
    for (auto& id : ids) sum += cpuSeconds(id);
    return sum;
  };
  double manyBefore = total(many), oneBefore = total(one);
  hog(many, 3, 0);
  hog(one, 3, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(3200));
  double manyUsed = total(many) - manyBefore, oneUsed = total(one) - oneBefore;
  double share = oneUsed / (manyUsed + oneUsed);
  EXPECT_LT(manyUsed + oneUsed, 3.9) << "the hogs did not share one CPU";
  EXPECT_GT(share, 0.35) << "one=" << oneUsed << " many=" << manyUsed;
  EXPECT_LT(share, 0.65) << "one=" << oneUsed << " many=" << manyUsed;

  // Weight 300 against 100: tenant "one", now with two hogs, gets 3/4.
  ASSERT_EQ(agent_->sbx({"tenant-weight", "one", "300"}).exitCode, 0);
  one.push_back(create("one", {"--cpus", "2", "--cpus-sustained", "2"}));
  manyBefore = total(many);
  oneBefore = total(one);
  hog(many, 3, 0);
  hog(one, 3, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(3200));
  manyUsed = total(many) - manyBefore;
  oneUsed = total(one) - oneBefore;
  share = oneUsed / (manyUsed + oneUsed);
  EXPECT_GT(share, 0.62) << "one=" << oneUsed << " many=" << manyUsed;
  EXPECT_LT(share, 0.88) << "one=" << oneUsed << " many=" << manyUsed;
  auto bad = agent_->sbx({"tenant-weight", "one", "0"});
  EXPECT_NE(bad.err.find("invalidArgument"), std::string::npos) << bad.err;
  for (auto& id : many) agent_->sbx({"kill", id});
  for (auto& id : one) agent_->sbx({"kill", id});
}

TEST_F(ContainmentTest, ForkBombStopsAtPidsMax) {
  std::string id = create("bomb", {"--pids", "48"});
  auto r = agent_->sbx({"exec", id, "--", "python3", "-c", R"(
import os, signal, time
children = []
try:
    while True:
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
except OSError as e:
    print(len(children), e.errno)
for pid in children:
    os.kill(pid, signal.SIGKILL)
)"});
  ASSERT_EQ(r.exitCode, 0) << r.err;
  int forked = 0, error = 0;
  ASSERT_EQ(sscanf(r.out.c_str(), "%d %d", &forked, &error), 2) << r.out;
  EXPECT_EQ(error, EAGAIN);
  EXPECT_LT(forked, 48);
  EXPECT_GT(forked, 20);
  // The host and the sandbox itself carry on.
  EXPECT_EQ(agent_->sbx({"exec", id, "--", "true"}).exitCode, 0);
  EXPECT_EQ(runCommand({"/bin/true"}).exitCode, 0);
  agent_->sbx({"kill", id});
}

TEST_F(ContainmentTest, FillingTheDiskGivesEnospcInsideOnly) {
  struct statvfs before;
  ASSERT_EQ(statvfs(agent_->dir().c_str(), &before), 0);
  std::string id = create("disk", {"--disk", "16M"});
  auto r = agent_->sbx({"exec", id, "--", "sh", "-c",
                        "dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>&1; echo rc=$?"});
  EXPECT_NE(r.out.find("No space left on device"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("rc=0"), std::string::npos) << r.out;
  // Writing is over; deleting frees the sandbox's disk again.
  EXPECT_EQ(
      agent_->sbx({"exec", id, "--", "sh", "-c", "rm /tmp/fill && echo x > /tmp/ok"}).exitCode, 0);
  struct statvfs after;
  ASSERT_EQ(statvfs(agent_->dir().c_str(), &after), 0);
  double hostLostMiB =
      (double(before.f_bavail) - double(after.f_bavail)) * before.f_frsize / 1048576;
  EXPECT_LT(hostLostMiB, 8) << "the sandbox's disk is not the host's";
  agent_->sbx({"kill", id});
}

// A disk bigger than the memory (as the default template's is): its tmpfs
// pages count against the sandbox's memory, yet filling it ends in ENOSPC,
// not in an OOM kill, and the memory is the processes' again once the files
// go.
TEST_F(ContainmentTest, ADiskLargerThanTheMemoryFillsToEnospcNotToAnOomKill) {
  std::string id = create("disk", {"--memory", "32M", "--disk", "96M"});
  auto r = agent_->sbx({"exec", id, "--", "sh", "-c",
                        "dd if=/dev/zero of=/tmp/fill bs=1M count=200 2>&1; echo rc=$?"});
  EXPECT_EQ(r.exitCode, 0) << r.out << r.err;  // sh lives on: nothing was OOM-killed
  EXPECT_NE(r.out.find("No space left on device"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("rc=1"), std::string::npos) << r.out;
  auto ps = agent_->sbx({"ps", id});
  EXPECT_EQ(ps.out.find("oom"), std::string::npos) << ps.out;
  EXPECT_EQ(agent_
                ->sbx({"exec", id, "--", "python3", "-c",
                       "import os; os.remove('/tmp/fill'); x = bytearray(16 << 20); print('ok')"})
                .out,
            "ok\n");
  agent_->sbx({"kill", id});
}

TEST_F(ContainmentTest, MemoryBombIsKilledInsideItsSandboxOnly) {
  std::string neighbour = create("mem", {});
  std::string id = create("mem", {"--memory", "64M", "--disk", "16M"});
  auto r = agent_->sbx(
      {"exec", id, "--", "python3", "-c", "x = []\nwhile True: x.append(bytearray(1 << 20))"});
  EXPECT_EQ(r.exitCode, 128 + 9);
  auto ps = agent_->sbx({"ps", id});
  EXPECT_NE(ps.out.find("oom"), std::string::npos) << "the exit reason is oom\n" << ps.out;
  auto info = agent_->sbx({"info", id, "--json"});
  EXPECT_NE(info.out.find("\"state\": \"running\""), std::string::npos) << info.out;
  EXPECT_EQ(agent_->sbx({"exec", id, "--", "echo", "alive"}).out, "alive\n");
  EXPECT_EQ(agent_->sbx({"exec", neighbour, "--", "echo", "fine"}).out, "fine\n");
  agent_->sbx({"kill", id});
  agent_->sbx({"kill", neighbour});
}

}  // namespace
}  // namespace nodeagent::testing
