#include "nodeagent/config.h"

#include <capnp/compat/json.capnp.h>
#include <capnp/compat/json.h>
#include <capnp/schema.h>
#include <errno.h>
#include <fcntl.h>
#include <kj/debug.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "util/log.h"

namespace nodeagent {
namespace {

[[noreturn]] void fail(kj::String message) {
  kj::throwFatalException(
      kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__, kj::mv(message)));
}

kj::String readFile(kj::StringPtr path) {
  int fd = ::open(path.cStr(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(kj::str("config file ", path, ": ", strerror(errno)));
  KJ_DEFER(::close(fd));
  kj::Vector<char> data;
  char buffer[8192];
  for (;;) {
    ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(kj::str("config file ", path, ": ", strerror(errno)));
    if (n == 0) break;
    data.addAll(buffer, buffer + n);
  }
  data.add('\0');
  return kj::String(data.releaseAsArray());
}

kj::String fieldNames(capnp::StructSchema schema) {
  kj::Vector<kj::StringPtr> names;
  for (auto field : schema.getFields()) names.add(field.getProto().getName());
  return kj::strArray(names, ", ");
}

// JsonCodec ignores unknown names (or, told not to, rejects them without
// saying where); this walk names the full path and the valid choices.
void checkFields(capnp::JsonValue::Reader value, capnp::StructSchema schema, kj::StringPtr path,
                 kj::Vector<kj::String>& errors) {
  if (!value.isObject()) return;  // a type mismatch; the decoder reports it
  for (auto member : value.getObject()) {
    kj::StringPtr name = member.getName();
    auto memberPath = path.size() == 0 ? kj::str(name) : kj::str(path, ".", name);
    KJ_IF_MAYBE (field, schema.findFieldByName(name)) {
      auto type = field->getType();
      if (type.isStruct()) {
        checkFields(member.getValue(), type.asStruct(), memberPath, errors);
      } else if (type.isList() && type.asList().getElementType().isStruct() &&
                 member.getValue().isArray()) {
        auto elementSchema = type.asList().getElementType().asStruct();
        auto elements = member.getValue().getArray();
        for (uint i = 0; i < elements.size(); ++i) {
          checkFields(elements[i], elementSchema, kj::str(memberPath, "[", i, "]"), errors);
        }
      }
    } else {
      errors.add(kj::str("unknown field \"", memberPath, "\" (", schema.getShortDisplayName(),
                         " has: ", fieldNames(schema), ")"));
    }
  }
}

void parseInto(kj::StringPtr path, kj::StringPtr text, config::Config::Builder root) {
  capnp::JsonCodec codec;
  capnp::MallocMessageBuilder scratch;
  auto json = scratch.initRoot<capnp::JsonValue>();
  KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] { codec.decodeRaw(text, json); })) {
    fail(kj::str("config file ", path, ": malformed JSON: ", e->getDescription()));
  }
  if (!json.isObject()) fail(kj::str("config file ", path, ": top level must be a JSON object"));

  kj::Vector<kj::String> errors;
  checkFields(json.asReader(), capnp::Schema::from<config::Config>(), "", errors);
  if (errors.size() > 0) fail(kj::str("config file ", path, ": ", kj::strArray(errors, "; ")));

  KJ_IF_MAYBE (e, kj::runCatchingExceptions(
                      [&] { codec.decode(json.asReader(), capnp::toDynamic(root)); })) {
    fail(kj::str("config file ", path, ": ", e->getDescription()));
  }
}

bool isTemplateName(kj::StringPtr name) {
  if (name.size() == 0) return false;
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
  }
  return true;
}

bool parsePort(kj::StringPtr text, uint16_t* port) {
  if (text.size() == 0 || text.size() > 5) return false;
  uint32_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + (c - '0');
  }
  if (value > 65535) return false;
  *port = static_cast<uint16_t>(value);
  return true;
}

bool isHostName(kj::StringPtr host) {
  for (char c : host) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-';
    if (!ok) return false;
  }
  return host.size() > 0;
}

bool isIpv6Literal(kj::StringPtr host) {
  bool colon = false;
  for (char c : host) {
    bool ok = (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || (c >= '0' && c <= '9') ||
              c == '.' || c == ':' || c == '%';
    if (!ok) return false;
    colon = colon || c == ':';
  }
  return colon;
}

// Built lazily, once; immutable afterwards, so safe to read from any thread.
struct BuiltinTemplates {
  capnp::MallocMessageBuilder message;
  capnp::List<config::Template>::Reader list;

  BuiltinTemplates() {
    auto templates = message.initRoot<config::Config>().initTemplates(1);
    auto python = templates[0];
    python.setName("python");
    python.setUsrDir("/usr");  // the host's /usr has python3 and node
    python.setMemoryBytes(uint64_t(512) << 20);
    python.setCpuMillis(1000);
    python.setPidsMax(256);
    python.setDiskBytes(uint64_t(1) << 30);
    python.setTimeoutSeconds(300);
    list = templates.asReader();
  }
};

}  // namespace

ListenAddress parseListenAddress(kj::StringPtr address) {
  auto bad = [&](kj::StringPtr why) {
    fail(kj::str("listen address \"", address, "\": ", why, " (want unix:PATH or tcp:HOST:PORT)"));
  };
  ListenAddress result;
  if (address.startsWith("unix:")) {
    kj::StringPtr path = address.slice(5);
    if (path.size() == 0) bad("empty socket path");
    // sun_path holds the path and its terminating NUL.
    if (path.size() >= sizeof(sockaddr_un::sun_path)) bad("socket path too long");
    result.kind = ListenAddress::Kind::kUnix;
    result.path = kj::str(path);
    return result;
  }
  if (address.startsWith("tcp:")) {
    kj::StringPtr rest = address.slice(4);
    KJ_IF_MAYBE (colon, rest.findLast(':')) {
      auto host = kj::str(rest.slice(0, *colon));
      if (!parsePort(rest.slice(*colon + 1), &result.port)) bad("port must be 0-65535");
      if (host.startsWith("[") && host.endsWith("]")) {
        host = kj::str(host.slice(1, host.size() - 1));
        if (!isIpv6Literal(host)) bad("bad IPv6 address in brackets");
      } else if (host.findFirst(':') != nullptr) {
        bad("IPv6 hosts need brackets, e.g. tcp:[::1]:7000");
      } else if (!isHostName(host)) {
        bad("bad host");
      }
      result.kind = ListenAddress::Kind::kTcp;
      result.host = kj::mv(host);
      return result;
    }
    bad("missing :PORT");
  }
  bad("unknown scheme");
  KJ_UNREACHABLE;
}

LoadedConfig loadConfig(kj::Maybe<kj::StringPtr> filePath) {
  LoadedConfig config;
  config.message = kj::heap<capnp::MallocMessageBuilder>();
  // A fresh root reads as the schema's defaults for every field.
  config.root = config.message->initRoot<config::Config>();
  KJ_IF_MAYBE (path, filePath) {
    auto text = readFile(*path);
    parseInto(*path, text, config.root);
    config.file = kj::str(*path);
  }
  return config;
}

CommandLine parseCommandLine(int argc, const char* const* argv) {
  CommandLine flags;
  for (int i = 1; i < argc; ++i) {
    kj::StringPtr arg = argv[i];
    kj::String name;
    kj::Maybe<kj::String> inlineValue;
    KJ_IF_MAYBE (eq, arg.findFirst('=')) {
      name = kj::str(arg.slice(0, *eq));
      inlineValue = kj::str(arg.slice(*eq + 1));
    } else {
      name = kj::str(arg);
    }
    auto value = [&]() -> kj::String {
      KJ_IF_MAYBE (v, inlineValue) {
        return kj::mv(*v);
      }
      if (i + 1 >= argc) fail(kj::str("flag ", name, " needs a value"));
      return kj::str(argv[++i]);
    };
    if (name == "--config") {
      flags.configFile = value();
    } else if (name == "--state-dir") {
      flags.stateDir = value();
    } else if (name == "--listen") {
      flags.listen.add(value());
    } else if (name == "--log-level") {
      flags.logLevel = value();
    } else {
      fail(kj::str("unknown argument \"", arg,
                   "\" (flags: --config FILE, --state-dir DIR, --listen ADDR, --log-level L)"));
    }
  }
  return flags;
}

void applyFlags(LoadedConfig& config, const CommandLine& flags) {
  KJ_IF_MAYBE (dir, flags.stateDir) {
    config.root.setStateDir(*dir);
  }
  if (flags.listen.size() > 0) {
    auto list = config.root.initListen(flags.listen.size());
    for (uint i = 0; i < flags.listen.size(); ++i) list.set(i, flags.listen[i]);
  }
  KJ_IF_MAYBE (level, flags.logLevel) {
    config.root.setLogLevel(*level);
  }
}

void validateConfig(config::Config::Reader config) {
  kj::Vector<kj::String> errors;

  if (!config.getStateDir().startsWith("/")) {
    errors.add(kj::str("stateDir must be an absolute path (got \"", config.getStateDir(), "\")"));
  }

  auto listen = config.getListen();
  if (listen.size() == 0) errors.add(kj::str("listen must name at least one address"));
  for (uint i = 0; i < listen.size(); ++i) {
    KJ_IF_MAYBE (e, kj::runCatchingExceptions([&] {
                   auto address = parseListenAddress(listen[i]);
                   if (address.kind == ListenAddress::Kind::kUnix &&
                       !address.path.startsWith("/")) {
                     fail(kj::str("listen address \"", listen[i],
                                  "\": socket path must be absolute"));
                   }
                 })) {
      errors.add(kj::str("listen[", i, "]: ", e->getDescription()));
    }
  }

  if (config.getUidRangeSize() == 0) errors.add(kj::str("uidRangeSize must be > 0"));
  uint64_t lastUid =
      uint64_t(config.getUidBase()) + uint64_t(config.getUidRangeSize()) * config.getMaxSandboxes();
  if (lastUid > UINT32_MAX) {
    errors.add(kj::str("uidBase + uidRangeSize * maxSandboxes = ", lastUid,
                       " does not fit in 32-bit uids"));
  }
  if (config.getMaxMessageBytes() == 0) errors.add(kj::str("maxMessageBytes must be > 0"));

  log::Level level;
  kj::StringPtr levelName = config.getLogLevel();
  if (!log::parseLevel(std::string_view(levelName.begin(), levelName.size()), &level)) {
    errors.add(kj::str("logLevel \"", levelName, "\" is not one of debug, info, warn, error"));
  }

  auto templates = config.getTemplates();
  uint64_t warmTotal = 0;
  for (uint i = 0; i < templates.size(); ++i) {
    auto t = templates[i];
    kj::StringPtr name = t.getName();
    if (!isTemplateName(name)) {
      errors.add(kj::str("templates[", i, "].name \"", name, "\" must be non-empty [a-z0-9-]"));
    }
    for (uint j = 0; j < i; ++j) {
      if (templates[j].getName() == name) {
        errors.add(kj::str("templates[", i, "].name \"", name, "\" repeats templates[", j, "]"));
        break;
      }
    }
    if (!t.getUsrDir().startsWith("/")) {
      errors.add(kj::str("templates[", i, "].usrDir must be an absolute path"));
    }
    if (t.getMemoryBytes() == 0 || t.getCpuMillis() == 0 || t.getPidsMax() == 0 ||
        t.getDiskBytes() == 0 || t.getTimeoutSeconds() == 0) {
      errors.add(kj::str("templates[", i, "] (", name, "): limits must be > 0"));
    }
    if (t.getCpuBurstSeconds() > 86400) {
      errors.add(kj::str("templates[", i, "] (", name, "): cpuBurstSeconds must be at most 86400"));
    }
    warmTotal += t.getWarmPool();
  }
  if (warmTotal > config.getMaxSandboxes()) {
    errors.add(kj::str("the templates' warm pools (", warmTotal, ") exceed maxSandboxes (",
                       config.getMaxSandboxes(), ")"));
  }
  uint32_t ledgerSeconds = config.getLedger().getIntervalSeconds();
  if (ledgerSeconds == 0 || ledgerSeconds > 86400) {
    errors.add(kj::str("ledger.intervalSeconds must be 1-86400 (got ", ledgerSeconds, ")"));
  }

  if (errors.size() > 0) fail(kj::str("invalid config: ", kj::strArray(errors, "; ")));
}

LoadedConfig loadConfigFromArgs(int argc, const char* const* argv) {
  auto flags = parseCommandLine(argc, argv);
  kj::Maybe<kj::StringPtr> file;
  KJ_IF_MAYBE (path, flags.configFile) {
    file = kj::StringPtr(*path);
  }
  auto config = loadConfig(file);
  applyFlags(config, flags);
  validateConfig(config.get());
  return config;
}

capnp::List<config::Template>::Reader effectiveTemplates(config::Config::Reader config) {
  if (config.getTemplates().size() > 0) return config.getTemplates();
  static const BuiltinTemplates builtins;
  return builtins.list;
}

}  // namespace nodeagent
