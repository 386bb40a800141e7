// One-line progress displays on stderr, redrawn every 100 ms from a background thread, shown only
// when stderr is a terminal and erased when stopped; plus plain step lines, which also go to
// stderr when it is no terminal (logs and scripts read those).
#pragma once

#include <atomic>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "agent/file_hasher.hpp"

namespace envd::cli {

// Redraws render() while it lives (on a terminal only). Thread-safe.
class ProgressLine {
 public:
  // `render` is called on the display thread; it returns the line's text (no newline).
  explicit ProgressLine(std::function<std::string()> render);
  ~ProgressLine();  // stops and erases the line
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;

  // Writes `line` and a newline to stderr, above the progress line on a terminal.
  void print(std::string_view line);
  bool on_terminal() const { return m_thread.joinable(); }

 private:
  void draw();
  std::function<std::string()> m_render;
  std::mutex m_mutex;  // one writer of stderr at a time
  std::atomic<bool> m_stop{false};
  std::thread m_thread;
};

// "hashing: 1,234/46,540 files, 12 MB/624 MB (read 3 MB)" from HashProgress counters.
std::string hash_progress_text(const agent::HashProgress& progress, std::string_view label);

class HashProgressLine {
 public:
  HashProgressLine(const agent::HashProgress& progress, std::string label);
  HashProgressLine(const HashProgressLine&) = delete;
  HashProgressLine& operator=(const HashProgressLine&) = delete;

 private:
  ProgressLine m_line;
};

}  // namespace envd::cli
