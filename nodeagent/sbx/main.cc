// sbx: the command-line client of a node's gateway API.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include <capnp/compat/json.h>

#include <kj/debug.h>
#include <kj/encoding.h>
#include <kj/vector.h>

#include "loop/fd_streams.h"
#include "loop/io_context.h"
#include "nodeagent/api_error.h"
#include "nodeagent/config.h"
#include "nodeagent/ledger_entry.h"
#include "nodeagent/node_key.h"
#include "nodeagent/rpc_endpoint.h"
#include "nodeagent/sbx/args.h"
#include "nodeagent/sbx/local_sinks.h"
#include "nodeagent/sbx/render.h"

namespace nodeagent::sbx {
namespace {

constexpr kj::StringPtr kDefaultSocket = "unix:/run/nodeagent.sock"_kj;
constexpr uint64_t kMaxMessageBytes = 8 << 20;
constexpr size_t kUploadChunkBytes = 256 * 1024;
constexpr int kCliErrorExit = 125;  // sbx's own failure, as opposed to the command's exit code

const kj::StringPtr kValueFlags[] = {
    "--connect",      "--tls-cert",       "--tls-key",     "--tls-ca",     "--template",
    "--tenant",       "--memory",         "--cpus",        "--pids",       "--disk",
    "--timeout",      "--network",        "--env",         "--meta",       "--cwd",
    "--exec-timeout", "--cpus-sustained", "--on-timeout",  "--cpu-cap",    "--on-cpu-cap",
    "--request-cap",  "--allow",          "--egress-mbps", "--egress-cap", "--mode",
    "--after",        "--limit",          "--public-key",  "--add",        "--use",
    "--remove",       "--burst-seconds",  "--stdout-from", "--stderr-from"};

const char kUsage[] =
    "usage: sbx [--connect unix:PATH|tcp:HOST:PORT] COMMAND ...\n"
    "  create --template T [--tenant T] [--memory 512M] [--cpus 1] [--cpus-sustained 0.25]\n"
    "         [--burst-seconds N] [--pids N] [--disk 1G]\n"
    "         [--timeout SECONDS] [--on-timeout kill|pause]\n"
    "         [--network off|restricted|open] [--allow CIDR[:PORT]|HOST|*.DOMAIN]...\n"
    "         [--egress-mbps N] [--egress-cap BYTES]\n"
    "         [--cpu-cap CPU-SECONDS] [--on-cpu-cap kill|pause] [--request-cap N]\n"
    "         [--env K=V]... [--meta K=V]...\n"
    "  exec ID [-i|-d] [--env K=V]... [--cwd DIR] [--exec-timeout S] -- CMD...\n"
    "         (-d: start in the background, print its pid)\n"
    "  run --template T [create options] [-i] -- CMD...\n"
    "  ls [--tenant T] [--json]       info ID [--json]       usage ID [--json]\n"
    "  cp LOCAL ID:PATH               cp ID:PATH LOCAL       kill ID\n"
    "  pause ID                       resume ID\n"
    "  ps ID [--json]                 signal ID PID SIGNAL   (a number or a name: TERM)\n"
    "  attach ID PID [--stdout-from BYTE] [--stderr-from BYTE]\n"
    "                                 (replays its last output, or from those offsets, follows)\n"
    "  timeout ID SECONDS             (a new lifetime from now; --on-timeout still applies)\n"
    "  drain [--off] [--wait [--timeout S]]\n"
    "                                 (refuse new sandboxes, for rolling upgrades; --wait:\n"
    "                                  until the live ones have finished)\n"
    "  tenant-weight TENANT WEIGHT    (CPU weight against other tenants, 1-10000, default 100)\n"
    "  net ID [--json]                (network policy, addresses, egress counters)\n"
    "  net ID [--mode M] [--allow E]... [--clear-allow] [--egress-mbps N] [--egress-cap B]\n"
    "                                 (changes it live)\n"
    "  events ID [--after SEQ] [--limit N] [--json]  (audit: refusals, lifecycle)\n"

    "  tenant-request-cap TENANT N    (API requests of all its sandboxes; 0 = node default)\n"
    "  node [--json]                  (node id, public key, templates, ...)\n"
    "  place --template T [create options] [--json] [-- CMD...]\n"
    "         (a fleet member creates it on whichever node has room; prints ID NODE, or\n"
    "          runs CMD in it at once, pipelined, and leaves it running)\n"
    "  node members [--json]          node capacity [--json]   (this node's view of the fleet)\n"
    "  node keys [--add HEX | --use ID | --remove ID]  (the gossip keyring; rotate node by node)\n"
    "  usage --ledger [--after SEQ] [--limit N] [--public-key HEX] [--json]\n"
    "         (signed usage records after SEQ, each checked against the node's key)\n";

struct Session {
  loop::IoContext io;
  kj::Maybe<kj::Own<kj::TlsContext>> tls;
  kj::Own<RpcConnection> connection;
  api::Node::Client node = nullptr;
};

kj::Own<Session> connect(const Args& args) {
  auto session = kj::heap<Session>();
  kj::StringPtr target = kDefaultSocket;
  if (const char* env = getenv("SBX_CONNECT")) target = env;
  KJ_IF_MAYBE (flag, args.value("--connect")) {
    target = *flag;
  }
  ListenAddress address = parseListenAddress(target);
  KJ_IF_MAYBE (cert, args.value("--tls-cert")) {
    session->tls =
        newMutualTlsContext(TlsFiles{kj::str(*cert), kj::str(args.value("--tls-key").orDefault("")),
                                     kj::str(args.value("--tls-ca").orDefault(""))},
                            session->io.port.timer());
  }
  kj::Maybe<kj::TlsContext&> tlsRef;
  KJ_IF_MAYBE (t, session->tls) {
    tlsRef = **t;
  }
  if (address.kind == ListenAddress::Kind::kTcp && tlsRef == nullptr) {
    usageError(kj::str("tcp endpoints need --tls-cert, --tls-key and --tls-ca"));
  }
  session->connection = connectToNode(session->io.port, address, tlsRef, kMaxMessageBytes)
                            .wait(session->io.waitScope);
  session->node = session->connection->bootstrap().castAs<api::Node>();
  return session;
}

void setKeyValues(capnp::List<api::KeyValue>::Builder out, kj::ArrayPtr<const kj::StringPtr> in) {
  for (size_t i = 0; i < in.size(); ++i) {
    KJ_IF_MAYBE (eq, in[i].findFirst('=')) {
      out[i].setKey(kj::str(in[i].slice(0, *eq)));
      out[i].setValue(in[i].slice(*eq + 1));
    } else {
      usageError(kj::str("expected KEY=VALUE, got '", in[i], "'"));
    }
  }
}

api::NetworkMode parseNetworkMode(kj::StringPtr text, kj::StringPtr flag) {
  if (text == "off") return api::NetworkMode::OFF;
  if (text == "restricted") return api::NetworkMode::RESTRICTED;
  if (text == "open") return api::NetworkMode::OPEN;
  usageError(kj::str(flag, " must be off, restricted or open"));
}

void fillSpec(const Args& args, api::SandboxSpec::Builder spec) {
  KJ_IF_MAYBE (t, args.value("--template")) {
    spec.setTemplate(*t);
  } else {
    usageError(kj::str("--template is required"));
  }
  spec.setTenant(args.value("--tenant").orDefault("default"));
  KJ_IF_MAYBE (v, args.value("--memory")) {
    spec.setMemoryBytes(parseBytes(*v));
  }
  KJ_IF_MAYBE (v, args.value("--cpus-sustained")) {
    spec.setCpuSustainedMillis(parseCpuMillis(*v));
  }
  KJ_IF_MAYBE (v, args.value("--cpus")) {
    spec.setCpuMillis(parseCpuMillis(*v));
  }
  KJ_IF_MAYBE (v, args.value("--burst-seconds")) {
    spec.setCpuBurstSeconds(parseUint(*v, "--burst-seconds"));
  }
  KJ_IF_MAYBE (v, args.value("--pids")) {
    spec.setPidsMax(parseUint(*v, "--pids"));
  }
  KJ_IF_MAYBE (v, args.value("--disk")) {
    spec.setDiskBytes(parseBytes(*v));
  }
  KJ_IF_MAYBE (v, args.value("--timeout")) {
    spec.setTimeoutSeconds(parseUint(*v, "--timeout"));
  }
  KJ_IF_MAYBE (v, args.value("--network")) {
    spec.setNetwork(parseNetworkMode(*v, "--network"));
  }
  auto allow = args.values("--allow");
  if (allow.size() > 0) {
    auto list = spec.initAllow(unsigned(allow.size()));
    for (unsigned i = 0; i < allow.size(); ++i) list.set(i, allow[i]);
  }
  KJ_IF_MAYBE (v, args.value("--egress-mbps")) {
    spec.setEgressMbps(parseUint(*v, "--egress-mbps"));
  }
  KJ_IF_MAYBE (v, args.value("--egress-cap")) {
    spec.setEgressByteCap(parseBytes(*v));
  }
  KJ_IF_MAYBE (v, args.value("--on-timeout")) {
    if (*v == "kill") {
      spec.setOnTimeout(api::TimeoutAction::KILL);
    } else if (*v == "pause") {
      spec.setOnTimeout(api::TimeoutAction::PAUSE);
    } else {
      usageError(kj::str("--on-timeout must be kill or pause"));
    }
  }
  KJ_IF_MAYBE (v, args.value("--cpu-cap")) {
    char* end = nullptr;
    double seconds = strtod(v->cStr(), &end);
    if (end == v->cStr() || *end != '\0' || !(seconds > 0) || seconds > 1e9) {
      usageError(kj::str("--cpu-cap takes CPU-seconds, e.g. 0.5 or 3600"));
    }
    spec.setCpuCapMillis(uint64_t(seconds * 1000 + 0.5));
  }
  KJ_IF_MAYBE (v, args.value("--on-cpu-cap")) {
    if (*v == "kill") {
      spec.setOnCpuCap(api::TimeoutAction::KILL);
    } else if (*v == "pause") {
      spec.setOnCpuCap(api::TimeoutAction::PAUSE);
    } else {
      usageError(kj::str("--on-cpu-cap must be kill or pause"));
    }
  }
  KJ_IF_MAYBE (v, args.value("--request-cap")) {
    char* end = nullptr;
    unsigned long long n = strtoull(v->cStr(), &end, 10);
    if (end == v->cStr() || *end != '\0' || n == 0)
      usageError(kj::str("--request-cap takes a count"));
    spec.setRequestCap(n);
  }
  auto env = args.values("--env");
  setKeyValues(spec.initEnv(env.size()), env);
  auto meta = args.values("--meta");
  setKeyValues(spec.initMetadata(meta.size()), meta);
}

// Forwards our stdin to the process until EOF, then closes its stdin.
kj::Promise<void> forwardStdin(loop::UringEventPort& port, api::Process::Client process,
                               kj::AsyncInputStream& in, kj::ArrayPtr<kj::byte> buffer) {
  return in.tryRead(buffer.begin(), 1, buffer.size())
      .then([&port, process, &in, buffer](size_t n) mutable -> kj::Promise<void> {
        if (n == 0) return process.closeStdinRequest().send().ignoreResult();
        auto request = process.writeStdinRequest();
        request.setData(buffer.slice(0, n));
        return request.send().then([&port, process, &in, buffer]() mutable {
          return forwardStdin(port, kj::mv(process), in, buffer);
        });
      });
}

// A shell's convention: the code, or 128 + the signal; a timeout is 124, as
// for timeout(1). Why a process that did not simply exit ended goes to
// stderr, since its code alone does not tell OOM, timeout and kill apart.
int exitCodeOf(api::ExitStatus::Reader status) {
  switch (status.getReason()) {
    case api::ExitReason::EXITED:
      return status.getCode();
    case api::ExitReason::SIGNALED:
      break;
    case api::ExitReason::OOM:
      fputs("sbx: the process ran out of memory and was killed (oom)\n", stderr);
      break;
    case api::ExitReason::TIMEOUT:
      fputs("sbx: the process ran past its exec timeout and was killed (timeout)\n", stderr);
      return 124;
    case api::ExitReason::KILLED:
      fputs("sbx: the sandbox ended under the process (killed)\n", stderr);
      break;
  }
  return 128 + status.getSignal();
}

// Runs a command in `sandbox` and returns its exit code.
int execIn(Session& s, api::Sandbox::Client sandbox, const Args& args) {
  auto argv = args.command();
  if (argv.size() == 0) usageError(kj::str("no command given after --"));
  bool detach = args.has("-d");
  if (detach && args.has("-i")) usageError(kj::str("-d and -i do not go together"));
  bool forward = !detach && (args.has("-i") || !isatty(STDIN_FILENO));
  auto request = sandbox.execRequest();
  auto exec = request.initRequest();
  auto outArgv = exec.initArgv(argv.size());
  for (size_t i = 0; i < argv.size(); ++i) outArgv.set(i, argv[i]);
  auto env = args.values("--env");
  setKeyValues(exec.initEnv(env.size()), env);
  exec.setCwd(args.value("--cwd").orDefault("/"));
  exec.setStdin(forward);
  KJ_IF_MAYBE (v, args.value("--exec-timeout")) {
    exec.setTimeoutSeconds(parseUint(*v, "--exec-timeout"));
  }
  if (detach) {
    // No sink: the agent keeps its output for `sbx attach`.
    auto response = request.send().getProcess().pidRequest().send().wait(s.io.waitScope);
    printf("%u\n", response.getPid());
    return 0;
  }
  request.setOutput(kj::heap<TerminalOutput>(s.io.port));
  // Pipelined: wait() goes out before exec()'s answer comes back.
  auto process = request.send().getProcess();
  kj::Promise<void> input = kj::READY_NOW;
  kj::Own<kj::AsyncInputStream> stdinStream;
  auto buffer = kj::heapArray<kj::byte>(64 * 1024);
  if (forward) {
    int fd = dup(STDIN_FILENO);
    if (fd >= 0) {
      stdinStream = loop::wrapInputFd(s.io.port, kj::AutoCloseFd(fd));
      input = forwardStdin(s.io.port, process, *stdinStream, buffer).catch_([](kj::Exception&&) {
      });  // the process may exit before reading stdin
    } else {
      input = process.closeStdinRequest().send().ignoreResult();
    }
  }
  auto waited = process.waitRequest().send();
  auto inputTask = input.eagerlyEvaluate(nullptr);
  auto response = waited.wait(s.io.waitScope);
  return exitCodeOf(response.getStatus());
}

int cmdCreate(Session& s, const Args& args) {
  auto request = s.node.createRequest();
  fillSpec(args, request.initSpec());
  auto response = request.send().wait(s.io.waitScope);
  printf("%s\n", response.getId().cStr());
  return 0;
}

api::Sandbox::Client openSandbox(Session& s, kj::StringPtr id) {
  auto request = s.node.openRequest();
  request.setId(id);
  return request.send().getSandbox();
}

kj::StringPtr requireId(const Args& args, size_t index = 0) {
  if (args.positional().size() <= index) usageError(kj::str("missing sandbox id"));
  return args.positional()[index];
}

// The process named by the positionals ID PID (pipelined: no round trip yet).
api::Process::Client openProcess(Session& s, const Args& args) {
  auto request = openSandbox(s, requireId(args)).processRequest();
  request.setPid(parseUint(args.positional()[1], "PID"));
  return request.send().getProcess();
}

int cmdExec(Session& s, const Args& args) {
  return execIn(s, openSandbox(s, requireId(args)), args);
}

int cmdRun(Session& s, const Args& args) {
  if (args.has("-d")) usageError(kj::str("run cannot -d: its sandbox ends with the command"));
  auto request = s.node.createRequest();
  fillSpec(args, request.initSpec());
  auto created = request.send();
  api::Sandbox::Client sandbox = created.getSandbox();  // pipelined: exec rides along
  int code = kCliErrorExit;
  kj::Maybe<kj::Exception> failure =
      kj::runCatchingExceptions([&]() { code = execIn(s, sandbox, args); });
  // The sandbox goes whatever happened to the command.
  sandbox.killRequest().send().ignoreResult().catch_([](kj::Exception&&) {}).wait(s.io.waitScope);
  KJ_IF_MAYBE (e, failure) {
    kj::throwFatalException(kj::mv(*e));
  }
  return code;
}

int cmdLs(Session& s, const Args& args) {
  auto request = s.node.listRequest();
  request.setTenant(args.value("--tenant").orDefault(""));
  auto response = request.send().wait(s.io.waitScope);
  kj::String out = args.has("--json") ? renderListJson(response.getSandboxes())
                                      : renderListTable(response.getSandboxes());
  fputs(out.cStr(), stdout);
  return 0;
}

int cmdInfo(Session& s, const Args& args) {
  kj::StringPtr id = requireId(args);
  auto response = openSandbox(s, id).infoRequest().send().wait(s.io.waitScope);
  auto info = response.getInfo();
  kj::String out = args.has("--json") ? renderInfoJson(info) : renderInfoText(info);
  fputs(out.cStr(), stdout);
  return 0;
}

// Reads ledger records page by page and checks each signature, against
// --public-key if given (a key pinned by the caller), else the node's own.
int cmdLedger(Session& s, const Args& args) {
  kj::Array<kj::byte> publicKey;
  KJ_IF_MAYBE (hex, args.value("--public-key")) {
    auto decoded = kj::decodeHex(*hex);
    if (decoded.hadErrors || decoded.size() != NodeKey::kPublicKeyBytes) {
      usageError(kj::str("--public-key takes the node's key as 64 hex digits"));
    }
    publicKey = kj::mv(decoded);
  } else {
    auto info = s.node.infoRequest().send().wait(s.io.waitScope);
    publicKey = kj::heapArray(info.getInfo().getPublicKey());
  }
  uint64_t cursor = 0;
  KJ_IF_MAYBE (v, args.value("--after")) {
    cursor = parseUint64(*v, "--after");
  }
  uint64_t wanted = UINT64_MAX;
  KJ_IF_MAYBE (v, args.value("--limit")) {
    wanted = parseUint64(*v, "--limit");
  }
  kj::Vector<capnp::Response<api::Node::UsageLedgerResults>> pages;
  kj::Vector<kj::Own<StoredMessage<api::UsageRecord>>> parsed;
  kj::Vector<CheckedRecord> checked;
  size_t failed = 0;
  while (checked.size() < wanted) {
    auto request = s.node.usageLedgerRequest();
    request.setAfterSeq(cursor);
    request.setLimit(uint32_t(kj::min(wanted - checked.size(), uint64_t(1000))));
    auto page = request.send().wait(s.io.waitScope);
    if (page.getRecords().size() == 0) break;
    for (auto signedRecord : page.getRecords()) {
      kj::Own<StoredMessage<api::UsageRecord>> record;
      bool verified = false;
      KJ_IF_MAYBE (good, verifyUsageRecord(publicKey, signedRecord)) {
        record = kj::mv(*good);
        verified = true;
      } else {
        record = parseUsageRecord(signedRecord);  // shown, flagged FAILED
        ++failed;
      }
      checked.add(CheckedRecord{record->get(), signedRecord.getSignature(), verified});
      parsed.add(kj::mv(record));
    }
    cursor = page.getNextCursor();
    pages.add(kj::mv(page));
  }
  kj::String out =
      args.has("--json") ? renderLedgerJson(checked, cursor) : renderLedgerTable(checked);
  fputs(out.cStr(), stdout);
  if (failed > 0) {
    fprintf(stderr, "sbx: %zu record(s) failed signature verification\n", failed);
    return 1;
  }
  return 0;
}

int cmdUsage(Session& s, const Args& args) {
  if (args.has("--ledger")) return cmdLedger(s, args);
  auto response = openSandbox(s, requireId(args)).usageRequest().send().wait(s.io.waitScope);
  kj::String out = args.has("--json") ? renderUsageJson(response.getUsage())
                                      : renderUsageText(response.getUsage());
  fputs(out.cStr(), stdout);
  return 0;
}

int cmdKill(Session& s, const Args& args) {
  openSandbox(s, requireId(args)).killRequest().send().wait(s.io.waitScope);
  return 0;
}

// A new lifetime from now (the sandbox's onTimeout applies at its end).
int cmdTimeout(Session& s, const Args& args) {
  kj::StringPtr id = requireId(args);
  if (args.positional().size() != 2) usageError(kj::str("timeout takes ID SECONDS"));
  auto request = openSandbox(s, id).setTimeoutRequest();
  request.setSeconds(parseUint(args.positional()[1], "SECONDS"));
  request.send().wait(s.io.waitScope);
  return 0;
}

// Sends a signal (a number, or a name such as TERM or SIGTERM) to a process.
int cmdSignal(Session& s, const Args& args) {
  if (args.positional().size() != 3) usageError(kj::str("signal takes ID PID SIGNAL"));
  auto signal = openProcess(s, args).signalRequest();
  signal.setSignal(parseSignal(args.positional()[2]));
  signal.send().wait(s.io.waitScope);
  return 0;
}

int cmdPause(Session& s, const Args& args) {
  openSandbox(s, requireId(args)).pauseRequest().send().wait(s.io.waitScope);
  return 0;
}

int cmdResume(Session& s, const Args& args) {
  openSandbox(s, requireId(args)).resumeRequest().send().wait(s.io.waitScope);
  return 0;
}

int cmdPs(Session& s, const Args& args) {
  auto response = openSandbox(s, requireId(args)).processesRequest().send().wait(s.io.waitScope);
  kj::String out = args.has("--json") ? renderProcessesJson(response.getProcesses())
                                      : renderProcessesTable(response.getProcesses());
  fputs(out.cStr(), stdout);
  return 0;
}

// Replays what the agent kept of a process's output, follows it to the end
// and exits with its code.
int cmdAttach(Session& s, const Args& args) {
  if (args.positional().size() != 2) usageError(kj::str("attach takes ID PID"));
  auto process = openProcess(s, args);
  auto attach = process.attachRequest();
  attach.setOutput(kj::heap<TerminalOutput>(s.io.port));
  uint64_t stdoutFrom = 0, stderrFrom = 0;
  KJ_IF_MAYBE (v, args.value("--stdout-from")) {
    stdoutFrom = parseUint64(*v, "--stdout-from");
  }
  KJ_IF_MAYBE (v, args.value("--stderr-from")) {
    stderrFrom = parseUint64(*v, "--stderr-from");
  }
  attach.setStdoutOffset(stdoutFrom);
  attach.setStderrOffset(stderrFrom);
  // Once attach returns the sink has caught up, and wait() covers the rest.
  auto started = attach.send().wait(s.io.waitScope);
  bool askedFrom = args.has("--stdout-from") || args.has("--stderr-from");
  if (askedFrom &&
      (started.getStdoutOffset() > stdoutFrom || started.getStderrOffset() > stderrFrom)) {
    fprintf(stderr,
            "sbx: older output is gone (the agent keeps the last 1 MiB of each stream); "
            "replayed stdout from byte %llu, stderr from byte %llu\n",
            static_cast<unsigned long long>(started.getStdoutOffset()),
            static_cast<unsigned long long>(started.getStderrOffset()));
  }
  auto response = process.waitRequest().send().wait(s.io.waitScope);
  return exitCodeOf(response.getStatus());
}

// "ID:PATH" -> {ID, PATH}; anything without a colon is a local path.
bool splitRemote(kj::StringPtr text, kj::String* id, kj::String* path) {
  KJ_IF_MAYBE (colon, text.findFirst(':')) {
    *id = kj::str(text.slice(0, *colon));
    *path = kj::str(text.slice(*colon + 1));
    return id->size() > 0;
  }
  return false;
}

kj::Promise<void> upload(Session& s, int fd, api::ByteSink::Client sink,
                         kj::ArrayPtr<kj::byte> buffer, uint64_t offset) {
  return s.io.port.read(fd, buffer, offset)
      .then([&s, fd, sink, buffer, offset](size_t n) mutable -> kj::Promise<void> {
        if (n == 0) return sink.doneRequest().send().ignoreResult();
        auto request = sink.writeRequest();
        request.setData(buffer.slice(0, n));
        return request.send().then([&s, fd, sink, buffer, offset, n]() mutable {
          uint64_t next = offset == uint64_t(-1) ? offset : offset + n;
          return upload(s, fd, kj::mv(sink), buffer, next);
        });
      });
}

int cmdCp(Session& s, const Args& args) {
  if (args.positional().size() != 2) usageError(kj::str("cp takes a source and a destination"));
  kj::String id, path;
  if (splitRemote(args.positional()[1], &id, &path)) {
    kj::StringPtr local = args.positional()[0];
    int fd = open(local.cStr(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) usageError(kj::str("cannot open ", local, ": ", strerror(errno)));
    kj::AutoCloseFd file(fd);
    struct stat st;
    KJ_SYSCALL(fstat(file, &st));
    auto files = openSandbox(s, id).filesRequest().send().getFiles();
    auto request = files.writeRequest();
    request.setPath(path);
    request.setMode(st.st_mode & 0777);
    auto sink = request.send().getSink();
    auto buffer = kj::heapArray<kj::byte>(kUploadChunkBytes);
    // Regular files are read at explicit offsets; pipes and ttys in order.
    uint64_t start = S_ISREG(st.st_mode) ? 0 : uint64_t(-1);
    upload(s, file, sink, buffer, start).wait(s.io.waitScope);
    return 0;
  }
  if (splitRemote(args.positional()[0], &id, &path)) {
    auto files = openSandbox(s, id).filesRequest().send().getFiles();
    auto request = files.readRequest();
    request.setPath(path);
    request.setSink(kj::heap<LocalFileSink>(s.io.port, args.positional()[1]));
    request.send().wait(s.io.waitScope);
    return 0;
  }
  usageError(kj::str("one side of cp must be ID:PATH"));
}

// Draining refuses new sandboxes. With --wait, returns once the live ones
// have all finished (0), or after --timeout seconds with some still live (1):
// stopping the agent then hands them to the next one, which adopts them.
int cmdDrain(Session& s, const Args& args) {
  bool draining = !args.has("--off");
  if (!draining && args.has("--wait")) usageError(kj::str("--wait goes with a drain, not --off"));
  if (args.has("--timeout") && !args.has("--wait"))
    usageError(kj::str("--timeout goes with --wait"));
  auto request = s.node.drainRequest();
  request.setDraining(draining);
  request.send().wait(s.io.waitScope);
  if (!args.has("--wait")) return 0;
  bool bounded = false;
  uint32_t timeoutSeconds = 0;
  KJ_IF_MAYBE (v, args.value("--timeout")) {
    bounded = true;
    timeoutSeconds = parseUint(*v, "--timeout");
  }
  auto start = std::chrono::steady_clock::now();
  int64_t reported = -1;
  for (;;) {
    uint32_t live = s.node.infoRequest().send().wait(s.io.waitScope).getInfo().getSandboxes();
    if (live == 0) {
      fputs("drained: no sandbox left\n", stderr);
      return 0;
    }
    if (int64_t(live) != reported) {
      fprintf(stderr, "draining: %u sandboxes still live\n", live);
      reported = live;
    }
    if (bounded &&
        std::chrono::steady_clock::now() - start >= std::chrono::seconds(timeoutSeconds)) {
      fprintf(stderr,
              "sbx: %u sandboxes still live after %u s; stopping the agent now hands them to "
              "the next agent, which adopts them\n",
              live, timeoutSeconds);
      return 1;
    }
    s.io.port.timer().afterDelay(200 * kj::MILLISECONDS).wait(s.io.waitScope);
  }
}

int cmdTenantRequestCap(Session& s, const Args& args) {
  if (args.positional().size() != 2) usageError(kj::str("tenant-request-cap takes TENANT N"));
  auto request = s.node.setTenantRequestCapRequest();
  request.setTenant(args.positional()[0]);
  request.setCap(parseUint64(args.positional()[1], "N"));
  request.send().wait(s.io.waitScope);
  return 0;
}

int cmdNodeMembers(Session& s, const Args& args) {
  auto response = s.node.membersRequest().send().wait(s.io.waitScope);
  if (args.has("--json")) {
    capnp::JsonCodec codec;
    codec.setPrettyPrint(true);
    printf("%s\n", codec.encode(response.getMembers()).cStr());
  } else {
    fputs(renderMembersTable(response.getMembers()).cStr(), stdout);
  }
  return 0;
}

int cmdNodeCapacity(Session& s, const Args& args) {
  auto response = s.node.capacityRequest().send().wait(s.io.waitScope);
  if (args.has("--json")) {
    capnp::JsonCodec codec;
    codec.setPrettyPrint(true);
    printf("%s\n", codec.encode(response.getNodes()).cStr());
  } else {
    fputs(renderCapacityTable(response.getNodes()).cStr(), stdout);
  }
  return 0;
}

int cmdNodeKeys(Session& s, const Args& args) {
  auto request = s.node.gossipKeysRequest();
  auto change = request.initChange();
  int given = 0;
  KJ_IF_MAYBE (v, args.value("--add")) {
    change.setAdd(*v);
    ++given;
  }
  KJ_IF_MAYBE (v, args.value("--use")) {
    change.setUse(*v);
    ++given;
  }
  KJ_IF_MAYBE (v, args.value("--remove")) {
    change.setRemove(*v);
    ++given;
  }
  if (given > 1) usageError(kj::str("node keys takes one of --add, --use, --remove"));
  if (given == 0) change.setList();
  auto response = request.send().wait(s.io.waitScope);
  for (auto id : response.getKeyIds()) {
    printf("%s%s\n", id.cStr(), id == response.getPrimary() ? " primary" : "");
  }
  return 0;
}

int cmdPlace(Session& s, const Args& args) {
  auto request = s.node.placeRequest();
  fillSpec(args, request.initSpec());
  auto placed = request.send();
  if (args.command().size() > 0) {
    // The exec is pipelined on the promised sandbox: it goes out with the
    // placement, not after it.
    api::Sandbox::Client sandbox = placed.getSandbox();
    int code = execIn(s, sandbox, args);
    auto response = placed.wait(s.io.waitScope);
    fprintf(stderr, "%s %s\n", response.getId().cStr(), response.getPlacement().getNode().cStr());
    return code;
  }
  auto response = placed.wait(s.io.waitScope);
  if (args.has("--json")) {
    capnp::JsonCodec codec;
    printf("{\"id\": \"%s\", \"placement\": %s}\n", response.getId().cStr(),
           codec.encode(response.getPlacement()).cStr());
  } else {
    printf("%s %s\n", response.getId().cStr(), response.getPlacement().getNode().cStr());
  }
  return 0;
}

int cmdNode(Session& s, const Args& args) {
  if (args.positional().size() > 0) {
    kj::StringPtr what = args.positional()[0];
    if (what == "members") return cmdNodeMembers(s, args);
    if (what == "capacity") return cmdNodeCapacity(s, args);
    if (what == "keys") return cmdNodeKeys(s, args);
    usageError(kj::str("node takes members, capacity or keys (or nothing)"));
  }
  auto response = s.node.infoRequest().send().wait(s.io.waitScope);
  kj::String out =
      args.has("--json") ? renderNodeJson(response.getInfo()) : renderNodeText(response.getInfo());
  fputs(out.cStr(), stdout);
  return 0;
}

int cmdTenantWeight(Session& s, const Args& args) {
  if (args.positional().size() != 2) usageError(kj::str("tenant-weight takes TENANT WEIGHT"));
  auto request = s.node.setTenantWeightRequest();
  request.setTenant(args.positional()[0]);
  request.setWeight(parseUint(args.positional()[1], "WEIGHT"));
  request.send().wait(s.io.waitScope);
  return 0;
}

int cmdNet(Session& s, const Args& args) {
  auto sandbox = openSandbox(s, requireId(args));
  auto current = sandbox.networkRequest().send().wait(s.io.waitScope);
  bool change = args.value("--mode") != nullptr || args.values("--allow").size() > 0 ||
                args.has("--clear-allow") || args.value("--egress-mbps") != nullptr ||
                args.value("--egress-cap") != nullptr;
  if (!change) {
    auto status = current.getStatus();
    fputs((args.has("--json") ? renderNetworkJson(status) : renderNetworkText(status)).cStr(),
          stdout);
    return 0;
  }
  // Unchanged fields keep their current values.
  auto was = current.getStatus().getSettings();
  auto request = sandbox.setNetworkRequest();
  auto settings = request.initSettings();
  settings.setMode(was.getMode());
  KJ_IF_MAYBE (v, args.value("--mode")) {
    settings.setMode(parseNetworkMode(*v, "--mode"));
  }
  auto allow = args.values("--allow");
  if (allow.size() > 0 || args.has("--clear-allow")) {
    auto list = settings.initAllow(unsigned(allow.size()));
    for (unsigned i = 0; i < allow.size(); ++i) list.set(i, allow[i]);
  } else if (settings.getMode() == api::NetworkMode::RESTRICTED) {
    settings.setAllow(was.getAllow());
  }
  settings.setEgressMbps(was.getEgressMbps());
  KJ_IF_MAYBE (v, args.value("--egress-mbps")) {
    settings.setEgressMbps(parseUint(*v, "--egress-mbps"));
  }
  settings.setEgressByteCap(was.getEgressByteCap());
  KJ_IF_MAYBE (v, args.value("--egress-cap")) {
    settings.setEgressByteCap(*v == "none" ? 0 : parseBytes(*v));
  }
  auto response = request.send().wait(s.io.waitScope);
  auto status = response.getStatus();
  fputs((args.has("--json") ? renderNetworkJson(status) : renderNetworkText(status)).cStr(),
        stdout);
  return 0;
}

int cmdEvents(Session& s, const Args& args) {
  auto request = openSandbox(s, requireId(args)).eventsRequest();
  KJ_IF_MAYBE (v, args.value("--after")) {
    request.setAfterSeq(parseUint(*v, "--after"));
  }
  KJ_IF_MAYBE (v, args.value("--limit")) {
    request.setLimit(parseUint(*v, "--limit"));
  }
  auto response = request.send().wait(s.io.waitScope);
  auto events = response.getEvents();
  fputs((args.has("--json") ? renderEventsJson(events) : renderEventsText(events)).cStr(), stdout);
  return 0;
}

int dispatch(int argc, char** argv) {
  if (argc < 2 || kj::StringPtr(argv[1]) == "--help" || kj::StringPtr(argv[1]) == "help") {
    fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  // Global options may come before the command word.
  kj::Vector<kj::StringPtr> words;
  const char* command = nullptr;
  for (int i = 1; i < argc; ++i) {
    kj::StringPtr w = argv[i];
    if (command == nullptr && !w.startsWith("-")) {
      command = argv[i];
      continue;
    }
    if (command == nullptr && (w == "--connect" || w.startsWith("--tls-")) && i + 1 < argc) {
      words.add(w);
      words.add(argv[++i]);
      continue;
    }
    words.add(w);
  }
  if (command == nullptr) usageError(kj::str("no command"));
  kj::StringPtr name = command;
  Args args(words, kj::arrayPtr(kValueFlags, kj::size(kValueFlags)));
  using Handler = int (*)(Session&, const Args&);
  struct Entry {
    kj::StringPtr name;
    Handler handler;
  };
  const Entry table[] = {
      {"create", cmdCreate}, {"exec", cmdExec},     {"run", cmdRun},
      {"ls", cmdLs},         {"info", cmdInfo},     {"usage", cmdUsage},
      {"kill", cmdKill},     {"cp", cmdCp},         {"tenant-weight", cmdTenantWeight},
      {"drain", cmdDrain},   {"pause", cmdPause},   {"resume", cmdResume},
      {"ps", cmdPs},         {"attach", cmdAttach}, {"timeout", cmdTimeout},
      {"signal", cmdSignal}, {"net", cmdNet},       {"events", cmdEvents},
      {"node", cmdNode},     {"place", cmdPlace},   {"tenant-request-cap", cmdTenantRequestCap}};
  for (auto& e : table) {
    if (e.name == name) {
      auto session = connect(args);
      return e.handler(*session, args);
    }
  }
  usageError(kj::str("unknown command '", name, "'"));
}

}  // namespace
}  // namespace nodeagent::sbx

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  try {
    return nodeagent::sbx::dispatch(argc, argv);
  } catch (kj::Exception& e) {
    kj::StringPtr text = e.getDescription();
    KJ_IF_MAYBE (code, nodeagent::apiErrorCode(e)) {
      fprintf(stderr, "sbx: %s: %s\n", nodeagent::errorCodeName(*code).cStr(),
              nodeagent::apiErrorMessage(e).cStr());
    } else if (text.startsWith("usage: ")) {
      fprintf(stderr, "sbx: %s\n", text.cStr());
    } else {
      fprintf(stderr, "sbx: %s\n", nodeagent::apiErrorMessage(e).cStr());
    }
    return 125;  // sbx's own failure (see kCliErrorExit)
  }
}
