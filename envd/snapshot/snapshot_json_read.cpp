// JSON -> Snapshot: parses with nlohmann and validates every field the builder will trust,
// naming the JSON location of the first problem.
#include <cstddef>
#include <cstdint>

#include "envd/snapshot/snapshot.hpp"
#include "envd/snapshot/snapshot_error.hpp"
#include "envd/snapshot/snapshot_json_detail.hpp"
#include "envd/util/json_detail.hpp"

namespace envd::snapshot {
namespace {

using nlohmann::json;

Result<std::string> get_string(const json& j, const char* key, const std::string& where,
                               bool required = true) {
  auto it = j.find(key);
  if (it == j.end()) {
    if (required) return bad(where + "/" + key, "missing");
    return std::string();
  }
  if (!it->is_string()) return bad(where + "/" + key, "must be a string");
  return it->get<std::string>();
}

Result<bool> get_bool(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) return false;
  if (!it->is_boolean()) return bad(where + "/" + key, "must be a boolean");
  return it->get<bool>();
}

Result<std::uint64_t> get_uint(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) return bad(where + "/" + key, "missing");
  if (!it->is_number_unsigned()) return bad(where + "/" + key, "must be a non-negative integer");
  return it->get<std::uint64_t>();
}

Result<const json*> get_array(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array()) return bad(where + "/" + key, "must be an array");
  return &*it;
}

Result<std::string> get_absolute_path(const json& j, const char* key, const std::string& where) {
  auto p = get_string(j, key, where);
  if (!p) return p;
  const std::string_view path = *p;
  if (path.empty() || path.front() != '/' ||
      (path.size() > 1 && !is_safe_relative_path(path.substr(1))))
    return bad(where + "/" + key, "must be a normalised absolute path: \"" + *p + "\"");
  return p;
}

Result<FileEntry> file_from_json(const json& j, const std::string& where) {
  if (!j.is_object()) return bad(where, "must be an object");
  FileEntry f;
  ENVD_TRY(f.path, get_string(j, "path", where));
  if (!is_safe_relative_path(f.path))
    return bad(where + "/path", "unsafe path \"" + f.path + "\" (absolute, empty or with ..)");
  ENVD_TRY(auto mode, get_uint(j, "mode", where));
  if (mode > 07777) return bad(where + "/mode", "must be permission bits (<= 07777)");
  f.mode = static_cast<std::uint32_t>(mode);
  ENVD_TRY(auto type, get_string(j, "type", where));
  if (type == "file") {
    f.type = FileType::regular;
    ENVD_TRY(f.size, get_uint(j, "size", where));
    ENVD_TRY(auto d, get_string(j, "digest", where));
    auto digest = oci::Digest::parse(d);
    if (!digest) return bad(where + "/digest", digest.error().message());
    f.digest = *digest;
    if (j.contains("link")) {
      // Present means linked: an empty value is refused rather than read as "no link", which
      // the writer would then drop (check_link_fields).
      ENVD_TRY(f.link, get_string(j, "link", where));
      if (f.link.empty()) return bad(where + "/link", "must be a safe relative path, not \"\"");
      ENVD_TRY_VOID(check_link_fields(f, where + "/link"));
    }
  } else if (type == "symlink") {
    if (j.contains("link")) return bad(where + "/link", "only regular files have a link");
    f.type = FileType::symlink;
    ENVD_TRY(f.target, get_string(j, "target", where));
    if (f.target.empty() || f.target.find('\0') != std::string::npos)
      return bad(where + "/target", "must be a non-empty path");
  } else {
    return bad(where + "/type", "must be \"file\" or \"symlink\", not \"" + type + "\"");
  }
  return f;
}

Result<std::vector<FileEntry>> files_from_json(const json& j, const char* key,
                                               const std::string& where) {
  ENVD_TRY(const json* arr, get_array(j, key, where));
  std::vector<FileEntry> out;
  out.reserve(arr->size());
  for (size_t i = 0; i < arr->size(); ++i) {
    ENVD_TRY(auto f, file_from_json((*arr)[i], where + "/" + key + "/" + std::to_string(i)));
    if (!out.empty() && !(out.back().path < f.path))
      return bad(where + "/" + key + "/" + std::to_string(i),
                 "files must be sorted by path without duplicates (\"" + f.path + "\")");
    out.push_back(std::move(f));
  }
  return out;
}

Result<Package> package_from_json(const json& j, const std::string& where) {
  if (!j.is_object()) return bad(where, "must be an object");
  Package p;
  ENVD_TRY(p.name, get_string(j, "name", where));
  if (p.name.empty()) return bad(where + "/name", "must not be empty");
  ENVD_TRY(p.version, get_string(j, "version", where));
  ENVD_TRY(auto manager, get_string(j, "manager", where));
  if (manager == "conda") {
    p.manager = PackageManager::conda;
  } else if (manager == "pip") {
    p.manager = PackageManager::pip;
  } else {
    return bad(where + "/manager", "must be \"conda\" or \"pip\"");
  }
  ENVD_TRY(p.installer, get_string(j, "installer", where, false));
  if (p.manager == PackageManager::pip) {
    // The writer never writes these for pip, so accepting them would lose them on the way back.
    for (const char* key : {"build", "channel", "subdir"})
      if (j.contains(key)) return bad(where + "/" + key, "only conda packages have one");
  }
  ENVD_TRY(p.build, get_string(j, "build", where, false));
  ENVD_TRY(p.channel, get_string(j, "channel", where, false));
  ENVD_TRY(p.subdir, get_string(j, "subdir", where, false));
  ENVD_TRY(p.direct_url, get_string(j, "direct_url", where, false));
  ENVD_TRY(p.requested, get_bool(j, "requested", where));
  if (j.contains("editable_root")) {
    ENVD_TRY(auto root, get_absolute_path(j, "editable_root", where));
    p.editable_root = root;
  }
  ENVD_TRY(p.files, files_from_json(j, "files", where));
  if (j.contains("modified")) {
    ENVD_TRY(const json* arr, get_array(j, "modified", where));
    for (const auto& m : *arr) {
      if (!m.is_string() || !is_safe_relative_path(m.get<std::string>()))
        return bad(where + "/modified", "must hold safe relative paths");
      p.modified.push_back(m.get<std::string>());
    }
  }
  return p;
}

Result<Environment> environment_from_json(const json& j, const std::string& where,
                                          LinkCheck links) {
  if (!j.is_object()) return bad(where, "must be an object");
  Environment e;
  ENVD_TRY(auto kind, get_string(j, "kind", where));
  if (kind == "conda") {
    e.kind = EnvironmentKind::conda;
  } else if (kind == "prefix") {
    e.kind = EnvironmentKind::prefix;
  } else if (kind == "venv") {
    e.kind = EnvironmentKind::venv;
  } else {
    return bad(where + "/kind", "must be conda, prefix or venv, not \"" + kind + "\"");
  }
  ENVD_TRY(e.name, get_string(j, "name", where, false));
  ENVD_TRY(e.prefix, get_absolute_path(j, "prefix", where));
  ENVD_TRY(e.python_version, get_string(j, "python_version", where, false));
  if (j.contains("base_prefix")) {
    ENVD_TRY(auto base, get_absolute_path(j, "base_prefix", where));
    e.base_prefix = base;
  }
  ENVD_TRY(e.system_site_packages, get_bool(j, "system_site_packages", where));
  ENVD_TRY(e.partial, get_bool(j, "partial", where));
  ENVD_TRY(const json* pkgs, get_array(j, "packages", where));
  for (size_t i = 0; i < pkgs->size(); ++i) {
    ENVD_TRY(auto p, package_from_json((*pkgs)[i], where + "/packages/" + std::to_string(i)));
    e.packages.push_back(std::move(p));
  }
  ENVD_TRY(e.unowned, files_from_json(j, "unowned", where));
  if (links == LinkCheck::full) ENVD_TRY_VOID(check_links(e, where));
  return e;
}

Result<SourceTree> source_from_json(const json& j, const std::string& where, LinkCheck links) {
  if (!j.is_object()) return bad(where, "must be an object");
  SourceTree s;
  ENVD_TRY(s.root, get_absolute_path(j, "root", where));
  ENVD_TRY(auto role, get_string(j, "role", where));
  if (role == "src") {
    s.role = SourceRole::src;
  } else if (role == "editable") {
    s.role = SourceRole::editable;
  } else {
    return bad(where + "/role", "must be src or editable");
  }
  if (j.contains("git_commit")) {
    ENVD_TRY(auto c, get_string(j, "git_commit", where));
    s.git_commit = c;
  }
  ENVD_TRY(s.dirty, get_bool(j, "dirty", where));
  if (auto it = j.find("ignored"); it != j.end()) {
    if (!it->is_object()) return bad(where + "/ignored", "must be an object");
    for (const auto& [k, v] : it->items()) {
      if (!v.is_number_unsigned()) return bad(where + "/ignored/" + k, "must be a count");
      s.ignored[k] = v.get<std::uint64_t>();
    }
  }
  ENVD_TRY(s.files, files_from_json(j, "files", where));
  if (links == LinkCheck::full) ENVD_TRY_VOID(check_links(s, where));
  return s;
}

}  // namespace

Result<Snapshot> parse(std::string_view text) {
  ENVD_TRY(json j, envd::json::parse(text, "snapshot"));
  return parse_value(j);
}

Result<Snapshot> parse_value(const nlohmann::json& j, LinkCheck links) {
  if (!j.is_object()) return bad("", "document must be a JSON object");
  ENVD_TRY(auto media_type, get_string(j, "media_type", ""));
  if (media_type != k_media_type)
    return bad("/media_type",
               "must be " + std::string(k_media_type) + ", not \"" + media_type + "\"");
  Snapshot s;
  auto pit = j.find("platform");
  if (pit == j.end() || !pit->is_object()) return bad("/platform", "must be an object");
  ENVD_TRY(s.platform.os, get_string(*pit, "os", "/platform"));
  ENVD_TRY(s.platform.arch, get_string(*pit, "arch", "/platform"));
  ENVD_TRY(s.platform.libc, get_string(*pit, "libc", "/platform", false));
  ENVD_TRY(const json* envs, get_array(j, "environments", ""));
  for (size_t i = 0; i < envs->size(); ++i) {
    ENVD_TRY(auto e,
             environment_from_json((*envs)[i], "/environments/" + std::to_string(i), links));
    s.environments.push_back(std::move(e));
  }
  ENVD_TRY(const json* srcs, get_array(j, "sources", ""));
  for (size_t i = 0; i < srcs->size(); ++i) {
    ENVD_TRY(auto src, source_from_json((*srcs)[i], "/sources/" + std::to_string(i), links));
    s.sources.push_back(std::move(src));
  }
  ENVD_TRY(s.created, get_string(j, "created", "", false));
  ENVD_TRY(s.host, get_string(j, "host", "", false));
  ENVD_TRY(s.envd_version, get_string(j, "envd_version", "", false));
  return s;
}

}  // namespace envd::snapshot
