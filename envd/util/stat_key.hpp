// What identifies a file's content without reading it (the stat cache's key, as in git's index),
// shared by the agent, which records it, and the builder, which checks a file against it.
#pragma once

#include <sys/stat.h>

#include <cstdint>

namespace envd {

// If all five are unchanged, so is the content, as far as stat can tell.
struct StatKey {
  std::uint64_t dev = 0;
  std::uint64_t ino = 0;
  std::uint64_t size = 0;
  std::int64_t mtime_ns = 0;
  std::int64_t ctime_ns = 0;
  friend bool operator==(const StatKey&, const StatKey&) = default;
};

inline StatKey stat_key(const struct ::stat& st) {
  auto ns = [](const timespec& ts) {
    return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
  };
  return StatKey{static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino),
                 static_cast<std::uint64_t>(st.st_size), ns(st.st_mtim), ns(st.st_ctim)};
}

}  // namespace envd
