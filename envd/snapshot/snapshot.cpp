// Snapshot helpers that need no JSON: names of enums, path safety, totals.
#include "envd/snapshot/snapshot.hpp"

namespace envd::snapshot {

std::string_view to_string(EnvironmentKind kind) {
  switch (kind) {
    case EnvironmentKind::conda:
      return "conda";
    case EnvironmentKind::prefix:
      return "prefix";
    case EnvironmentKind::venv:
      return "venv";
  }
  return "prefix";
}

std::string_view to_string(PackageManager manager) {
  return manager == PackageManager::conda ? "conda" : "pip";
}

std::string_view to_string(SourceRole role) {
  return role == SourceRole::src ? "src" : "editable";
}

bool package_before(const Package& a, const Package& b) {
  auto lower = [](unsigned char c) { return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c; };
  const auto& x = a.name;
  const auto& y = b.name;
  for (std::size_t i = 0; i < x.size() && i < y.size(); ++i) {
    auto cx = lower(static_cast<unsigned char>(x[i]));
    auto cy = lower(static_cast<unsigned char>(y[i]));
    if (cx != cy) return cx < cy;
  }
  if (x.size() != y.size()) return x.size() < y.size();
  if (a.manager != b.manager) return a.manager < b.manager;
  return x < y;
}

bool is_safe_relative_path(std::string_view path) {
  if (path.empty() || path.front() == '/') return false;
  if (path.find('\0') != std::string_view::npos) return false;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    auto part = path.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") return false;
    start = end + 1;
  }
  return true;
}

Totals totals(const Snapshot& snapshot) {
  Totals t;
  auto add = [&](const std::vector<FileEntry>& files) {
    for (const auto& f : files) {
      ++t.files;
      t.bytes += f.size;
    }
  };
  for (const auto& env : snapshot.environments) {
    t.packages += env.packages.size();
    for (const auto& p : env.packages) add(p.files);
    add(env.unowned);
  }
  for (const auto& src : snapshot.sources) add(src.files);
  return t;
}

}  // namespace envd::snapshot
