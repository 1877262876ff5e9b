// SandboxFs against a plain directory standing in for a sandbox root.
#include "nodeagent/sandbox_fs.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include <kj/function.h>

#include "nodeagent/api_error.h"
#include "support/privileged.h"

namespace nodeagent {
namespace {

class SandboxFsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/sandbox-fs-test-XXXXXX";
    base_ = mkdtemp(tmpl);
    root_ = base_ + "/root";
    mkdir(root_.c_str(), 0755);
    mkdir((root_ + "/tmp").c_str(), 01777);
    std::ofstream(base_ + "/outside") << "HOST\n";
    std::ofstream(root_ + "/inside") << "SANDBOX\n";
    int fd = open(root_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    fs_ = std::make_unique<SandboxFs>(kj::AutoCloseFd(fd), getuid(), getgid());
  }
  void TearDown() override { (void)!system(("rm -rf '" + base_ + "'").c_str()); }

  std::string readVia(const std::string& path) {
    kj::AutoCloseFd fd = fs_->openForRead(path.c_str());
    char buf[256];
    ssize_t n = read(fd, buf, sizeof(buf));
    return std::string(buf, n > 0 ? size_t(n) : 0);
  }

  api::ErrorCode codeOf(kj::FunctionParam<void()> fn) {
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { fn(); })) {
      KJ_IF_MAYBE (code, apiErrorCode(*e)) {
        return *code;
      }
      ADD_FAILURE() << "untyped error: " << e->getDescription().cStr();
      return api::ErrorCode::INTERNAL;
    }
    ADD_FAILURE() << "no error";
    return api::ErrorCode::INTERNAL;
  }

  std::string base_, root_;
  std::unique_ptr<SandboxFs> fs_;
};

TEST(SandboxFsNormalize, CleansAndRejects) {
  EXPECT_EQ(SandboxFs::normalize("/a//b/./c/"), "a/b/c");
  EXPECT_EQ(SandboxFs::normalize("/"), "");
  EXPECT_EQ(SandboxFs::normalize("rel/x"), "rel/x");
  for (const char* bad : {"../x", "/a/../b", "..", "/a/.."}) {
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&]() { SandboxFs::normalize(bad); })) {
      EXPECT_EQ(apiErrorCode(*e), api::ErrorCode::INVALID_PATH) << bad;
    } else {
      ADD_FAILURE() << bad << " accepted";
    }
  }
  std::string nul("a\0b", 3);
  EXPECT_TRUE(kj::runCatchingExceptions([&]() {
                SandboxFs::normalize(kj::StringPtr(nul.data(), nul.size()));
              }) != nullptr);
  EXPECT_TRUE(kj::runCatchingExceptions(
                  [&]() { SandboxFs::normalize(kj::str(kj::repeat('a', 5000))); }) != nullptr);
}

TEST_F(SandboxFsTest, ReadsInsideTheRoot) {
  EXPECT_EQ(readVia("/inside"), "SANDBOX\n");
}

TEST_F(SandboxFsTest, SymlinksResolveInsideTheRoot) {
  ASSERT_EQ(symlink((base_ + "/outside").c_str(), (root_ + "/abs").c_str()), 0);
  ASSERT_EQ(symlink("../../../../outside", (root_ + "/rel").c_str()), 0);
  ASSERT_EQ(symlink("/inside", (root_ + "/good").c_str()), 0);
  EXPECT_EQ(codeOf([&]() { readVia("/abs"); }), api::ErrorCode::NOT_FOUND);
  // "../../../../outside" from the root clamps at the root: /outside does not exist there.
  EXPECT_EQ(codeOf([&]() { readVia("/rel"); }), api::ErrorCode::NOT_FOUND);
  EXPECT_EQ(readVia("/good"), "SANDBOX\n");
}

// A real procfs inside the root: its /proc/self/root is the reader's own
// root, the host's, one magic link away. Followed, both reads below would
// return the host file. Today's kernels refuse magic links under
// RESOLVE_IN_ROOT already; RESOLVE_NO_MAGICLINKS keeps it so (openat2(2)).
TEST_F(SandboxFsTest, MagicLinksAreRefused) {
  NODEAGENT_REQUIRE_ROOT();
  std::string proc = root_ + "/proc";
  ASSERT_EQ(mkdir(proc.c_str(), 0755), 0);
  ASSERT_EQ(mount("proc", proc.c_str(), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr), 0)
      << strerror(errno);
  KJ_DEFER(umount2(proc.c_str(), MNT_DETACH));
  std::string hostFile = "/proc/self/root" + base_ + "/outside";
  ASSERT_EQ(symlink(hostFile.c_str(), (root_ + "/magic").c_str()), 0);
  EXPECT_EQ(codeOf([&]() { readVia("/magic"); }), api::ErrorCode::INVALID_PATH);
  EXPECT_EQ(codeOf([&]() { readVia(hostFile); }), api::ErrorCode::INVALID_PATH);
  // An upload onto the link replaces the link, never what it points at.
  {
    auto upload = fs_->beginUpload("/magic", 0644);
    ASSERT_EQ(write(upload->fd(), "x", 1), 1);
    upload->commit();
  }
  struct stat st;
  ASSERT_EQ(lstat((root_ + "/magic").c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  std::ifstream host(base_ + "/outside");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(host), {}), "HOST\n");
}

TEST_F(SandboxFsTest, FifosAndDirectoriesAreNotRead) {
  ASSERT_EQ(mkfifo((root_ + "/fifo").c_str(), 0644), 0);
  EXPECT_EQ(codeOf([&]() { readVia("/fifo"); }), api::ErrorCode::INVALID_PATH);
  EXPECT_EQ(codeOf([&]() { readVia("/tmp"); }), api::ErrorCode::INVALID_PATH);
}

TEST_F(SandboxFsTest, UploadAppearsOnlyOnCommit) {
  {
    auto upload = fs_->beginUpload("/tmp/file", 0640);
    ASSERT_EQ(write(upload->fd(), "abc", 3), 3);
    EXPECT_NE(access((root_ + "/tmp/file").c_str(), F_OK), 0);
    upload->commit();
  }
  std::ifstream in(root_ + "/tmp/file");
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_EQ(ss.str(), "abc");
  struct stat st;
  ASSERT_EQ(stat((root_ + "/tmp/file").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
  {
    auto abandoned = fs_->beginUpload("/tmp/abandoned", 0644);
    ASSERT_EQ(write(abandoned->fd(), "x", 1), 1);
  }
  bool truncated;
  EXPECT_EQ(fs_->list("/tmp", 100, &truncated).size(), 1u) << "the abandoned temporary is gone";
}

TEST_F(SandboxFsTest, UploadOntoSymlinkReplacesTheLink) {
  ASSERT_EQ(symlink((base_ + "/outside").c_str(), (root_ + "/tmp/link").c_str()), 0);
  auto upload = fs_->beginUpload("/tmp/link", 0644);
  ASSERT_EQ(write(upload->fd(), "new", 3), 3);
  upload->commit();
  std::ifstream in(base_ + "/outside");
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_EQ(ss.str(), "HOST\n");
  EXPECT_EQ(readVia("/tmp/link"), "new");
}

TEST_F(SandboxFsTest, UploadThroughSymlinkedDirectoryStaysInside) {
  // /tmp/out -> the host's base dir: writing /tmp/out/x must land in the
  // sandbox's own (nonexistent) path, i.e. fail, never in the host dir.
  ASSERT_EQ(symlink(base_.c_str(), (root_ + "/tmp/out").c_str()), 0);
  EXPECT_EQ(codeOf([&]() { fs_->beginUpload("/tmp/out/x", 0644); }), api::ErrorCode::NOT_FOUND);
  EXPECT_NE(access((base_ + "/x").c_str(), F_OK), 0);
}

TEST_F(SandboxFsTest, MkdirListStatRemove) {
  fs_->mkdir("/a/b/c", true);
  EXPECT_EQ(codeOf([&]() { fs_->mkdir("/a", false); }), api::ErrorCode::ALREADY_EXISTS);
  EXPECT_EQ(codeOf([&]() { fs_->mkdir("/x/y", false); }), api::ErrorCode::NOT_FOUND);
  std::ofstream(root_ + "/a/b/file") << "12345";
  ASSERT_EQ(symlink("/inside", (root_ + "/a/link").c_str()), 0);
  bool truncated = true;
  auto entries = fs_->list("/a", 100, &truncated);
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_FALSE(truncated);
  EXPECT_EQ(fs_->list("/a", 1, &truncated).size(), 1u);
  EXPECT_TRUE(truncated);
  auto st = fs_->stat("/a/b/file");
  EXPECT_EQ(st.type, FileEntry::Type::kFile);
  EXPECT_EQ(st.size, 5u);
  EXPECT_EQ(fs_->stat("/a/link").type, FileEntry::Type::kSymlink);
  EXPECT_EQ(fs_->stat("/a/b").type, FileEntry::Type::kDirectory);
  EXPECT_EQ(codeOf([&]() { fs_->remove("/a", false); }), api::ErrorCode::INVALID_PATH);
  fs_->remove("/a", true);
  EXPECT_NE(access((root_ + "/a").c_str(), F_OK), 0);
  EXPECT_EQ(access((root_ + "/inside").c_str(), F_OK), 0) << "symlink target untouched";
  EXPECT_EQ(codeOf([&]() { fs_->remove("/", true); }), api::ErrorCode::INVALID_PATH);
}

TEST_F(SandboxFsTest, MkdirFollowsSymlinksInsideTheRootOnly) {
  mkdir((root_ + "/usr").c_str(), 0755);
  mkdir((root_ + "/usr/lib").c_str(), 0755);
  ASSERT_EQ(symlink("usr/lib", (root_ + "/lib").c_str()), 0);
  fs_->mkdir("/lib/x/y", true);
  EXPECT_EQ(access((root_ + "/usr/lib/x/y").c_str(), F_OK), 0);
  // A symlink to a host directory resolves inside the root, where it is missing.
  ASSERT_EQ(symlink(base_.c_str(), (root_ + "/out").c_str()), 0);
  EXPECT_EQ(codeOf([&]() { fs_->mkdir("/out/evil", true); }), api::ErrorCode::NOT_FOUND);
  EXPECT_NE(access((base_ + "/evil").c_str(), F_OK), 0);
  // `parents` accepts an existing directory, never an existing file.
  EXPECT_EQ(codeOf([&]() { fs_->mkdir("/inside", true); }), api::ErrorCode::INVALID_PATH);
}

TEST_F(SandboxFsTest, LeasedFileIsUnavailableNotAHang) {
  signal(SIGIO, SIG_IGN);  // the lease holder (us, here) is told of the break attempt
  int fd = open((root_ + "/leased").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fcntl(fd, F_SETLEASE, F_WRLCK), 0) << strerror(errno);
  EXPECT_EQ(codeOf([&]() { readVia("/leased"); }), api::ErrorCode::UNAVAILABLE);
  fcntl(fd, F_SETLEASE, F_UNLCK);
  close(fd);
}

TEST_F(SandboxFsTest, DeepTreesAreRefusedNotACrash) {
  std::string path = root_ + "/deep";
  mkdir(path.c_str(), 0755);
  int dir = open(path.c_str(), O_RDONLY | O_DIRECTORY);
  for (int i = 0; i < 300; ++i) {  // deeper than the agent walks
    ASSERT_EQ(mkdirat(dir, "d", 0755), 0);
    int next = openat(dir, "d", O_RDONLY | O_DIRECTORY);
    close(dir);
    dir = next;
  }
  close(dir);
  EXPECT_EQ(codeOf([&]() { fs_->remove("/deep", true); }), api::ErrorCode::LIMIT_EXCEEDED);
  (void)!system(("rm -rf '" + path + "'").c_str());
}

TEST_F(SandboxFsTest, RecursiveRemoveDoesNotFollowSymlinks) {
  fs_->mkdir("/d", false);
  ASSERT_EQ(symlink(base_.c_str(), (root_ + "/d/escape").c_str()), 0);
  fs_->remove("/d", true);
  EXPECT_EQ(access((base_ + "/outside").c_str(), F_OK), 0);
}

TEST(ApiError, CodeSurvivesTheDescription) {
  auto e = makeApiError(api::ErrorCode::UNKNOWN_TEMPLATE, "no template named 'x'");
  EXPECT_EQ(apiErrorCode(e), api::ErrorCode::UNKNOWN_TEMPLATE);
  EXPECT_EQ(kj::str(apiErrorMessage(e)), "no template named 'x'");
  kj::Exception remote(kj::Exception::Type::FAILED, "x", 1,
                       kj::str("remote exception: ", e.getDescription()));
  EXPECT_EQ(apiErrorCode(remote), api::ErrorCode::UNKNOWN_TEMPLATE);
  kj::Exception plain(kj::Exception::Type::FAILED, "x", 1, kj::str("nodeagent.bogus: y"));
  EXPECT_EQ(apiErrorCode(plain), nullptr);
}

}  // namespace
}  // namespace nodeagent
