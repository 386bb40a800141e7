// Thread-safe collection of scan warnings.
#include "agent/diagnostics.hpp"

#include "envd/util/log.hpp"

namespace envd::agent {

void Diagnostics::warn(std::string path, std::string message) {
  log::warn("scan", message, {{"path", path}});
  std::lock_guard lock(m_mutex);
  m_items.push_back({std::move(path), std::move(message)});
}

std::vector<Diagnostic> Diagnostics::list() const {
  std::lock_guard lock(m_mutex);
  return m_items;
}

std::size_t Diagnostics::size() const {
  std::lock_guard lock(m_mutex);
  return m_items.size();
}

}  // namespace envd::agent
