#include "support/fleet_process.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace nodeagent::testing {
namespace {

using Clock = std::chrono::steady_clock;

// Async-signal-safe message from a forked child.
void childSay(int fd, const char* text) {
  ssize_t ignored = write(fd, text, strlen(text));
  (void)ignored;
}

int makeStdin(const std::string& input) {
  int fd = memfd_create("fleet-stdin", MFD_CLOEXEC);
  if (fd < 0) return -1;
  size_t done = 0;
  while (done < input.size()) {
    ssize_t n = write(fd, input.data() + done, input.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      close(fd);
      return -1;
    }
    done += size_t(n);
  }
  lseek(fd, 0, SEEK_SET);
  return fd;
}

std::string joinArgs(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) {
    if (!out.empty()) out += ' ';
    out += a;
  }
  return out;
}

}  // namespace

CommandOutput runProcess(const std::vector<std::string>& argv, const std::string& input,
                         const std::string& netnsPath, int timeoutMs) {
  CommandOutput result;
  if (argv.empty()) {
    result.err = "runProcess: empty argv";
    return result;
  }
  // Everything the child needs is prepared before fork().
  int inFd = makeStdin(input);
  int nsFd = netnsPath.empty() ? -2 : open(netnsPath.c_str(), O_RDONLY | O_CLOEXEC);
  int outPipe[2] = {-1, -1};
  int errPipe[2] = {-1, -1};
  bool ok =
      inFd >= 0 && nsFd != -1 && pipe2(outPipe, O_CLOEXEC) == 0 && pipe2(errPipe, O_CLOEXEC) == 0;
  if (!ok) {
    result.err = "runProcess: cannot set up `" + joinArgs(argv) + "`: " + strerror(errno) +
                 (nsFd == -1 ? " (netns " + netnsPath + ")" : "");
    for (int fd : {inFd, nsFd, outPipe[0], outPipe[1], errPipe[0], errPipe[1]}) {
      if (fd >= 0) close(fd);
    }
    return result;
  }
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);

  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    setpgid(0, 0);
    if (nsFd >= 0 && setns(nsFd, CLONE_NEWNET) != 0) {
      childSay(errPipe[1], "runProcess: setns failed\n");
      _exit(126);
    }
    dup2(inFd, 0);
    dup2(outPipe[1], 1);
    dup2(errPipe[1], 2);
    execvp(args[0], args.data());
    childSay(2, "runProcess: exec failed\n");
    _exit(127);
  }
  for (int fd : {inFd, nsFd, outPipe[1], errPipe[1]}) {
    if (fd >= 0) close(fd);
  }
  if (pid < 0) {
    close(outPipe[0]);
    close(errPipe[0]);
    result.err = "runProcess: fork failed";
    return result;
  }
  setpgid(pid, pid);  // also from here, so kill(-pid) works at once

  const auto deadline = Clock::now() + std::chrono::milliseconds(timeoutMs);
  bool timedOut = false;
  int fds[2] = {outPipe[0], errPipe[0]};
  std::string* sinks[2] = {&result.out, &result.err};
  char buf[65536];
  while (fds[0] >= 0 || fds[1] >= 0) {
    pollfd pfds[2];
    int map[2];
    int n = 0;
    for (int i = 0; i < 2; ++i) {
      if (fds[i] >= 0) {
        pfds[n] = {fds[i], POLLIN, 0};
        map[n++] = i;
      }
    }
    int wait = -1;
    if (timeoutMs > 0) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      wait = int(std::max<int64_t>(0, left.count()));
    }
    int ready = poll(pfds, nfds_t(n), timedOut ? 1000 : wait);
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) {
      if (timedOut) break;  // something outside the group still holds the pipes
      timedOut = true;
      kill(-pid, SIGKILL);
      continue;
    }
    for (int k = 0; k < n; ++k) {
      if (!pfds[k].revents) continue;
      int i = map[k];
      ssize_t r = read(fds[i], buf, sizeof buf);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        close(fds[i]);
        fds[i] = -1;
      } else {
        sinks[i]->append(buf, size_t(r));
      }
    }
  }
  for (int fd : fds) {
    if (fd >= 0) close(fd);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exitCode = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (timedOut) result.err += "[timed out]";
  return result;
}

std::string runOrThrow(const std::vector<std::string>& argv, const std::string& input,
                       const std::string& netnsPath) {
  auto r = runProcess(argv, input, netnsPath);
  if (r.exitCode != 0) {
    throw std::runtime_error("`" + joinArgs(argv) + "`" +
                             (netnsPath.empty() ? "" : " in " + netnsPath) + " exited " +
                             std::to_string(r.exitCode) + ": " + r.err + r.out);
  }
  return r.out;
}

std::string defaultBinDir() {
  const char* dir = getenv("NODEAGENT_BIN_DIR");
  return dir && *dir ? dir : "build/bin";
}

std::string readWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void writeWholeFile(const std::string& path, const std::string& content, mode_t mode) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) throw std::runtime_error("cannot write " + path + ": " + strerror(errno));
  size_t done = 0;
  while (done < content.size()) {
    ssize_t n = write(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int e = errno;
      close(fd);
      throw std::runtime_error("cannot write " + path + ": " + strerror(e));
    }
    done += size_t(n);
  }
  fchmod(fd, mode);  // O_CREAT's mode is masked by the umask
  close(fd);
}

bool processAlive(pid_t pid) {
  std::string stat = readWholeFile("/proc/" + std::to_string(pid) + "/stat");
  auto paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z';
}

bool leftoverOfDeadProcess(const std::string& name, const std::string& prefix) {
  if (!name.starts_with(prefix)) return false;
  size_t end = prefix.size();
  while (end < name.size() && name[end] >= '0' && name[end] <= '9') ++end;
  if (end == prefix.size() || end - prefix.size() > 9) return false;
  pid_t owner = pid_t(std::stol(name.substr(prefix.size(), end - prefix.size())));
  if (owner <= 0 || owner == getpid()) return false;
  return kill(owner, 0) != 0 && errno == ESRCH;
}

void killAndRemoveCgroup(const std::string& cgroupDir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(cgroupDir, ec)) return;
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::vector<fs::path> dirs{cgroupDir};
    for (auto it = fs::recursive_directory_iterator(cgroupDir, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->is_directory(ec) && !it->is_symlink(ec)) dirs.push_back(it->path());
    }
    for (const auto& d : dirs) {
      std::istringstream procs(readWholeFile((d / "cgroup.procs").string()));
      for (pid_t p; procs >> p;) kill(p, SIGKILL);
    }
    // Deepest first: a cgroup goes only once its children have.
    std::sort(dirs.begin(), dirs.end(), [](const fs::path& a, const fs::path& b) {
      return a.string().size() > b.string().size();
    });
    for (const auto& d : dirs) rmdir(d.c_str());
    if (!fs::exists(cgroupDir, ec)) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void removeTree(const std::string& path) {
  if (path.empty() || path == "/") return;
  runProcess({"rm", "-rf", "--one-file-system", path});
}

}  // namespace nodeagent::testing
