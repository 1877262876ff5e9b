#include "tests/isolator/init_client.h"

#include <errno.h>
#include <poll.h>
#include <unistd.h>

#include <capnp/message.h>
#include <kj/debug.h>

#include <chrono>

#include "isolator/init_protocol.h"
#include "schema/init.capnp.h"

namespace nodeagent::isolator::testing {
namespace {

using Clock = std::chrono::steady_clock;

int msLeft(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return left.count() < 0 ? 0 : int(left.count());
}

}  // namespace

bool InitClient::readEvent(int timeoutMs, uint64_t wantTag, std::optional<Reply>* reply) {
  pollfd p{control_, POLLIN, 0};
  int n = poll(&p, 1, timeoutMs);
  KJ_REQUIRE(n >= 0, "poll", errno);
  if (n == 0) return false;
  KJ_IF_MAYBE (message, receiveInitMessage(control_)) {
    auto event = message->reader->getRoot<initproto::Event>();
    Reply r;
    switch (event.which()) {
      case initproto::Event::EXITED:
        exits_[event.getExited().getPid()] = event.getExited().getWaitStatus();
        return true;
      case initproto::Event::SPAWNED:
        r.pid = event.getSpawned().getPid();
        break;
      case initproto::Event::SPAWN_FAILED:
        r.failed = true;
        r.text = event.getSpawnFailed().cStr();
        break;
      case initproto::Event::SIGNAL_RESULT:
        r.signalResult = event.getSignalResult();
        break;
      case initproto::Event::ADOPTED: {
        auto a = event.getAdopted();
        AdoptedProcess adopted;
        adopted.process.pid = a.getPid();
        for (auto arg : a.getArgv()) adopted.argv.push_back(arg.cStr());
        adopted.timeoutAtMonoNs = a.getTimeoutAtMonoNs();
        adopted.exited = a.getExited();
        adopted.waitStatus = a.getWaitStatus();
        size_t want = a.getStdinOpen() ? 4 : 3;
        KJ_REQUIRE(message->fds.size() == want, "adopted carries the wrong fds");
        size_t i = 0;
        if (a.getStdinOpen()) adopted.process.stdinFd = kj::mv(message->fds[i++]);
        adopted.process.stdoutFd = kj::mv(message->fds[i++]);
        adopted.process.stderrFd = kj::mv(message->fds[i++]);
        adopted.process.pidfd = kj::mv(message->fds[i++]);
        r.adopted = kj::mv(adopted);
        break;
      }
      case initproto::Event::RESYNCED:
        break;
      default:
        KJ_FAIL_REQUIRE("unexpected event from init", uint(event.which()));
    }
    for (auto& fd : message->fds) r.fds.push_back(kj::mv(fd));
    KJ_REQUIRE(event.getTag() == wantTag, "reply for another request", event.getTag(), wantTag);
    *reply = kj::mv(r);
    return true;
  }
  KJ_FAIL_REQUIRE("init closed the control socket");
}

InitClient::Reply InitClient::awaitReply(uint64_t tag, int timeoutMs) {
  auto deadline = Clock::now() + std::chrono::milliseconds(timeoutMs);
  std::optional<Reply> reply;
  while (!reply) {
    KJ_REQUIRE(readEvent(msLeft(deadline), tag, &reply), "timed out waiting for init's reply");
  }
  return kj::mv(*reply);
}

std::optional<SpawnedProcess> InitClient::spawn(const std::vector<std::string>& argv,
                                                std::string* error,
                                                const std::vector<std::string>& env,
                                                const std::string& cwd, bool stdinOpen) {
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<initproto::Request>();
  uint64_t tag = nextTag_++;
  request.setTag(tag);
  auto spawn = request.initSpawn();
  auto args = spawn.initArgv(uint(argv.size()));
  for (size_t i = 0; i < argv.size(); ++i) args.set(uint(i), argv[i].c_str());
  auto envList = spawn.initEnv(uint(env.size()));
  for (size_t i = 0; i < env.size(); ++i) envList.set(uint(i), env[i].c_str());
  spawn.setCwd(cwd.c_str());
  spawn.setStdinOpen(stdinOpen);
  sendInitMessage(control_, message);

  Reply reply = awaitReply(tag);
  if (reply.failed) {
    KJ_REQUIRE(reply.fds.empty(), "spawnFailed carried fds");
    if (error != nullptr) *error = reply.text;
    return std::nullopt;
  }
  size_t want = stdinOpen ? 4 : 3;
  KJ_REQUIRE(reply.fds.size() == want, "spawned carries the wrong number of fds", reply.fds.size());
  SpawnedProcess process;
  process.pid = reply.pid;
  size_t i = 0;
  if (stdinOpen) process.stdinFd = kj::mv(reply.fds[i++]);
  process.stdoutFd = kj::mv(reply.fds[i++]);
  process.stderrFd = kj::mv(reply.fds[i++]);
  process.pidfd = kj::mv(reply.fds[i++]);
  return process;
}

int InitClient::waitExit(int32_t pid, int timeoutMs) {
  auto deadline = Clock::now() + std::chrono::milliseconds(timeoutMs);
  for (;;) {
    auto it = exits_.find(pid);
    if (it != exits_.end()) {
      int status = it->second;
      exits_.erase(it);
      return status;
    }
    std::optional<Reply> none;
    KJ_REQUIRE(readEvent(msLeft(deadline), 0, &none), "timed out waiting for exit", pid);
    KJ_REQUIRE(!none, "unexpected reply while waiting for an exit");
  }
}

int InitClient::signal(int32_t pid, int sig) {
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<initproto::Request>();
  uint64_t tag = nextTag_++;
  request.setTag(tag);
  auto signal = request.initSignal();
  signal.setPid(pid);
  signal.setSignal(sig);
  sendInitMessage(control_, message);
  return awaitReply(tag).signalResult;
}

void InitClient::sendRequest(capnp::MessageBuilder& message) {
  sendInitMessage(control_, message);
}

void InitClient::closeStdin(SpawnedProcess& process) {
  process.stdinFd = nullptr;
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<initproto::Request>();
  request.setTag(nextTag_++);
  request.setCloseStdin(process.pid);
  sendRequest(message);
}

void InitClient::release(int32_t pid) {
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<initproto::Request>();
  request.setTag(nextTag_++);
  request.setRelease(pid);
  sendRequest(message);
}

std::vector<AdoptedProcess> InitClient::resync() {
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<initproto::Request>();
  uint64_t tag = nextTag_++;
  request.setTag(tag);
  request.setResync();
  sendRequest(message);
  std::vector<AdoptedProcess> processes;
  for (;;) {
    Reply reply = awaitReply(tag);
    if (!reply.adopted) return processes;  // `resynced`
    processes.push_back(kj::mv(*reply.adopted));
  }
}

RunResult InitClient::run(const std::vector<std::string>& argv,
                          const std::vector<std::string>& env) {
  std::string error;
  auto process = spawn(argv, &error, env);
  KJ_REQUIRE(process.has_value(), "spawn failed", error.c_str());
  RunResult result;
  readBoth(process->stdoutFd, process->stderrFd, &result.out, &result.err);
  result.waitStatus = waitExit(process->pid);
  return result;
}

void readBoth(int outFd, int errFd, std::string* out, std::string* err, int timeoutMs) {
  auto deadline = Clock::now() + std::chrono::milliseconds(timeoutMs);
  bool outOpen = true, errOpen = true;
  char buf[65536];
  while (outOpen || errOpen) {
    pollfd fds[2] = {{outOpen ? outFd : -1, POLLIN, 0}, {errOpen ? errFd : -1, POLLIN, 0}};
    int n = poll(fds, 2, msLeft(deadline));
    KJ_REQUIRE(n > 0, "timed out reading process output");
    for (int i = 0; i < 2; ++i) {
      if (fds[i].revents == 0) continue;
      ssize_t got = read(fds[i].fd, buf, sizeof(buf));
      if (got <= 0) {
        (i == 0 ? outOpen : errOpen) = false;
      } else {
        (i == 0 ? out : err)->append(buf, size_t(got));
      }
    }
  }
}

}  // namespace nodeagent::isolator::testing
