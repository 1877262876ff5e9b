// Command-line parsing for sbx: flags before "--", positional words, and the
// size / CPU notations people type ("512M", "1.5").
#pragma once

#include <stdint.h>

#include <kj/array.h>
#include <kj/string.h>
#include <kj/vector.h>

namespace nodeagent::sbx {

class Args {
 public:
  // `valueFlags` take a value ("--memory 512M" or "--memory=512M"); other
  // "--x" are booleans. Everything after "--" is the command.
  Args(kj::ArrayPtr<const kj::StringPtr> words, kj::ArrayPtr<const kj::StringPtr> valueFlags);

  bool has(kj::StringPtr flag) const;
  kj::Maybe<kj::StringPtr> value(kj::StringPtr flag) const;   // the last one given
  kj::Array<kj::StringPtr> values(kj::StringPtr flag) const;  // every one, in order
  kj::ArrayPtr<const kj::StringPtr> positional() const { return positional_; }
  kj::ArrayPtr<const kj::StringPtr> command() const { return command_; }

 private:
  struct Flag {
    kj::String name;
    kj::Maybe<kj::String> value;
  };
  kj::Vector<Flag> flags_;
  kj::Vector<kj::StringPtr> positional_;
  kj::Vector<kj::StringPtr> command_;
};

// Throws an exception whose description is "usage: <message>".
[[noreturn]] void usageError(kj::String message);

// "512M", "1G", "4096", "1.5G", "100KiB" -> bytes. Throws on garbage.
uint64_t parseBytes(kj::StringPtr text);
// "1", "0.25", "2000m" -> thousandths of a CPU.
uint32_t parseCpuMillis(kj::StringPtr text);
uint32_t parseUint(kj::StringPtr text, kj::StringPtr what);
uint64_t parseUint64(kj::StringPtr text, kj::StringPtr what);
// "15", "TERM", "SIGTERM" -> 15. Throws on anything that is not a signal.
int parseSignal(kj::StringPtr text);

}  // namespace nodeagent::sbx
