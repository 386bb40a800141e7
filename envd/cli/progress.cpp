// Terminal progress line (see progress.hpp).
#include "envd/cli/progress.hpp"

#include <unistd.h>

#include <chrono>

#include "envd/cli/format.hpp"

namespace envd::cli {

HashProgressLine::HashProgressLine(const agent::HashProgress& progress, std::string label)
    : m_progress(progress), m_label(std::move(label)) {
  if (::isatty(STDERR_FILENO) == 0) return;
  m_thread = std::thread([this] {
    while (!m_stop.load()) {
      draw();
      for (int i = 0; i < 10 && !m_stop.load(); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));  // display cadence only
    }
  });
}

HashProgressLine::~HashProgressLine() {
  if (!m_thread.joinable()) return;
  m_stop = true;
  m_thread.join();
  static constexpr char k_erase[] = "\r\033[K";
  [[maybe_unused]] auto n = ::write(STDERR_FILENO, k_erase, sizeof k_erase - 1);
}

void HashProgressLine::draw() const {
  std::string line = "\r\033[K" + m_label + ": " + with_commas(m_progress.files_done.load()) + "/" +
                     with_commas(m_progress.files_total.load()) + " files, " +
                     human_bytes(m_progress.bytes_done.load()) + "/" +
                     human_bytes(m_progress.bytes_total.load()) + " (read " +
                     human_bytes(m_progress.bytes_hashed.load()) + ")";
  [[maybe_unused]] auto n = ::write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace envd::cli
