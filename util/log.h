// Structured logs: one JSON object per line on stderr.
//
//   log::info("sandbox.created", {{"id", id}, {"tenant", tenant}});
//   ->
//   {"ts":"2026-11-22T00:31:55.123Z","level":"info","event":"sandbox.created","id":"...","tenant":"..."}
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

namespace nodeagent::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// A field value is kept as already-encoded JSON.
class Value {
 public:
  Value(std::string_view s);  // NOLINT: implicit on purpose, so call sites read like a table
  Value(const char* s) : Value(std::string_view(s)) {}
  Value(const std::string& s) : Value(std::string_view(s)) {}
  Value(int64_t n) : json_(std::to_string(n)) {}
  Value(uint64_t n) : json_(std::to_string(n)) {}
  Value(int n) : json_(std::to_string(n)) {}
  Value(unsigned n) : json_(std::to_string(n)) {}
  Value(bool b) : json_(b ? "true" : "false") {}
  const std::string& json() const { return json_; }

 private:
  std::string json_;
};

struct Field {
  std::string_view key;
  Value value;
};

void setLevel(Level level);
bool parseLevel(std::string_view name, Level* out);
void write(Level level, std::string_view event, std::initializer_list<Field> fields);

inline void debug(std::string_view e, std::initializer_list<Field> f = {}) {
  write(Level::kDebug, e, f);
}
inline void info(std::string_view e, std::initializer_list<Field> f = {}) {
  write(Level::kInfo, e, f);
}
inline void warn(std::string_view e, std::initializer_list<Field> f = {}) {
  write(Level::kWarn, e, f);
}
inline void error(std::string_view e, std::initializer_list<Field> f = {}) {
  write(Level::kError, e, f);
}

// Appends `s` to `out` as a JSON string literal (with quotes).
void appendJsonString(std::string& out, std::string_view s);

}  // namespace nodeagent::log
