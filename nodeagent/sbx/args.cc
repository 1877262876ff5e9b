#include "nodeagent/sbx/args.h"
#include <signal.h>
#include <string.h>

#include <errno.h>

#include <cmath>
#include <cstdlib>

#include <kj/debug.h>

namespace nodeagent::sbx {

void usageError(kj::String message) {
  kj::throwFatalException(
      kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__, kj::str("usage: ", message)));
}

Args::Args(kj::ArrayPtr<const kj::StringPtr> words, kj::ArrayPtr<const kj::StringPtr> valueFlags) {
  auto takesValue = [&](kj::StringPtr name) {
    for (auto f : valueFlags) {
      if (f == name) return true;
    }
    return false;
  };
  for (size_t i = 0; i < words.size(); ++i) {
    kj::StringPtr w = words[i];
    if (w == "--") {
      for (size_t j = i + 1; j < words.size(); ++j) command_.add(words[j]);
      break;
    }
    if (w.startsWith("--") || (w.size() == 2 && w[0] == '-')) {
      kj::String name;
      kj::Maybe<kj::String> value;
      KJ_IF_MAYBE (eq, w.findFirst('=')) {
        name = kj::str(w.slice(0, *eq));
        value = kj::str(w.slice(*eq + 1));
      } else {
        name = kj::str(w);
        if (takesValue(name)) {
          if (i + 1 >= words.size()) usageError(kj::str(name, " needs a value"));
          value = kj::str(words[++i]);
        }
      }
      if (value != nullptr && !takesValue(name)) usageError(kj::str(name, " takes no value"));
      flags_.add(Flag{kj::mv(name), kj::mv(value)});
      continue;
    }
    positional_.add(w);
  }
}

bool Args::has(kj::StringPtr flag) const {
  for (auto& f : flags_) {
    if (f.name == flag) return true;
  }
  return false;
}

kj::Maybe<kj::StringPtr> Args::value(kj::StringPtr flag) const {
  kj::Maybe<kj::StringPtr> result;
  for (auto& f : flags_) {
    if (f.name == flag) {
      KJ_IF_MAYBE (v, f.value) {
        result = kj::StringPtr(*v);
      }
    }
  }
  return result;
}

kj::Array<kj::StringPtr> Args::values(kj::StringPtr flag) const {
  kj::Vector<kj::StringPtr> out;
  for (auto& f : flags_) {
    if (f.name == flag) {
      KJ_IF_MAYBE (v, f.value) {
        out.add(*v);
      }
    }
  }
  return out.releaseAsArray();
}

uint64_t parseBytes(kj::StringPtr text) {
  char* end = nullptr;
  double number = strtod(text.cStr(), &end);
  if (end == text.cStr() || number < 0 || !std::isfinite(number))
    usageError(kj::str("not a size: ", text));
  kj::StringPtr unit = end;
  double scale = 1;
  if (unit == "" || unit == "B") {
    scale = 1;
  } else if (unit == "K" || unit == "k" || unit == "KiB" || unit == "KB") {
    scale = 1024.0;
  } else if (unit == "M" || unit == "m" || unit == "MiB" || unit == "MB") {
    scale = 1024.0 * 1024;
  } else if (unit == "G" || unit == "g" || unit == "GiB" || unit == "GB") {
    scale = 1024.0 * 1024 * 1024;
  } else if (unit == "T" || unit == "TiB" || unit == "TB") {
    scale = 1024.0 * 1024 * 1024 * 1024;
  } else {
    usageError(kj::str("unknown size unit in ", text, " (use K, M, G or T)"));
  }
  double bytes = number * scale;
  if (bytes >= 1.8e19) usageError(kj::str("size too large: ", text));
  return uint64_t(bytes);
}

uint32_t parseCpuMillis(kj::StringPtr text) {
  char* end = nullptr;
  double number = strtod(text.cStr(), &end);
  if (end == text.cStr() || !(number > 0) || !std::isfinite(number) || number >= 4096000) {
    usageError(kj::str("not a CPU count: ", text));
  }
  kj::StringPtr unit = end;
  if (unit == "m") return uint32_t(number);
  if (unit != "") usageError(kj::str("not a CPU count: ", text, " (use 1, 0.5 or 500m)"));
  return uint32_t(std::lround(number * 1000));
}

uint32_t parseUint(kj::StringPtr text, kj::StringPtr what) {
  char* end = nullptr;
  unsigned long long v = strtoull(text.cStr(), &end, 10);
  if (text.size() == 0 || *end != '\0' || text[0] == '-' || v > 0xffffffffull) {
    usageError(kj::str(what, " must be a whole number, not '", text, "'"));
  }
  return uint32_t(v);
}

uint64_t parseUint64(kj::StringPtr text, kj::StringPtr what) {
  char* end = nullptr;
  errno = 0;
  unsigned long long v = strtoull(text.cStr(), &end, 10);
  if (text.size() == 0 || *end != '\0' || text[0] == '-' || errno == ERANGE) {
    usageError(kj::str(what, " must be a whole number, not '", text, "'"));
  }
  return uint64_t(v);
}

int parseSignal(kj::StringPtr text) {
  kj::StringPtr name = text.startsWith("SIG") ? text.slice(3) : text;
  if (name.size() > 0 && name[0] >= '0' && name[0] <= '9') {
    uint32_t number = parseUint(name, "the signal");
    if (number >= 1 && number <= uint32_t(SIGRTMAX)) return int(number);
  } else {
    for (int number = 1; number < SIGRTMIN; ++number) {
      const char* abbrev = sigabbrev_np(number);
      if (abbrev != nullptr && name == abbrev) return number;
    }
  }
  usageError(kj::str("not a signal: '", text, "' (use a number or a name such as TERM)"));
}

}  // namespace nodeagent::sbx
