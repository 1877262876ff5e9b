// The egress policy programs, loaded into the kernel and attached to a cgroup
// of the test's own, judging real connect(2) and sendto(2) calls from a
// process in a child cgroup. UDP connect sends nothing, so no packet leaves
// the host; only the verdicts (EPERM or not) are observed.
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <kj/debug.h>

#include <string>
#include <vector>

#include "ebpf/cpu_meter.h"
#include "ebpf/egress_filter.h"
#include "support/privileged.h"
#include "util/ip_prefix.h"

namespace nodeagent::ebpf {
namespace {

std::string cgroup2Root() {
  struct stat st;
  if (stat("/sys/fs/cgroup/unified/cgroup.procs", &st) == 0) return "/sys/fs/cgroup/unified";
  return "/sys/fs/cgroup";
}

Address16 addr(const char* text) {
  KJ_IF_MAYBE (a, IpAddress::parse(text)) {
    return a->bytes();
  }
  KJ_FAIL_REQUIRE("bad address", text);
}

AddressPrefix prefix(const char* text) {
  KJ_IF_MAYBE (p, IpPrefix::parse(text)) {
    return AddressPrefix{p->address().bytes(), p->length()};
  }
  KJ_FAIL_REQUIRE("bad prefix", text);
}

// kj::Own's destructor may throw; a gtest fixture's may not.
struct OwnedFilter {
  kj::Own<EgressFilter> own;
  ~OwnedFilter() noexcept {}
  EgressFilter* operator->() { return own.get(); }
  OwnedFilter& operator=(kj::Own<EgressFilter> f) {
    own = kj::mv(f);
    return *this;
  }
  OwnedFilter& operator=(decltype(nullptr)) {
    own = nullptr;
    return *this;
  }
};

// Parent cgroup with the programs attached, one sandbox cgroup below it.
class EgressFilterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    NODEAGENT_REQUIRE_ROOT();
    parent_ = cgroup2Root() + "/nodeagent-egresstest-" + std::to_string(getpid());
    sandbox_ = parent_ + "/sb";
    KJ_SYSCALL(mkdir(parent_.c_str(), 0755), parent_);
    KJ_SYSCALL(mkdir(sandbox_.c_str(), 0755), sandbox_);
    pinDir_ = "/sys/fs/bpf/nodeagent-egresstest-" + std::to_string(getpid());
    filter_ = EgressFilter::start(pinDir_.c_str(), parent_.c_str());
    cgroup_ = cgroupIdOf(sandbox_.c_str());
    kj::Vector<GlobalRule> rules;
    for (const char* denied : {"10.0.0.0/8", "169.254.0.0/16", "192.168.0.0/16", "fc00::/7"}) {
      rules.add(GlobalRule{prefix(denied), false});
    }
    rules.add(GlobalRule{prefix("10.7.0.0/16"), true});  // an operator's exception
    filter_->setAlwaysRules(rules);
  }
  void TearDown() override {
    filter_ = nullptr;
    if (!pinDir_.empty()) EgressFilter::removePinned(pinDir_.c_str());
    if (!sandbox_.empty()) rmdir(sandbox_.c_str());
    if (!parent_.empty()) rmdir(parent_.c_str());
  }

  void setMode(uint8_t mode, uint64_t byteCap = 0) {
    na_policy policy{};
    policy.mode = mode;
    policy.byte_cap = byteCap;
    memcpy(policy.resolver4, addr("10.250.0.1").data(), 16);
    policy.resolver_port = htons(53);
    filter_->setPolicy(cgroup_, policy);
  }

  // errno of a UDP connect() to ADDR:PORT made from inside the sandbox cgroup (0 = allowed).
  int connectErrno(const char* address, uint16_t port) {
    int pipeFds[2];
    KJ_SYSCALL(pipe(pipeFds));
    pid_t pid = fork();
    if (pid == 0) {
      int fd = open((sandbox_ + "/cgroup.procs").c_str(), O_WRONLY);
      if (fd < 0 || write(fd, "0", 1) != 1) _exit(3);
      close(fd);
      int err = 0;
      in6_addr a6;
      in_addr a4;
      int s;
      if (inet_pton(AF_INET, address, &a4) == 1) {
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        sa.sin_port = htons(port);
        sa.sin_addr = a4;
        s = socket(AF_INET, SOCK_DGRAM, 0);
        if (connect(s, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) err = errno;
      } else {
        inet_pton(AF_INET6, address, &a6);
        sockaddr_in6 sa{};
        sa.sin6_family = AF_INET6;
        sa.sin6_port = htons(port);
        sa.sin6_addr = a6;
        s = socket(AF_INET6, SOCK_DGRAM, 0);
        if (connect(s, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) err = errno;
      }
      ssize_t ignored = write(pipeFds[1], &err, sizeof(err));
      (void)ignored;
      _exit(0);
    }
    close(pipeFds[1]);
    int err = -1;
    KJ_ASSERT(read(pipeFds[0], &err, sizeof(err)) == sizeof(err));
    close(pipeFds[0]);
    int status;
    waitpid(pid, &status, 0);
    return err;
  }

  std::string parent_, sandbox_, pinDir_;
  OwnedFilter filter_;
  uint64_t cgroup_ = 0;
};

TEST_F(EgressFilterTest, OffAllowsOnlyLoopback) {
  setMode(NA_NET_OFF);
  EXPECT_EQ(connectErrno("127.0.0.1", 80), 0);
  EXPECT_EQ(connectErrno("::1", 80), 0);
  EXPECT_EQ(connectErrno("198.51.100.10", 80), EPERM);
  EXPECT_EQ(connectErrno("2001:db8::10", 80), EPERM);
}

TEST_F(EgressFilterTest, ASandboxWithoutPolicyIsRefused) {
  EXPECT_EQ(connectErrno("198.51.100.10", 80), EPERM);
  EXPECT_EQ(connectErrno("127.0.0.1", 80), 0);
}

TEST_F(EgressFilterTest, OpenDeniesTheAlwaysDeniedSetInEveryForm) {
  setMode(NA_NET_OPEN);
  EXPECT_EQ(connectErrno("198.51.100.10", 80), 0);
  EXPECT_EQ(connectErrno("2001:db8::10", 443), 0);
  EXPECT_EQ(connectErrno("10.1.2.3", 80), EPERM);
  EXPECT_EQ(connectErrno("169.254.169.254", 80), EPERM);
  EXPECT_EQ(connectErrno("::ffff:10.1.2.3", 80), EPERM);  // IPv4-mapped
  EXPECT_EQ(connectErrno("::ffff:169.254.169.254", 80), EPERM);
  EXPECT_EQ(connectErrno("64:ff9b::a01:203", 80), EPERM);  // NAT64 of 10.1.2.3
  EXPECT_EQ(connectErrno("fd00:ec2::254", 80), EPERM);
  EXPECT_EQ(connectErrno("10.7.1.1", 80), 0);  // the operator's exception
  // The agent's resolver is reachable on its port only.
  EXPECT_EQ(connectErrno("10.250.0.1", 53), 0);
  EXPECT_EQ(connectErrno("10.250.0.1", 54), EPERM);
}

TEST_F(EgressFilterTest, RestrictedAllowsItsListOnly) {
  setMode(NA_NET_RESTRICTED);
  AllowRule web{prefix("203.0.113.0/24"), {}};
  web.ports.add(443);
  AllowRule any{prefix("198.51.100.7"), {}};
  AllowRule mapped{prefix("10.1.0.0/16"), {}};  // always-denied wins over a tenant
  AllowRule v6{prefix("2001:db8:1::/48"), {}};
  kj::Vector<AllowRule> rules;
  rules.add(kj::mv(web));
  rules.add(kj::mv(any));
  rules.add(kj::mv(mapped));
  rules.add(kj::mv(v6));
  filter_->setAllowRules(cgroup_, rules);
  EXPECT_EQ(connectErrno("203.0.113.10", 443), 0);
  EXPECT_EQ(connectErrno("203.0.113.10", 80), EPERM);
  EXPECT_EQ(connectErrno("::ffff:203.0.113.10", 443), 0);
  EXPECT_EQ(connectErrno("198.51.100.7", 22), 0);
  EXPECT_EQ(connectErrno("198.51.100.8", 22), EPERM);
  EXPECT_EQ(connectErrno("10.1.2.3", 80), EPERM);
  EXPECT_EQ(connectErrno("2001:db8:1::10", 80), 0);
  EXPECT_EQ(connectErrno("2001:db8:2::10", 80), EPERM);
  // Other resolvers, even on the list: denied.
  EXPECT_EQ(connectErrno("198.51.100.7", 53), EPERM);
  EXPECT_EQ(connectErrno("198.51.100.7", 853), EPERM);
  EXPECT_EQ(connectErrno("10.250.0.1", 53), 0);

  // Replacing the list drops what is no longer on it.
  filter_->setAllowRules(cgroup_, nullptr);
  EXPECT_EQ(connectErrno("198.51.100.7", 22), EPERM);
}

TEST_F(EgressFilterTest, ResolvedAddressesAreAllowedUntilTheyLapse) {
  setMode(NA_NET_RESTRICTED);
  uint64_t now = bootClockNs();
  filter_->allowResolved(cgroup_, addr("198.51.100.10"), now + 60'000'000'000);
  filter_->allowResolved(cgroup_, addr("198.51.100.11"), now - 1);
  EXPECT_EQ(connectErrno("198.51.100.10", 80), 0);
  EXPECT_EQ(connectErrno("198.51.100.11", 80), EPERM);
  EXPECT_EQ(filter_->expireResolved(bootClockNs()), 1u);
  filter_->forgetResolved(cgroup_);
  EXPECT_EQ(connectErrno("198.51.100.10", 80), EPERM);
}

TEST_F(EgressFilterTest, RefusalsAreCountedAndReported) {
  setMode(NA_NET_RESTRICTED);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(connectErrno("198.51.100.9", 8080), EPERM);
  EXPECT_EQ(connectErrno("169.254.169.254", 80), EPERM);
  EXPECT_EQ(filter_->counters(cgroup_).denied_calls, 4u);
  std::vector<na_event> seen;
  filter_->drainEvents([&](const na_event& e) { seen.push_back(e); });
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_EQ(seen[0].cgroup, cgroup_);
  EXPECT_EQ(IpAddress::fromV6(seen[0].addr).toString(), "198.51.100.9");
  EXPECT_EQ(seen[0].port, 8080);
  EXPECT_EQ(seen[0].reason, NA_DENY_NOT_ALLOWED);
  EXPECT_EQ(seen[0].hook, NA_HOOK_CONNECT);
  EXPECT_EQ(seen[3].reason, NA_DENY_ALWAYS_DENIED);
}

TEST_F(EgressFilterTest, AuditEventsAreRateLimitedPerSandbox) {
  setMode(NA_NET_OFF);
  for (int i = 0; i < NA_AUDIT_BURST + 10; ++i) connectErrno("198.51.100.9", 80);
  std::vector<na_event> seen;
  filter_->drainEvents([&](const na_event& e) { seen.push_back(e); });
  EXPECT_GE(seen.size(), size_t(NA_AUDIT_BURST));
  EXPECT_LT(seen.size(), size_t(NA_AUDIT_BURST + 10));
  sleep(1);  // the bucket refills; the next event owns up to the dropped ones
  connectErrno("198.51.100.9", 80);
  seen.clear();
  filter_->drainEvents([&](const na_event& e) { seen.push_back(e); });
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_GT(seen[0].suppressed, 0u);
}

TEST_F(EgressFilterTest, PolicyOutlivesTheLoaderAndIsTakenOver) {
  setMode(NA_NET_RESTRICTED);
  filter_->allowResolved(cgroup_, addr("198.51.100.10"), bootClockNs() + 60'000'000'000);
  filter_ = nullptr;  // the agent is gone: pinned links keep enforcing
  EXPECT_EQ(connectErrno("198.51.100.10", 80), 0);
  EXPECT_EQ(connectErrno("198.51.100.12", 80), EPERM);
  filter_ = EgressFilter::start(pinDir_.c_str(), parent_.c_str());
  EXPECT_EQ(KJ_ASSERT_NONNULL(filter_->policy(cgroup_)).mode, NA_NET_RESTRICTED);
  EXPECT_EQ(connectErrno("198.51.100.10", 80), 0);
  EXPECT_EQ(connectErrno("198.51.100.12", 80), EPERM);
  std::vector<na_event> seen;
  filter_->drainEvents([&](const na_event& e) { seen.push_back(e); });
  EXPECT_EQ(seen.size(), 2u);  // both refusals, including the one made with no agent
  filter_->retainOnly(nullptr);
  EXPECT_TRUE(filter_->policy(cgroup_) == nullptr);
}

}  // namespace
}  // namespace nodeagent::ebpf
