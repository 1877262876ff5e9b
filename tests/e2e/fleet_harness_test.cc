// The fleet harness itself (tests/support/fleet.h): real network namespaces
// checked with real traffic, real agents inside them, and a clean host after.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <future>
#include <regex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "support/fleet.h"
#include "support/privileged.h"

namespace nodeagent::testing {
namespace {

bool exists(const std::string& path) {
  return access(path.c_str(), F_OK) == 0;
}

ino_t inode(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

std::string netnsList() {
  return runProcess({"ip", "netns", "list"}).out;
}

// reachable(from, to) for every ordered pair of nodes (from == -1: the hub),
// all at once: a dropped SYN costs the whole timeout.
std::vector<std::vector<bool>> reachability(const FleetNetwork& net) {
  const int n = net.size();
  std::vector<std::vector<std::future<bool>>> probes(size_t(n) + 1);
  for (int from = -1; from < n; ++from) {
    for (int to = 0; to < n; ++to) {
      probes[size_t(from + 1)].push_back(std::async(std::launch::async, [&net, from, to] {
        return from == to || net.reachable(from, to, 1500);
      }));
    }
  }
  std::vector<std::vector<bool>> result(size_t(n) + 1);
  for (size_t f = 0; f < probes.size(); ++f) {
    for (auto& p : probes[f]) result[f].push_back(p.get());
  }
  return result;
}

// Row from+1, column to; the hub (row 0) must reach everyone.
void expectReachability(const FleetNetwork& net, const std::function<bool(int, int)>& expected,
                        const std::string& phase) {
  auto seen = reachability(net);
  for (int to = 0; to < net.size(); ++to) {
    EXPECT_TRUE(seen[0][size_t(to)]) << phase << ": hub -> " << to;
  }
  for (int from = 0; from < net.size(); ++from) {
    for (int to = 0; to < net.size(); ++to) {
      EXPECT_EQ(seen[size_t(from + 1)][size_t(to)], expected(from, to))
          << phase << ": " << from << " -> " << to;
    }
  }
}

TEST(FleetHarness, NetworkConnectsPartitionsHealsAndCleansUp) {
  NODEAGENT_REQUIRE_ROOT();
  const std::string rootAddresses = runProcess({"ip", "-o", "addr"}).out;
  std::vector<std::string> names;
  {
    FleetNetwork net(5);
    names.push_back(net.hubNetnsName());
    for (int i = 0; i < 5; ++i) {
      names.push_back(net.netnsName(i));
      EXPECT_EQ(net.netnsPath(i), "/run/netns/" + net.netnsName(i));
      EXPECT_EQ(net.address(i), "10.231.0." + std::to_string(10 + i));
      auto addr = net.exec(i, {"ip", "-4", "-o", "addr", "show"});
      EXPECT_NE(addr.out.find(net.address(i) + "/24"), std::string::npos) << addr.out;
      EXPECT_NE(addr.out.find("127.0.0.1"), std::string::npos) << "lo is up: " << addr.out;
    }
    for (const auto& name : names) EXPECT_TRUE(exists("/run/netns/" + name)) << name;
    // The root namespace is untouched: no bridge, no veth, no address of ours.
    if (rootAddresses.find("10.231.0.") == std::string::npos) {
      auto nowRoot = runProcess({"ip", "-o", "addr"}).out;
      EXPECT_EQ(nowRoot.find("10.231.0."), std::string::npos) << nowRoot;
    }

    auto all = [](int, int) { return true; };
    expectReachability(net, all, "full mesh");

    auto group = [](int i) { return i < 2 ? 0 : 1; };
    net.partition({{0, 1}, {2, 3, 4}});
    expectReachability(
        net, [&](int a, int b) { return group(a) == group(b); }, "partition {0,1} {2,3,4}");

    net.isolate(4);  // replaces the partition
    expectReachability(
        net, [](int a, int b) { return (a == 4) == (b == 4); }, "isolate 4");

    net.heal();
    expectReachability(net, all, "healed");
    auto rules = net.exec(0, {"nft", "list", "tables"});
    EXPECT_EQ(rules.out.find("naflt_partition"), std::string::npos) << rules.out;
  }
  for (const auto& name : names) EXPECT_FALSE(exists("/run/netns/" + name)) << name;
  EXPECT_EQ(netnsList().find(names[0].substr(0, names[0].rfind('-'))), std::string::npos)
      << netnsList();
}

TEST(FleetHarness, ConfigCarriesTlsAndClusterBlocks) {
  NODEAGENT_REQUIRE_ROOT();
  FleetOptions options;
  options.start = false;
  options.capacity = {2000, uint64_t(1) << 30, 5};
  Fleet fleet(3, options);
  for (int i = 0; i < 3; ++i) {
    auto& a = fleet.agent(i);
    // Valid JSON with exactly the keys the cluster side reads.
    std::string check =
        "import json, sys\n"
        "c = json.load(open(sys.argv[1]))\n"
        "cl, t = c['cluster'], c['tls']\n"
        "print(cl['enabled'], cl['bind'], ','.join(cl['seeds']), cl['keyFile'],\n"
        "      cl['capacity']['cpuMillis'], cl['capacity']['memoryBytes'],\n"
        "      cl['capacity']['slots'], t['certFile'], t['keyFile'], t['caFile'],\n"
        "      c['network']['enabled'])\n";
    auto r = runProcess({"python3", "-c", check, a.configPath()});
    ASSERT_EQ(r.exitCode, 0) << r.err << readWholeFile(a.configPath());
    std::string seeds;
    for (int j = 0; j < 3; ++j) {
      if (j != i) seeds += (seeds.empty() ? "" : ",") + fleet.network().address(j) + ":7946";
    }
    EXPECT_EQ(r.out, "True " + a.address() + ":7946 " + seeds + " " + a.gossipKeyFile() +
                         " 2000 1073741824 5 " + fleet.pki().nodeCert(i) + " " +
                         fleet.pki().nodeKey(i) + " " + fleet.pki().caCert() + " False\n");
    EXPECT_EQ(readWholeFile(a.gossipKeyFile()), fleet.gossipKey() + "\n");
    EXPECT_TRUE(std::regex_match(fleet.gossipKey(), std::regex("[0-9a-f]{64}")));

    // The node certificate chains to the CA and names the node's address.
    auto verify =
        runProcess({"openssl", "verify", "-CAfile", fleet.pki().caCert(), fleet.pki().nodeCert(i)});
    EXPECT_EQ(verify.exitCode, 0) << verify.out << verify.err;
    auto san = runProcess({"openssl", "x509", "-in", fleet.pki().nodeCert(i), "-noout", "-ext",
                           "subjectAltName,extendedKeyUsage"});
    EXPECT_NE(san.out.find("IP Address:" + a.address()), std::string::npos) << san.out;
    EXPECT_EQ(san.out.find("Extended Key Usage"), std::string::npos) << san.out;
  }
  auto gw = runProcess({"openssl", "x509", "-in", fleet.pki().gatewayCert(), "-noout", "-subject"});
  EXPECT_NE(gw.out.find("gw-fleet"), std::string::npos) << gw.out;
  EXPECT_EQ(
      runProcess({"openssl", "verify", "-CAfile", fleet.pki().caCert(), fleet.pki().gatewayCert()})
          .exitCode,
      0);
  EXPECT_NE(fleet.agent(0).uidBase(), fleet.agent(1).uidBase());
}

TEST(FleetHarness, AgentsRunInTheirNamespacesServeSandboxesAndLeaveNothingBehind) {
  NODEAGENT_REQUIRE_ROOT();
  std::vector<std::string> leftovers;  // paths that must be gone afterwards
  std::vector<pid_t> pids;
  {
    FleetOptions options;
    options.clusterConfig = false;  // plain agents: the harness alone
    Fleet fleet(5, options);
    leftovers.push_back(fleet.pki().dir());
    leftovers.push_back(fleet.network().hubNetnsPath());
    const ino_t rootNetns = inode("/proc/self/ns/net");
    for (int i = 0; i < fleet.size(); ++i) {
      auto& a = fleet.agent(i);
      leftovers.push_back(a.dir());
      leftovers.push_back(a.netnsPath());
      for (const char* h : {"unified", "pids", "memory", "cpu", "freezer"}) {
        std::string dir = std::string("/sys/fs/cgroup/") + h + "/" + a.cgroupRoot();
        if (exists(dir)) leftovers.push_back(dir);
      }
      leftovers.push_back("/sys/fs/bpf/nodeagent/" + a.cgroupRoot());
      ASSERT_TRUE(a.running()) << a.log();
      pids.push_back(a.pid());
      // Really inside its own namespace.
      ino_t ns = inode("/proc/" + std::to_string(a.pid()) + "/ns/net");
      EXPECT_EQ(ns, inode(a.netnsPath())) << "agent " << i;
      EXPECT_NE(ns, rootNetns) << "agent " << i;
      EXPECT_EQ(readWholeFile(a.configPath()).find("cluster"), std::string::npos);
    }
    for (int i = 0; i < 4; ++i) {
      EXPECT_NE(fleet.agent(i).uidBase(), fleet.agent(i + 1).uidBase());
    }

    // Every agent answers and runs code. Creating sandboxes on all five at
    // once is what a fleet does anyway.
    std::vector<std::future<std::string>> runs;
    for (int i = 0; i < fleet.size(); ++i) {
      runs.push_back(std::async(std::launch::async, [&fleet, i]() -> std::string {
        auto& a = fleet.agent(i);
        auto ls = a.sbx({"ls"});
        if (ls.exitCode != 0) return "ls: " + ls.err;
        auto created = a.sbx({"create", "--template", "python", "--tenant", "t"});
        std::string id = created.out.substr(0, created.out.find('\n'));
        if (created.exitCode != 0 || !id.starts_with("sbx-")) return "create: " + created.err;
        auto exec = a.sbx({"exec", id, "--", "python3", "-c", "print(7)"});
        if (exec.exitCode != 0) return "exec: " + exec.err;
        return exec.out;
      }));
    }
    for (int i = 0; i < fleet.size(); ++i) {
      EXPECT_EQ(runs[size_t(i)].get(), "7\n") << "agent " << i << "\n" << fleet.agent(i).log();
    }
    // Without the cluster block an agent is no fleet member: the fleet calls
    // fail with a typed error instead of pretending.
    for (auto args :
         std::vector<std::vector<std::string>>{{"place", "--template", "python", "--tenant", "t"},
                                               {"node", "members"},
                                               {"node", "capacity"},
                                               {"node", "keys"}}) {
      auto r = fleet.agent(0).sbx(args);
      EXPECT_EQ(r.exitCode, 125) << args[0];
      EXPECT_NE(r.err.find("unavailable"), std::string::npos) << r.err;
    }

    // kill -9 and restart: a new process, in the same namespace, ready again.
    auto& last = fleet.agent(4);
    pid_t before = last.pid();
    last.kill9();
    EXPECT_FALSE(last.running());
    EXPECT_FALSE(processAlive(before));
    last.restart();
    ASSERT_TRUE(last.waitReady()) << last.log();
    EXPECT_NE(last.pid(), before);
    EXPECT_EQ(inode("/proc/" + std::to_string(last.pid()) + "/ns/net"), inode(last.netnsPath()));
    pids.push_back(last.pid());
    EXPECT_EQ(last.terminate(), 0);  // SIGTERM: a clean exit
    EXPECT_FALSE(last.running());
    // kill -9 of an agent with a live sandbox: the destructor still cleans up.
    fleet.agent(3).kill9();
  }
  for (pid_t p : pids) EXPECT_FALSE(processAlive(p)) << p;
  for (const auto& path : leftovers) EXPECT_FALSE(exists(path)) << path;
}

}  // namespace
}  // namespace nodeagent::testing
