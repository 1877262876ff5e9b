#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <kj/exception.h>

#include <fstream>
#include <map>
#include <sstream>

#include "isolator/file_util.h"
#include "isolator/template.h"

namespace nodeagent::isolator {
namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string linkTarget(const std::string& path) {
  char buf[4096];
  ssize_t n = readlink(path.c_str(), buf, sizeof(buf));
  return n < 0 ? "" : std::string(buf, size_t(n));
}

mode_t modeOf(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return 0;
  return st.st_mode;
}

class SkeletonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/skeleton-test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    base_ = tmpl;
    dir_ = base_ + "/templates/skel";
  }
  void TearDown() override { removeTree(base_); }

  std::string base_, dir_;
};

TEST_F(SkeletonTest, SeedHoldsDirectoriesAndSmallFilesParentsFirst) {
  prepareSkeleton(dir_);
  // A big file and a symlink stay in the lower layer only.
  {
    std::ofstream big(dir_ + "/etc/big");
    big << std::string(kSkeletonCopyUpLimit + 1, 'x');
  }
  ASSERT_EQ(symlink("passwd", (dir_ + "/etc/passwd-link").c_str()), 0);
  // Nothing others may not read: the sandbox could not read it through the overlay.
  {
    std::ofstream secret(dir_ + "/etc/secret");
    secret << "host only";
  }
  ASSERT_EQ(chmod((dir_ + "/etc/secret").c_str(), 0600), 0);
  ASSERT_EQ(mkdir((dir_ + "/etc/private").c_str(), 0700), 0);
  {
    std::ofstream inside(dir_ + "/etc/private/file");
    inside << "host only";
  }
  std::vector<SeedEntry> seed = readSkeletonSeed(dir_);
  std::map<std::string, const SeedEntry*> byPath;
  for (size_t i = 0; i < seed.size(); ++i) {
    const SeedEntry& entry = seed[i];
    byPath[entry.path] = &entry;
    size_t slash = entry.path.rfind('/');
    if (slash != std::string::npos) {
      auto parent = byPath.find(entry.path.substr(0, slash));
      ASSERT_NE(parent, byPath.end()) << entry.path << " before its directory";
      EXPECT_TRUE(parent->second->directory);
    }
  }
  ASSERT_TRUE(byPath.count("etc/passwd"));
  EXPECT_FALSE(byPath["etc/passwd"]->directory);
  EXPECT_EQ(byPath["etc/passwd"]->content, slurp(dir_ + "/etc/passwd"));
  EXPECT_EQ(byPath["etc/passwd"]->mode, 0644u);
  ASSERT_TRUE(byPath.count("tmp"));
  EXPECT_EQ(byPath["tmp"]->mode, 01777u);
  ASSERT_TRUE(byPath.count("root"));
  EXPECT_EQ(byPath["root"]->mode, 0700u);  // private in the sandbox, traversable on the host
  EXPECT_EQ(byPath.count("etc/big"), 0u);
  EXPECT_EQ(byPath.count("etc/passwd-link"), 0u);
  EXPECT_EQ(byPath.count("bin"), 0u);
  EXPECT_EQ(byPath.count("etc/alternatives"), 1u);
  EXPECT_EQ(byPath.count("etc/secret"), 0u);
  EXPECT_EQ(byPath.count("etc/private"), 0u);
  EXPECT_EQ(byPath.count("etc/private/file"), 0u);
}

TEST_F(SkeletonTest, ASeedTooBigForASetupMessageIsRefused) {
  prepareSkeleton(dir_);
  for (int i = 0; i * kSkeletonCopyUpLimit <= kMaxSeedBytes; ++i) {
    std::ofstream file(dir_ + "/etc/file" + std::to_string(i));
    file << std::string(kSkeletonCopyUpLimit, 'x');
  }
  EXPECT_THROW(readSkeletonSeed(dir_), kj::Exception);
}

TEST_F(SkeletonTest, HasLinksDirsAndItsOwnEtc) {
  prepareSkeleton(dir_);
  EXPECT_EQ(linkTarget(dir_ + "/bin"), "usr/bin");
  EXPECT_EQ(linkTarget(dir_ + "/sbin"), "usr/sbin");
  EXPECT_EQ(linkTarget(dir_ + "/lib"), "usr/lib");
  EXPECT_EQ(linkTarget(dir_ + "/lib64"), "usr/lib64");
  EXPECT_EQ(!linkTarget(dir_ + "/lib32").empty(), access("/usr/lib32", F_OK) == 0);
  EXPECT_EQ(!linkTarget(dir_ + "/libx32").empty(), access("/usr/libx32", F_OK) == 0);
  for (const char* d :
       {"usr", "proc", "dev", "sys", "root", "home", "run", "var", "mnt", "opt", "srv", "etc"}) {
    EXPECT_TRUE(S_ISDIR(modeOf(dir_ + "/" + d))) << d;
    EXPECT_EQ(modeOf(dir_ + "/" + d) & 07777, 0755u) << d;
  }
  EXPECT_EQ(modeOf(dir_ + "/tmp") & 07777, 01777u);
  EXPECT_EQ(modeOf(dir_ + "/var/tmp") & 07777, 01777u);

  std::string passwd = slurp(dir_ + "/etc/passwd");
  EXPECT_EQ(passwd.rfind("root:x:0:0:root:/root:/bin/bash\n", 0), 0u);
  EXPECT_NE(passwd.find("nobody:x:65534:"), std::string::npos);
  EXPECT_NE(slurp(dir_ + "/etc/group").find("root:x:0:"), std::string::npos);
  EXPECT_NE(slurp(dir_ + "/etc/hosts").find("127.0.0.1\tlocalhost"), std::string::npos);
  EXPECT_EQ(slurp(dir_ + "/etc/resolv.conf"), "nameserver 127.0.0.1\n");
  EXPECT_NE(slurp(dir_ + "/etc/nsswitch.conf").find("hosts:"), std::string::npos);
  EXPECT_EQ(modeOf(dir_ + "/etc/passwd") & 07777, 0644u);
  if (access("/etc/ssl/certs/ca-certificates.crt", R_OK) == 0) {
    EXPECT_EQ(slurp(dir_ + "/etc/ssl/certs/ca-certificates.crt"),
              slurp("/etc/ssl/certs/ca-certificates.crt"));
  }
}

TEST_F(SkeletonTest, NothingOfTheHostsPrivateDirs) {
  prepareSkeleton(dir_);
  for (const char* d : {"root", "home", "run", "var/tmp", "mnt", "opt", "srv"}) {
    std::string path = dir_ + "/" + d;
    DIR* dir = opendir(path.c_str());
    ASSERT_NE(dir, nullptr) << d;
    int entries = 0;
    while (struct dirent* e = readdir(dir)) entries += e->d_name[0] != '.';
    closedir(dir);
    EXPECT_EQ(entries, 0) << d;
  }
  // Only our files in /etc, not the host's.
  for (const char* hostOnly : {"shadow", "machine-id", "fstab", "hostname", "sudoers"}) {
    EXPECT_EQ(modeOf(dir_ + "/etc/" + hostOnly), 0u) << hostOnly;
  }
  // Alternatives are copied only as links back into the OS image.
  if (access("/etc/alternatives/awk", F_OK) == 0) {
    EXPECT_EQ(linkTarget(dir_ + "/etc/alternatives/awk"), linkTarget("/etc/alternatives/awk"));
  }
}

TEST_F(SkeletonTest, IdempotentAndRecoversFromACrashedBuild) {
  // A half-built tree from a crash is thrown away.
  ASSERT_EQ(mkdir((base_ + "/templates").c_str(), 0755), 0);
  ASSERT_EQ(mkdir((dir_ + ".tmp").c_str(), 0755), 0);
  ASSERT_EQ(mkdir((dir_ + ".tmp/garbage").c_str(), 0755), 0);
  prepareSkeleton(dir_);
  EXPECT_EQ(modeOf(dir_ + ".tmp"), 0u);
  EXPECT_EQ(modeOf(dir_ + "/garbage"), 0u);
  // A second call keeps the existing tree as it is...
  ASSERT_EQ(unlink((dir_ + "/etc/hosts").c_str()), 0);
  prepareSkeleton(dir_);
  EXPECT_EQ(modeOf(dir_ + "/etc/hosts"), 0u);
  // ...but for the node's resolver, which follows the configuration.
  prepareSkeleton(dir_, "/usr", "nameserver 10.250.0.1\n");
  std::ifstream resolv(dir_ + "/etc/resolv.conf");
  std::string line;
  std::getline(resolv, line);
  EXPECT_EQ(line, "nameserver 10.250.0.1");
  EXPECT_EQ(modeOf(dir_ + "/etc/resolv.conf"), 0100644u);
}

TEST_F(SkeletonTest, CarriesTheHostsLoaderCacheOutsideTheSeedAndRefreshesIt) {
  ASSERT_EQ(access("/etc/ld.so.cache", R_OK), 0) << "a Debian host has a loader cache";
  prepareSkeleton(dir_);
  EXPECT_EQ(slurp(dir_ + "/etc/ld.so.cache"), slurp("/etc/ld.so.cache"));
  EXPECT_EQ(modeOf(dir_ + "/etc/ld.so.cache") & 07777, 0644u);
  for (const SeedEntry& entry : readSkeletonSeed(dir_)) EXPECT_NE(entry.path, "etc/ld.so.cache");
  // A package upgrade rewrites the host's cache; the next start picks it up.
  {
    std::ofstream stale(dir_ + "/etc/ld.so.cache", std::ios::trunc);
    stale << "stale";
  }
  prepareSkeleton(dir_);
  EXPECT_EQ(slurp(dir_ + "/etc/ld.so.cache"), slurp("/etc/ld.so.cache"));
  // It describes the host's /usr only.
  std::string other = base_ + "/templates/other";
  prepareSkeleton(other, "/opt/image/usr");
  EXPECT_EQ(modeOf(other + "/etc/ld.so.cache"), 0u);
}

TEST_F(SkeletonTest, RejectsRelativeOrFilePaths) {
  EXPECT_THROW(prepareSkeleton("relative/dir"), kj::Exception);
  std::string file = base_ + "/file";
  { std::ofstream(file) << "x"; }
  EXPECT_THROW(prepareSkeleton(file), kj::Exception);
}

}  // namespace
}  // namespace nodeagent::isolator
