// A one-line progress display on stderr, redrawn every 100 ms from a background thread, shown only
// when stderr is a terminal. Reads HashProgress counters; erased when stopped.
#pragma once

#include <atomic>
#include <string>
#include <thread>

#include "agent/file_hasher.hpp"

namespace envd::cli {

class HashProgressLine {
 public:
  HashProgressLine(const agent::HashProgress& progress, std::string label);
  ~HashProgressLine();  // stops and erases the line
  HashProgressLine(const HashProgressLine&) = delete;
  HashProgressLine& operator=(const HashProgressLine&) = delete;

 private:
  void draw() const;
  const agent::HashProgress& m_progress;
  std::string m_label;
  std::atomic<bool> m_stop{false};
  std::thread m_thread;
};

}  // namespace envd::cli
