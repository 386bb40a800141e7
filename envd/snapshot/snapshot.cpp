// Snapshot helpers that need no JSON: names of enums, path safety, the hard link rules, totals.
#include "envd/snapshot/snapshot.hpp"

#include <algorithm>

#include "envd/snapshot/snapshot_error.hpp"
#include "envd/snapshot/snapshot_json_detail.hpp"

namespace envd::snapshot {
namespace {

// One file list of a root, with the JSON location of the list ("/environments/0/unowned").
struct RootList {
  const std::vector<FileEntry>* files;
  std::string where;
};

bool any_link(const std::vector<FileEntry>& files) {
  return std::any_of(files.begin(), files.end(),
                     [](const FileEntry& f) { return !f.link.empty(); });
}

// The regular file or symlink at `path` in any of `lists` (each sorted by path), or null.
const FileEntry* find_in(const std::vector<RootList>& lists, const std::string& path) {
  for (const auto& list : lists) {
    auto it = std::lower_bound(list.files->begin(), list.files->end(), path,
                               [](const FileEntry& f, const std::string& p) { return f.path < p; });
    if (it != list.files->end() && it->path == path) return &*it;
  }
  return nullptr;
}

// Only the linked files are looked at, each by a binary search per list: a root has thousands of
// files and a handful of links, so no index of all paths is built.
Result<void> check_root_links(const std::vector<RootList>& lists) {
  for (const auto& list : lists) {
    for (std::size_t i = 0; i < list.files->size(); ++i) {
      const FileEntry& f = (*list.files)[i];
      if (f.link.empty()) continue;
      const std::string where = list.where + "/" + std::to_string(i) + "/link";
      const std::string shown = "\"" + f.path + "\" links to \"" + f.link + "\"";
      ENVD_TRY_VOID(check_link_fields(f, where));
      if (!(f.link < f.path))
        return bad(where, shown + ": must name the first file of its group in byte order");
      const FileEntry* target = find_in(lists, f.link);
      if (target == nullptr || target->type != FileType::regular)
        return bad(where, shown + ", which is no regular file under the same root");
      if (!target->link.empty())
        return bad(where, shown + ", which is itself a link (to \"" + target->link + "\")");
      if (target->digest != f.digest || target->size != f.size || target->mode != f.mode)
        return bad(where, shown + ", which has another digest, size or mode");
    }
  }
  return {};
}

}  // namespace

Result<void> check_link_fields(const FileEntry& f, const std::string& where) {
  if (f.link.empty()) return {};
  if (f.type != FileType::regular)
    return bad(where, "symlink \"" + f.path + "\": only regular files have a link");
  if (!is_safe_relative_path(f.link))
    return bad(where, "\"" + f.path + "\": unsafe link path (absolute, empty or with ..)");
  if (f.link == f.path) return bad(where, "\"" + f.path + "\" links to itself");
  return {};
}

Result<void> check_links(const Environment& env, const std::string& where) {
  bool linked = any_link(env.unowned);
  for (std::size_t i = 0; !linked && i < env.packages.size(); ++i)
    linked = any_link(env.packages[i].files);
  if (!linked) return {};
  std::vector<RootList> lists;
  lists.reserve(env.packages.size() + 1);
  for (std::size_t i = 0; i < env.packages.size(); ++i)
    lists.push_back({&env.packages[i].files, where + "/packages/" + std::to_string(i) + "/files"});
  lists.push_back({&env.unowned, where + "/unowned"});
  return check_root_links(lists);
}

Result<void> check_links(const SourceTree& source, const std::string& where) {
  if (!any_link(source.files)) return {};
  return check_root_links({{&source.files, where + "/files"}});
}

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
