// The agent's configuration: schema defaults, then the JSON config file, then
// command-line flags, each overriding the one before.
//
//   LoadedConfig config = loadConfigFromArgs(argc, argv);  // throws on any error
//   auto stateDir = config.get().getStateDir();
//
// The file holds any subset of config::Config in capnp JSON form, e.g.
//   {"stateDir": "/srv/nodeagent", "listen": ["tcp:0.0.0.0:7000"],
//    "templates": [{"name": "python", "memoryBytes": "1073741824"}]}
// Unknown field names are errors, so a typo never silently keeps a default.
#pragma once

#include <capnp/list.h>
#include <capnp/message.h>
#include <kj/memory.h>
#include <kj/string.h>
#include <kj/vector.h>

#include <cstdint>

#include "schema/config.capnp.h"

namespace nodeagent {

// "unix:PATH" or "tcp:HOST:PORT" (IPv6 hosts in brackets: "tcp:[::1]:7000").
// Shared by the agent's listeners and the CLI's connect.
struct ListenAddress {
  enum class Kind { kUnix, kTcp };
  Kind kind = Kind::kUnix;
  kj::String path;    // kUnix
  kj::String host;    // kTcp, without brackets
  uint16_t port = 0;  // kTcp; 0 = any free port (listen only)
};

// Throws a kj::Exception naming the address and what is wrong with it.
ListenAddress parseListenAddress(kj::StringPtr address);

struct LoadedConfig {
  kj::Own<capnp::MallocMessageBuilder> message;
  config::Config::Builder root = nullptr;  // the root of `message`
  kj::Maybe<kj::String> file;              // the file it was read from, if any

  config::Config::Reader get() const { return root.asReader(); }
};

// The schema's defaults, overridden by the JSON file at `filePath` if given.
// Throws, naming the file, if it is missing, unreadable, malformed, names an
// unknown field or has a value of the wrong type. Does not validate().
LoadedConfig loadConfig(kj::Maybe<kj::StringPtr> filePath);

// The agent's flags. Each may be given as "--flag VALUE" or "--flag=VALUE".
//   --config FILE     the JSON config file
//   --state-dir DIR   overrides stateDir
//   --listen ADDR     repeatable; all of them replace the listen list
//   --log-level L     overrides logLevel
struct CommandLine {
  kj::Maybe<kj::String> configFile;
  kj::Maybe<kj::String> stateDir;
  kj::Vector<kj::String> listen;  // empty = not given
  kj::Maybe<kj::String> logLevel;
};

// argv[0] is the program name. Throws on an unknown flag or a missing value.
CommandLine parseCommandLine(int argc, const char* const* argv);

// Overwrites the fields the command line gives.
void applyFlags(LoadedConfig& config, const CommandLine& flags);

// Throws one exception listing every problem found: stateDir absolute, listen
// addresses well-formed (unix paths absolute), uidRangeSize > 0 and the uid
// ranges within 32 bits, log level known, template names unique and
// [a-z0-9-]+, template limits non-zero, ledger.intervalSeconds 1-86400.
void validateConfig(config::Config::Reader config);

// parseCommandLine, loadConfig(--config), applyFlags, validateConfig.
LoadedConfig loadConfigFromArgs(int argc, const char* const* argv);

// config.templates, or the built-in set when that is empty:
//   python: usrDir /usr (python3 and node), 512 MiB, 1000 cpuMillis, 256
//           pids, 1 GiB disk, 300 s timeout.
// The result points into `config` or into static storage.
capnp::List<config::Template>::Reader effectiveTemplates(config::Config::Reader config);

}  // namespace nodeagent
