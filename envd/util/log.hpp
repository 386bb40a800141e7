// Logging: one logfmt line per event on stderr (ts=.. level=.. component=.. msg=".." k=v ...).
// Thread-safe. The level comes from ENVD_LOG_LEVEL (debug|info|warn|error; default info).
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace envd::log {

enum class Level { debug, info, warn, error };

using Field = std::pair<std::string_view, std::string>;

// Writes one line if `level` is enabled. Values are quoted when they contain spaces, quotes or '='.
void write(Level level, std::string_view component, std::string_view msg,
           std::initializer_list<Field> fields = {});

inline void debug(std::string_view c, std::string_view m, std::initializer_list<Field> f = {}) {
  write(Level::debug, c, m, f);
}
inline void info(std::string_view c, std::string_view m, std::initializer_list<Field> f = {}) {
  write(Level::info, c, m, f);
}
inline void warn(std::string_view c, std::string_view m, std::initializer_list<Field> f = {}) {
  write(Level::warn, c, m, f);
}
inline void error(std::string_view c, std::string_view m, std::initializer_list<Field> f = {}) {
  write(Level::error, c, m, f);
}

// Overrides ENVD_LOG_LEVEL (used by --quiet/--verbose and tests).
void set_level(Level level);
bool enabled(Level level);

// Formats one logfmt value: bare when safe, else double-quoted with \" \\ \n escaped.
std::string quote(std::string_view value);

}  // namespace envd::log
