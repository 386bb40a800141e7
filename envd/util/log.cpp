// logfmt writer on stderr; one write(2) per line so concurrent lines never interleave.
#include "envd/util/log.hpp"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <string>

namespace envd::log {
namespace {

Level level_from_env() {
  const char* v = std::getenv("ENVD_LOG_LEVEL");
  if (v == nullptr) return Level::info;
  std::string_view s(v);
  if (s == "debug") return Level::debug;
  if (s == "warn" || s == "warning") return Level::warn;
  if (s == "error") return Level::error;
  return Level::info;
}

std::atomic<int>& current_level() {
  static std::atomic<int> level{static_cast<int>(level_from_env())};
  return level;
}

std::string_view level_name(Level l) {
  switch (l) {
    case Level::debug:
      return "debug";
    case Level::info:
      return "info";
    case Level::warn:
      return "warn";
    case Level::error:
      return "error";
  }
  return "info";
}

std::string timestamp() {
  auto now = std::chrono::system_clock::now();
  auto secs = std::chrono::system_clock::to_time_t(now);
  auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  return buf;
}

}  // namespace

void set_level(Level level) {
  current_level().store(static_cast<int>(level));
}

bool enabled(Level level) {
  return static_cast<int>(level) >= current_level().load();
}

std::string quote(std::string_view value) {
  bool needs = value.empty();
  for (char c : value) {
    if (c == ' ' || c == '"' || c == '=' || c == '\\' || c == '\n' || c == '\t') needs = true;
  }
  if (!needs) return std::string(value);
  std::string out = "\"";
  for (char c : value) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        out += c;
    }
  }
  out += '"';
  return out;
}

void write(Level level, std::string_view component, std::string_view msg,
           std::initializer_list<Field> fields) {
  if (!enabled(level)) return;
  std::string line = "ts=" + timestamp();
  line += " level=";
  line += level_name(level);
  line += " component=";
  line += quote(component);
  line += " msg=";
  line += quote(msg);
  for (const auto& [k, v] : fields) {
    line += ' ';
    line += k;
    line += '=';
    line += quote(v);
  }
  line += '\n';
  // A single write keeps lines whole across threads; a short write to stderr is not retried.
  [[maybe_unused]] auto n = ::write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace envd::log
