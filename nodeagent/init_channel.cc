#include "nodeagent/init_channel.h"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/debug.h>

#include "isolator/init_protocol.h"
#include "loop/fd_passing.h"
#include "nodeagent/api_error.h"
#include "schema/init.capnp.h"
#include "util/log.h"

namespace nodeagent {

void InitChannel::ErrorLogger::taskFailed(kj::Exception&& e) {
  // The read loop sees the same failure and breaks the channel.
  log::warn("init_channel.send_failed", {{"error", e.getDescription().cStr()}});
}

InitChannel::InitChannel(loop::UringEventPort& port, kj::AutoCloseFd control)
    : port_(port),
      control_(kj::mv(control)),
      oneWaySends_(errorLogger_),
      readTask_(
          readLoop().catch_([this](kj::Exception&& e) { failAll(e); }).eagerlyEvaluate(nullptr)) {}

InitChannel::~InitChannel() noexcept(false) {}

kj::Promise<SpawnedProcess> InitChannel::spawn(const SpawnRequest& request) {
  KJ_IF_MAYBE (e, broken_) {
    throwApiError(api::ErrorCode::NOT_RUNNING,
                  kj::str("sandbox init is gone: ", e->getDescription()));
  }
  capnp::MallocMessageBuilder message;
  auto req = message.initRoot<initproto::Request>();
  uint64_t tag = nextTag_++;
  req.setTag(tag);
  auto spawn = req.initSpawn();
  auto argv = spawn.initArgv(request.argv.size());
  for (size_t i = 0; i < request.argv.size(); ++i) argv.set(i, request.argv[i]);
  auto env = spawn.initEnv(request.env.size());
  for (size_t i = 0; i < request.env.size(); ++i) env.set(i, request.env[i]);
  spawn.setCwd(request.cwd);
  spawn.setStdinOpen(request.stdinOpen);
  spawn.setTimeoutAtMonoNs(request.timeoutAtMonoNs);

  size_t size = capnp::computeSerializedSizeInWords(message) * sizeof(capnp::word);
  if (size > isolator::kMaxInitMessageBytes) {
    throwApiError(api::ErrorCode::LIMIT_EXCEEDED,
                  kj::str("argv and environment take ", size, " bytes; the limit is ",
                          isolator::kMaxInitMessageBytes));
  }
  auto bytes = isolator::encodeInitMessage(message);
  auto paf = kj::newPromiseAndFulfiller<SpawnedProcess>();
  pendingSpawns_.emplace(tag, kj::mv(paf.fulfiller));
  auto sent = loop::sendWithFds(port_, control_, bytes.asPtr(), nullptr);
  return sent.attach(kj::mv(bytes))
      .then([promise = kj::mv(paf.promise)]() mutable { return kj::mv(promise); },
            [this, tag](kj::Exception&& e) -> kj::Promise<SpawnedProcess> {
              pendingSpawns_.erase(tag);
              return kj::mv(e);
            });
}

kj::Promise<ProcessExit> InitChannel::exitStatus(int pid) {
  auto found = exits_.find(pid);
  KJ_REQUIRE(found != exits_.end(), "exitStatus() of a pid that was not spawned", pid);
  ExitSlot& slot = found->second;
  KJ_IF_MAYBE (status, slot.status) {
    ProcessExit exit = *status;
    exits_.erase(pid);
    return exit;
  }
  KJ_IF_MAYBE (e, broken_) {
    exits_.erase(pid);
    return kj::cp(*e);
  }
  auto paf = kj::newPromiseAndFulfiller<ProcessExit>();
  slot.waiter = kj::mv(paf.fulfiller);
  return kj::mv(paf.promise);
}

kj::Promise<kj::Array<AdoptedProcess>> InitChannel::resync() {
  KJ_IF_MAYBE (e, broken_) {
    return kj::cp(*e);
  }
  KJ_REQUIRE(resync_ == nullptr, "one resync at a time");
  capnp::MallocMessageBuilder message(64);
  auto req = message.initRoot<initproto::Request>();
  uint64_t tag = nextTag_++;
  req.setTag(tag);
  req.setResync();
  auto paf = kj::newPromiseAndFulfiller<kj::Array<AdoptedProcess>>();
  resync_ = PendingResync{tag, {}, kj::mv(paf.fulfiller)};
  sendOneWay(message);
  return kj::mv(paf.promise);
}

void InitChannel::closeStdin(int pid) {
  if (broken_ != nullptr) return;
  capnp::MallocMessageBuilder message(64);
  auto req = message.initRoot<initproto::Request>();
  req.setTag(nextTag_++);
  req.setCloseStdin(pid);
  sendOneWay(message);
}

void InitChannel::release(int pid) {
  if (broken_ != nullptr) return;
  capnp::MallocMessageBuilder message(64);
  auto req = message.initRoot<initproto::Request>();
  req.setTag(nextTag_++);
  req.setRelease(pid);
  sendOneWay(message);
}

void InitChannel::sendOneWay(capnp::MessageBuilder& message) {
  if (!sending_) return;
  auto bytes = isolator::encodeInitMessage(message);
  auto sent = loop::sendWithFds(port_, control_, bytes.asPtr(), nullptr);
  oneWaySends_.add(sent.attach(kj::mv(bytes)));
}

kj::Promise<void> InitChannel::readLoop() {
  return loop::receiveWithFds(port_, control_, isolator::kMaxInitMessageBytes, 4)
      .then([this](loop::ReceivedMessage&& received) -> kj::Promise<void> {
        if (received.bytes.size() == 0) {
          failAll(KJ_EXCEPTION(DISCONNECTED, "sandbox init closed its control socket"));
          return kj::READY_NOW;
        }
        auto reader = isolator::decodeInitMessage(received.bytes);
        auto event = reader->getRoot<initproto::Event>();
        switch (event.which()) {
          case initproto::Event::SPAWNED: {
            auto it = pendingSpawns_.find(event.getTag());
            KJ_REQUIRE(it != pendingSpawns_.end(), "init answered an unknown spawn",
                       event.getTag());
            auto fds = kj::mv(received.fds);
            // fds: [stdin (if requested)], stdout, stderr, pidfd.
            KJ_REQUIRE(fds.size() == 3 || fds.size() == 4, "spawned without its fds", fds.size());
            SpawnedProcess p;
            p.pid = event.getSpawned().getPid();
            size_t i = 0;
            if (fds.size() == 4) p.stdinFd = kj::mv(fds[i++]);
            p.stdoutFd = kj::mv(fds[i++]);
            p.stderrFd = kj::mv(fds[i++]);
            p.pidfd = kj::mv(fds[i++]);
            exits_.emplace(p.pid, ExitSlot{});
            it->second->fulfill(kj::mv(p));
            pendingSpawns_.erase(it);
            break;
          }
          case initproto::Event::SPAWN_FAILED: {
            auto it = pendingSpawns_.find(event.getTag());
            KJ_REQUIRE(it != pendingSpawns_.end(), "init answered an unknown spawn",
                       event.getTag());
            it->second->reject(
                makeApiError(api::ErrorCode::INVALID_ARGUMENT, event.getSpawnFailed()));
            pendingSpawns_.erase(it);
            break;
          }
          case initproto::Event::EXITED: {
            auto exited = event.getExited();
            auto found = exits_.find(exited.getPid());
            if (found == exits_.end()) break;  // not a process we spawned
            ExitSlot& slot = found->second;
            ProcessExit exit{exited.getWaitStatus(), exited.getCpuNs()};
            KJ_IF_MAYBE (waiter, slot.waiter) {
              (*waiter)->fulfill(kj::mv(exit));
              exits_.erase(exited.getPid());
            } else {
              slot.status = exit;
            }
            break;
          }
          case initproto::Event::ADOPTED: {
            auto adopted = event.getAdopted();
            auto fds = kj::mv(received.fds);
            size_t expected = adopted.getStdinOpen() ? 4 : 3;
            KJ_REQUIRE(fds.size() == expected, "adopted without its fds", fds.size());
            KJ_IF_MAYBE (pending, resync_) {
              AdoptedProcess a;
              a.process.pid = adopted.getPid();
              size_t i = 0;
              if (adopted.getStdinOpen()) a.process.stdinFd = kj::mv(fds[i++]);
              a.process.stdoutFd = kj::mv(fds[i++]);
              a.process.stderrFd = kj::mv(fds[i++]);
              a.process.pidfd = kj::mv(fds[i++]);
              a.argv = KJ_MAP(arg, adopted.getArgv()) {
                return kj::str(arg);
              };
              a.startedAtNs = adopted.getStartedAtNs();
              a.timeoutAtMonoNs = adopted.getTimeoutAtMonoNs();
              ExitSlot slot;
              if (adopted.getExited()) {
                slot.status = ProcessExit{adopted.getWaitStatus(), adopted.getCpuNs()};
              }
              // An `exited` event may come before or after this; either way it lands here.
              auto existing = exits_.find(a.process.pid);
              if (existing == exits_.end()) {
                exits_.emplace(a.process.pid, kj::mv(slot));
              } else if (existing->second.status == nullptr) {
                existing->second.status = slot.status;
              }
              pending->processes.add(kj::mv(a));
            }
            break;
          }
          case initproto::Event::RESYNCED: {
            KJ_IF_MAYBE (pending, resync_) {
              auto fulfiller = kj::mv(pending->fulfiller);
              auto processes = pending->processes.releaseAsArray();
              resync_ = nullptr;
              fulfiller->fulfill(kj::mv(processes));
            }
            break;
          }
          default:
            // ready/setupFailed belong to launch; signalResult is unused here.
            break;
        }
        return readLoop();
      });
}

void InitChannel::failAll(const kj::Exception& e) {
  if (broken_ != nullptr) return;
  broken_ = kj::cp(e);
  for (auto& entry : pendingSpawns_) entry.second->reject(kj::cp(e));
  pendingSpawns_.clear();
  KJ_IF_MAYBE (pending, resync_) {
    pending->fulfiller->reject(kj::cp(e));
    resync_ = nullptr;
  }
  for (auto& entry : exits_) {
    KJ_IF_MAYBE (waiter, entry.second.waiter) {
      (*waiter)->reject(kj::cp(e));
    }
  }
  for (auto it = exits_.begin(); it != exits_.end();) {
    it = it->second.waiter != nullptr ? exits_.erase(it) : std::next(it);
  }
}

}  // namespace nodeagent
