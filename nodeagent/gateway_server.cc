#include "nodeagent/gateway_server.h"

#include <sys/stat.h>
#include <unistd.h>

#include <capnp/message.h>
#include <kj/debug.h>

#include "loop/fd_streams.h"
#include "loop/serial_queue.h"
#include "nodeagent/api_error.h"
#include "nodeagent/fleet/fleet_service.h"
#include "nodeagent/ledger_entry.h"
#include "nodeagent/version.h"

namespace nodeagent {
namespace {

constexpr size_t kFileChunkBytes = 256 * 1024;
// Keeps a listing well inside any peer's message limit (about 100 bytes an entry).
constexpr size_t kMaxListEntries = 10000;
// Ledger records a usageLedger call returns at most (about 300 bytes each).
constexpr uint32_t kMaxLedgerRecords = 1000;

void fillInfo(api::SandboxInfo::Builder info, state::SandboxRecord::Reader rec) {
  info.setId(rec.getId());
  info.setSpec(rec.getSpec());
  info.setState(rec.getState());
  info.setCreatedAtNs(rec.getCreatedAtNs());
  info.setExpiresAtNs(rec.getExpiresAtNs());
  info.setEndedAtNs(rec.getEndedAtNs());
  info.setEndReason(rec.getEndReason());
}

void fillFileInfo(api::FileInfo::Builder out, const FileEntry& e) {
  out.setName(e.name);
  switch (e.type) {
    case FileEntry::Type::kFile:
      out.setType(api::FileInfo::Type::FILE);
      break;
    case FileEntry::Type::kDirectory:
      out.setType(api::FileInfo::Type::DIRECTORY);
      break;
    case FileEntry::Type::kSymlink:
      out.setType(api::FileInfo::Type::SYMLINK);
      break;
    case FileEntry::Type::kOther:
      out.setType(api::FileInfo::Type::OTHER);
      break;
  }
  out.setSize(e.size);
  out.setMode(e.mode);
  out.setMtimeNs(e.mtimeNs);
}

class ProcessImpl final : public api::Process::Server {
 public:
  ProcessImpl(kj::Own<SandboxRuntime> sandbox, kj::Own<ExecProcess> process)
      : sandbox_(kj::mv(sandbox)), process_(kj::mv(process)) {}

  kj::Promise<void> wait(WaitContext context) override {
    return process_->wait().then([context](ExitInfo info) mutable {
      auto status = context.getResults().initStatus();
      status.setReason(info.reason);
      status.setCode(info.code);
      status.setSignal(info.signal);
      status.setCpuNs(info.cpuNs);
    });
  }

  kj::Promise<void> signal(SignalContext context) override {
    process_->signal(context.getParams().getSignal());
    return kj::READY_NOW;
  }

  kj::Promise<void> writeStdin(WriteStdinContext context) override {
    return stdinWrites_.add([this, context]() mutable {
      auto data = context.getParams().getData();
      return process_->writeStdin(data).attach(kj::mv(context));
    });
  }

  kj::Promise<void> closeStdin(CloseStdinContext) override {
    // After the writes before it, so no data is cut off.
    return stdinWrites_.add([this]() -> kj::Promise<void> {
      process_->closeStdin();
      return kj::READY_NOW;
    });
  }

  kj::Promise<void> pid(PidContext context) override {
    context.getResults().setPid(uint32_t(process_->pid()));
    return kj::READY_NOW;
  }

  kj::Promise<void> attach(AttachContext context) override {
    auto params = context.getParams();
    return process_
        ->attach(params.getOutput(), {params.getStdoutOffset(), params.getStderrOffset()})
        .then([context](ProcessOutput::Offsets started) mutable {
          context.getResults().setStdoutOffset(started.out);
          context.getResults().setStderrOffset(started.err);
        });
  }

 private:
  kj::Own<SandboxRuntime> sandbox_;  // outlives the process: it holds the cgroup
  kj::Own<ExecProcess> process_;
  loop::SerialQueue stdinWrites_;
};

// Receives an upload; the file appears under its name only at done().
class UploadSink final : public api::ByteSink::Server {
 public:
  UploadSink(loop::UringEventPort& port, kj::Own<SandboxRuntime> sandbox,
             kj::Own<PendingUpload> upload, uint64_t maxBytes)
      : port_(port), sandbox_(kj::mv(sandbox)), upload_(kj::mv(upload)), maxBytes_(maxBytes) {}

  kj::Promise<void> write(WriteContext context) override {
    auto data = context.getParams().getData();
    if (done_) throwApiError(api::ErrorCode::INVALID_ARGUMENT, "write after done()");
    requireRunning();
    if (offset_ + data.size() > maxBytes_) {
      throwApiError(api::ErrorCode::LIMIT_EXCEEDED,
                    kj::str("file larger than this node's limit of ", maxBytes_, " bytes"));
    }
    uint64_t at = offset_;
    offset_ += data.size();
    return writes_.add(
        [this, context, data, at]() mutable { return writeAll(data, at).attach(kj::mv(context)); });
  }

  kj::Promise<void> done(DoneContext) override {
    requireRunning();
    done_ = true;
    // Earlier stream calls may still be writing; commit after them.
    return writes_.add([this]() -> kj::Promise<void> {
      KJ_ASSERT_NONNULL(upload_)->commit();
      return kj::READY_NOW;
    });
  }

 private:
  kj::Promise<void> writeAll(kj::ArrayPtr<const kj::byte> data, uint64_t at) {
    if (data.size() == 0) return kj::READY_NOW;
    return port_.write(KJ_ASSERT_NONNULL(upload_)->fd(), data, at).then([this, data, at](size_t n) {
      if (n == 0) throwApiError(api::ErrorCode::LIMIT_EXCEEDED, "the sandbox's disk is full");
      return writeAll(data.slice(n, data.size()), at + n);
    });
  }

  // An upload into an ended sandbox lets go of its fds (they would keep the
  // sandbox's disk alive) and fails.
  void requireRunning() {
    if (!sandbox_->running()) {
      upload_ = nullptr;
      throwApiError(api::ErrorCode::NOT_RUNNING, kj::str("sandbox ", sandbox_->id(), " has ended"));
    }
  }

  loop::UringEventPort& port_;
  kj::Own<SandboxRuntime> sandbox_;
  kj::Maybe<kj::Own<PendingUpload>> upload_;
  uint64_t maxBytes_;
  uint64_t offset_ = 0;
  bool done_ = false;
  loop::SerialQueue writes_;
};

class FilesImpl final : public api::Files::Server {
 public:
  FilesImpl(ServerContext& ctx, kj::Own<SandboxRuntime> sandbox)
      : ctx_(ctx), sandbox_(kj::mv(sandbox)) {}

  kj::Promise<void> write(WriteContext context) override {
    ctx_.supervisor.admitRequest(*sandbox_);
    auto params = context.getParams();
    uint32_t mode = params.getMode() == 0 ? 0644 : params.getMode();
    auto upload = sandbox_->files().beginUpload(params.getPath(), mode);
    context.getResults().setSink(
        kj::heap<UploadSink>(ctx_.port, kj::addRef(*sandbox_), kj::mv(upload), ctx_.maxFileBytes));
    return kj::READY_NOW;
  }

  kj::Promise<void> read(ReadContext context) override {
    ctx_.supervisor.admitRequest(*sandbox_);
    auto params = context.getParams();
    kj::AutoCloseFd file = sandbox_->files().openForRead(params.getPath());
    struct stat st;
    KJ_SYSCALL(fstat(file, &st));
    if (uint64_t(st.st_size) > ctx_.maxFileBytes) {
      throwApiError(api::ErrorCode::LIMIT_EXCEEDED,
                    kj::str(params.getPath(), " is larger than this node's limit of ",
                            ctx_.maxFileBytes, " bytes"));
    }
    auto download = kj::heap<Download>(loop::wrapInputFd(ctx_.port, kj::mv(file)), params.getSink(),
                                       ctx_.maxFileBytes);
    auto& d = *download;
    return pump(d)
        .then([context, &d]() mutable {
          context.getResults().setSize(d.total);
          return d.sink.doneRequest().send().ignoreResult();
        })
        .attach(kj::mv(download), kj::addRef(*sandbox_));
  }

  kj::Promise<void> list(ListContext context) override {
    ctx_.supervisor.admitRequest(*sandbox_);
    bool truncated = false;
    auto entries =
        sandbox_->files().list(context.getParams().getPath(), kMaxListEntries, &truncated);
    context.getResults().setTruncated(truncated);
    auto out = context.getResults().initEntries(entries.size());
    for (size_t i = 0; i < entries.size(); ++i) fillFileInfo(out[i], entries[i]);
    return kj::READY_NOW;
  }

  kj::Promise<void> stat(StatContext context) override {
    ctx_.supervisor.admitRequest(*sandbox_);
    fillFileInfo(context.getResults().initInfo(),
                 sandbox_->files().stat(context.getParams().getPath()));
    return kj::READY_NOW;
  }

  kj::Promise<void> mkdir(MkdirContext context) override {
    ctx_.supervisor.admitRequest(*sandbox_);
    auto params = context.getParams();
    sandbox_->files().mkdir(params.getPath(), params.getParents());
    return kj::READY_NOW;
  }

  kj::Promise<void> remove(RemoveContext context) override {
    ctx_.supervisor.admitRequest(*sandbox_);
    auto params = context.getParams();
    sandbox_->files().remove(params.getPath(), params.getRecursive());
    return kj::READY_NOW;
  }

 private:
  struct Download {
    Download(kj::Own<kj::AsyncInputStream> in, api::ByteSink::Client sink, uint64_t limit)
        : in(kj::mv(in)),
          sink(kj::mv(sink)),
          buffer(kj::heapArray<kj::byte>(kFileChunkBytes)),
          limit(limit) {}
    kj::Own<kj::AsyncInputStream> in;
    api::ByteSink::Client sink;
    kj::Array<kj::byte> buffer;
    uint64_t limit;  // a file that grows while we read stops here
    uint64_t total = 0;
  };

  static kj::Promise<void> pump(Download& d) {
    return d.in->tryRead(d.buffer.begin(), 1, d.buffer.size())
        .then([&d](size_t n) -> kj::Promise<void> {
          if (n == 0) return kj::READY_NOW;
          d.total += n;
          if (d.total > d.limit) {
            throwApiError(api::ErrorCode::LIMIT_EXCEEDED,
                          kj::str("file grew past this node's limit of ", d.limit, " bytes"));
          }
          auto request = d.sink.writeRequest();
          request.setData(d.buffer.slice(0, n));
          // send() resolves once flow control allows more; the data was copied
          // into the request, so the buffer can be reused right away.
          return request.send().then([&d]() { return pump(d); });
        });
  }

  ServerContext& ctx_;
  kj::Own<SandboxRuntime> sandbox_;
};

class SandboxImpl final : public api::Sandbox::Server {
 public:
  SandboxImpl(ServerContext& ctx, kj::Own<SandboxRuntime> sandbox, kj::StringPtr actor)
      : ctx_(ctx), sandbox_(kj::mv(sandbox)), actor_(kj::str(actor)) {}

  kj::Promise<void> exec(ExecContext context) override {
    ctx_.supervisor.admitRequest(*sandbox_);
    auto params = context.getParams();
    // Without a sink the output is only kept for a later Process.attach.
    kj::Maybe<api::OutputSink::Client> output;
    if (params.hasOutput()) output = params.getOutput();
    return sandbox_->exec(params.getRequest(), kj::mv(output))
        .then([this, context](kj::Own<ExecProcess> process) mutable {
          context.getResults().setProcess(
              kj::heap<ProcessImpl>(kj::addRef(*sandbox_), kj::mv(process)));
        });
  }

  kj::Promise<void> files(FilesContext context) override {
    ctx_.supervisor.admitRequest(*sandbox_);
    context.getResults().setFiles(kj::heap<FilesImpl>(ctx_, kj::addRef(*sandbox_)));
    return kj::READY_NOW;
  }

  kj::Promise<void> kill(KillContext) override {
    ctx_.supervisor.countRequest(*sandbox_);
    return ctx_.supervisor.kill(*sandbox_, actor_);
  }

  kj::Promise<void> setTimeout(SetTimeoutContext context) override {
    ctx_.supervisor.admitRequest(*sandbox_);
    uint32_t seconds = context.getParams().getSeconds();
    if (seconds == 0 || seconds > 7 * 24 * 3600) {
      throwApiError(api::ErrorCode::INVALID_ARGUMENT, "timeout must be 1 s to 7 days");
    }
    sandbox_->setTimeout(seconds);
    ctx_.supervisor.audit(actor_, "set-timeout", sandbox_->id(),
                          sandbox_->record().getSpec().getTenant(), kj::str("seconds=", seconds));
    return kj::READY_NOW;
  }

  kj::Promise<void> info(InfoContext context) override {
    ctx_.supervisor.countRequest(*sandbox_);
    fillInfo(context.getResults().initInfo(), sandbox_->record());
    return kj::READY_NOW;
  }

  kj::Promise<void> usage(UsageContext context) override {
    ctx_.supervisor.countRequest(*sandbox_);
    sandbox_->fillUsage(context.getResults().initUsage());
    return kj::READY_NOW;
  }

  kj::Promise<void> pause(PauseContext) override {
    ctx_.supervisor.admitRequest(*sandbox_);
    return ctx_.supervisor.pause(*sandbox_, actor_);
  }

  kj::Promise<void> resume(ResumeContext) override {
    ctx_.supervisor.admitRequest(*sandbox_);
    return ctx_.supervisor.resume(*sandbox_, actor_);
  }

  kj::Promise<void> processes(ProcessesContext context) override {
    ctx_.supervisor.admitRequest(*sandbox_);
    return sandbox_->whenSynced().then([this, context]() mutable {
      sandbox_->fillProcesses(context.getResults().initProcesses(sandbox_->processCount()));
    });
  }

  kj::Promise<void> setNetwork(SetNetworkContext context) override {
    sandbox_->admitRequest();
    ctx_.supervisor.setNetwork(*sandbox_, context.getParams().getSettings(), actor_,
                               context.getResults().initStatus());
    return kj::READY_NOW;
  }

  kj::Promise<void> network(NetworkContext context) override {
    sandbox_->countRequest();
    ctx_.supervisor.fillNetworkStatus(*sandbox_, context.getResults().initStatus());
    return kj::READY_NOW;
  }

  kj::Promise<void> events(EventsContext context) override {
    sandbox_->countRequest();
    auto params = context.getParams();
    uint32_t limit = params.getLimit() == 0 ? 100 : kj::min(params.getLimit(), 1000u);
    auto found = ctx_.supervisor.sandboxEvents(sandbox_->id(), params.getAfterSeq(), limit);
    auto out = context.getResults().initEvents(unsigned(found.size()));
    for (unsigned i = 0; i < found.size(); ++i) {
      auto entry = found[i]->get();
      out[i].setSeq(entry.getSeq());
      out[i].setTimeNs(entry.getTimeNs());
      out[i].setActor(entry.getActor());
      out[i].setAction(entry.getAction());
      out[i].setDetail(entry.getDetail());
    }
    return kj::READY_NOW;
  }

  kj::Promise<void> process(ProcessContext context) override {
    ctx_.supervisor.admitRequest(*sandbox_);
    return sandbox_->whenSynced().then([this, context]() mutable {
      auto process = sandbox_->findProcess(context.getParams().getPid());
      context.getResults().setProcess(
          kj::heap<ProcessImpl>(kj::addRef(*sandbox_), kj::mv(process)));
    });
  }

 private:
  ServerContext& ctx_;
  kj::Own<SandboxRuntime> sandbox_;
  kj::String actor_;
};

// A sandbox that ended long ago (or before an agent restart): only its record
// is left, so info() answers and everything else says it has ended.
class EndedSandboxImpl final : public api::Sandbox::Server {
 public:
  explicit EndedSandboxImpl(kj::Own<capnp::MallocMessageBuilder> record)
      : record_(kj::mv(record)) {}

  kj::Promise<void> info(InfoContext context) override {
    fillInfo(context.getResults().initInfo(), rec());
    return kj::READY_NOW;
  }
  kj::Promise<void> kill(KillContext) override { return kj::READY_NOW; }  // already ended
  kj::Promise<void> exec(ExecContext) override { return ended(); }
  kj::Promise<void> files(FilesContext) override { return ended(); }
  kj::Promise<void> setTimeout(SetTimeoutContext) override { return ended(); }
  kj::Promise<void> usage(UsageContext) override { return ended(); }
  kj::Promise<void> setNetwork(SetNetworkContext) override { return ended(); }
  kj::Promise<void> network(NetworkContext) override { return ended(); }
  kj::Promise<void> events(EventsContext) override { return ended(); }
  kj::Promise<void> pause(PauseContext) override { return ended(); }
  kj::Promise<void> resume(ResumeContext) override { return ended(); }
  kj::Promise<void> processes(ProcessesContext) override { return ended(); }
  kj::Promise<void> process(ProcessContext) override { return ended(); }

 private:
  kj::Promise<void> ended() {
    return makeApiError(
        api::ErrorCode::NOT_RUNNING,
        kj::str("sandbox ", rec().getId(), " has ended (", rec().getEndReason(), ")"));
  }
  state::SandboxRecord::Reader rec() { return record_->getRoot<state::SandboxRecord>(); }
  kj::Own<capnp::MallocMessageBuilder> record_;
};

class NodeImpl final : public api::Node::Server {
 public:
  NodeImpl(ServerContext& ctx, kj::String actor) : ctx_(ctx), actor_(kj::mv(actor)) {}

  kj::Promise<void> create(CreateContext context) override {
    return ctx_.supervisor.create(context.getParams().getSpec(), actor_)
        .then([this, context](kj::Own<SandboxRuntime> sandbox) mutable {
          auto results = context.getResults();
          results.setId(sandbox->id());
          results.setSandbox(kj::heap<SandboxImpl>(ctx_, kj::mv(sandbox), actor_));
        });
  }

  kj::Promise<void> open(OpenContext context) override {
    kj::StringPtr id = context.getParams().getId();
    KJ_IF_MAYBE (sandbox, ctx_.supervisor.find(id)) {
      context.getResults().setSandbox(kj::heap<SandboxImpl>(ctx_, kj::mv(*sandbox), actor_));
      return kj::READY_NOW;
    }
    KJ_IF_MAYBE (record, ctx_.supervisor.findRecord(id)) {
      context.getResults().setSandbox(kj::heap<EndedSandboxImpl>(kj::mv(*record)));
      return kj::READY_NOW;
    }
    throwApiError(api::ErrorCode::NOT_FOUND, kj::str("no sandbox ", id, " on this node"));
  }

  kj::Promise<void> list(ListContext context) override {
    auto records = ctx_.supervisor.list(context.getParams().getTenant());
    auto out = context.getResults().initSandboxes(records.size());
    for (size_t i = 0; i < records.size(); ++i) {
      fillInfo(out[i], records[i]->getRoot<state::SandboxRecord>());
    }
    return kj::READY_NOW;
  }

  kj::Promise<void> drain(DrainContext context) override {
    ctx_.supervisor.setDraining(context.getParams().getDraining(), actor_);
    return kj::READY_NOW;
  }

  kj::Promise<void> setTenantWeight(SetTenantWeightContext context) override {
    auto params = context.getParams();
    ctx_.supervisor.setTenantWeight(params.getTenant(), params.getWeight(), actor_);
    return kj::READY_NOW;
  }

  kj::Promise<void> usageLedger(UsageLedgerContext context) override {
    auto params = context.getParams();
    uint32_t limit = params.getLimit();
    if (limit == 0 || limit > kMaxLedgerRecords) limit = kMaxLedgerRecords;
    uint64_t cursor = params.getAfterSeq();
    auto stored = ctx_.supervisor.ledger().read(cursor, limit);
    auto results = context.getResults();
    auto out = results.initRecords(stored.size());
    for (size_t i = 0; i < stored.size(); ++i) out.setWithCaveats(i, stored[i]->get());
    // In seq order: the last one's seq is where the next call goes on.
    if (stored.size() > 0) cursor = parseUsageRecord(stored.back()->get())->get().getSeq();
    results.setNextCursor(cursor);
    return kj::READY_NOW;
  }

  kj::Promise<void> setTenantRequestCap(SetTenantRequestCapContext context) override {
    auto params = context.getParams();
    ctx_.supervisor.setTenantRequestCap(params.getTenant(), params.getCap(), actor_);
    return kj::READY_NOW;
  }

  kj::Promise<void> place(PlaceContext context) override {
    auto& fleet = requireFleet();
    return fleet.place(context.getParams().getSpec(), actor_)
        .then([context](fleet::FleetService::Placed placed) mutable {
          auto results = context.getResults();
          results.setSandbox(kj::mv(placed.sandbox));
          results.setId(placed.id);
          auto p = results.initPlacement();
          p.setNode(fleet::FleetService::idText(placed.node));
          p.setAddress(placed.address);
          p.setAttempts(placed.attempts);
          p.setDecisionNs(placed.decisionNs);
        });
  }

  kj::Promise<void> members(MembersContext context) override {
    requireFleet().members(context.getResults());
    return kj::READY_NOW;
  }

  kj::Promise<void> capacity(CapacityContext context) override {
    requireFleet().capacity(context.getResults());
    return kj::READY_NOW;
  }

  kj::Promise<void> gossipKeys(GossipKeysContext context) override {
    auto& fleet = requireFleet();
    auto change = context.getParams().getChange();
    fleet.changeKeys(change, context.getResults());
    kj::String detail;
    switch (change.which()) {
      case api::GossipKeyChange::LIST:
        return kj::READY_NOW;
      case api::GossipKeyChange::ADD:
        // The id only: a key never reaches the audit log.
        KJ_IF_MAYBE (key, cluster::Keyring::parseKey(change.getAdd())) {
          detail = kj::str("add id=", cluster::Keyring::keyIdHex(cluster::Keyring::idOf(*key)));
        }
        break;
      case api::GossipKeyChange::USE:
        detail = kj::str("use id=", change.getUse());
        break;
      case api::GossipKeyChange::REMOVE:
        detail = kj::str("remove id=", change.getRemove());
        break;
    }
    ctx_.supervisor.audit(actor_, "gossip-keys", "", "", detail);
    return kj::READY_NOW;
  }

  kj::Promise<void> info(InfoContext context) override {
    auto info = context.getResults().initInfo();
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    info.setHostname(host);
    info.setVersion(kVersion);
    info.setSandboxes(uint32_t(ctx_.supervisor.tenantSandboxCount()));
    auto names = ctx_.supervisor.templateNames();
    auto templates = info.initTemplates(names.size());
    for (size_t i = 0; i < names.size(); ++i) templates.set(i, names[i]);
    info.setCgroupMode(ctx_.supervisor.cgroupMode() == isolator::CgroupMode::kV2 ? "v2" : "hybrid");
    info.setMaxMessageBytes(ctx_.maxMessageBytes);
    info.setDraining(ctx_.supervisor.draining());
    info.setPublicKey(ctx_.supervisor.ledger().publicKey());
    info.setNodeId(ctx_.supervisor.nodeId());
    KJ_IF_MAYBE (fleet, ctx_.fleet) {
      info.setFleetNode(fleet::FleetService::idText(fleet->id()));
      info.setFleetAddress(fleet->address());
    }
    auto pools = ctx_.supervisor.warmPools();
    auto warm = info.initWarmPools(pools.size());
    for (size_t i = 0; i < pools.size(); ++i) {
      warm[i].setTemplate(pools[i].templateName);
      warm[i].setTarget(pools[i].target);
      warm[i].setIdle(pools[i].idle);
      warm[i].setClaims(pools[i].claims);
    }
    return kj::READY_NOW;
  }

 private:
  fleet::FleetService& requireFleet() {
    KJ_IF_MAYBE (fleet, ctx_.fleet) {
      return *fleet;
    }
    throwApiError(api::ErrorCode::UNAVAILABLE,
                  "this node is not a fleet member (config `cluster.enabled`)");
  }

  ServerContext& ctx_;
  kj::String actor_;
};

}  // namespace

api::Sandbox::Client newSandboxServer(ServerContext& context, kj::Own<SandboxRuntime> sandbox,
                                      kj::StringPtr actor) {
  return kj::heap<SandboxImpl>(context, kj::mv(sandbox), actor);
}

api::Node::Client newNodeServer(ServerContext& context, kj::String actor) {
  return kj::heap<NodeImpl>(context, kj::mv(actor));
}

}  // namespace nodeagent
