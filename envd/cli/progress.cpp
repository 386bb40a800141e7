// Terminal progress lines (see progress.hpp).
#include "envd/cli/progress.hpp"

#include <unistd.h>

#include <chrono>

#include "envd/cli/format.hpp"

namespace envd::cli {
namespace {

constexpr std::string_view k_erase = "\r\033[K";

void write_all(std::string_view s) {
  while (!s.empty()) {
    ssize_t n = ::write(STDERR_FILENO, s.data(), s.size());
    if (n <= 0) return;  // stderr is gone: nothing to report to
    s.remove_prefix(static_cast<std::size_t>(n));
  }
}

}  // namespace

ProgressLine::ProgressLine(std::function<std::string()> render) : m_render(std::move(render)) {
  if (::isatty(STDERR_FILENO) == 0) return;
  m_thread = std::thread([this] {
    while (!m_stop.load()) {
      draw();
      for (int i = 0; i < 10 && !m_stop.load(); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));  // display cadence only
    }
  });
}

ProgressLine::~ProgressLine() {
  if (!m_thread.joinable()) return;
  m_stop = true;
  m_thread.join();
  write_all(k_erase);
}

void ProgressLine::draw() {
  std::string line = std::string(k_erase) + m_render();
  std::lock_guard lock(m_mutex);
  write_all(line);
}

void ProgressLine::print(std::string_view line) {
  std::lock_guard lock(m_mutex);
  std::string out = on_terminal() ? std::string(k_erase) : std::string();
  out.append(line).push_back('\n');
  write_all(out);
}

std::string hash_progress_text(const agent::HashProgress& p, std::string_view label) {
  return std::string(label) + ": " + with_commas(p.files_done.load()) + "/" +
         with_commas(p.files_total.load()) + " files, " + human_bytes(p.bytes_done.load()) + "/" +
         human_bytes(p.bytes_total.load()) + " (read " + human_bytes(p.bytes_hashed.load()) + ")";
}

HashProgressLine::HashProgressLine(const agent::HashProgress& progress, std::string label)
    : m_line(
          [&progress, label = std::move(label)] { return hash_progress_text(progress, label); }) {}

}  // namespace envd::cli
