// Snapshot patches: made from two item indexes, applied by merging sorted lists.

#include "envd/snapshot/snapshot_patch.hpp"

#include <algorithm>

#include "envd/snapshot/snapshot_error.hpp"
#include "envd/snapshot/snapshot_json_detail.hpp"

namespace envd::snapshot {
namespace {

using nlohmann::json;

// An environment's or source tree's own fields, without its items.
Environment without_items(const Environment& e) {
  Environment out;
  out.kind = e.kind;
  out.name = e.name;
  out.prefix = e.prefix;
  out.python_version = e.python_version;
  out.base_prefix = e.base_prefix;
  out.system_site_packages = e.system_site_packages;
  out.partial = e.partial;
  return out;
}

SourceTree without_items(const SourceTree& s) {
  SourceTree out;
  out.root = s.root;
  out.role = s.role;
  out.git_commit = s.git_commit;
  out.dirty = s.dirty;
  out.ignored = s.ignored;
  return out;
}

// The items of `index` whose key starts with "<scope>\0<kind>\0", as the text after that.
template <typename Visit>
void for_each_in_scope(const ItemIndex& index, std::string_view scope, char kind, Visit&& visit) {
  std::string head(scope);
  head.push_back('\0');
  head.push_back(kind);
  head.push_back('\0');
  auto it = std::lower_bound(
      index.items.begin(), index.items.end(), head,
      [](const ItemIndex::Item& item, const std::string& k) { return item.key < k; });
  for (; it != index.items.end() && std::string_view(it->key).starts_with(head); ++it)
    visit(it->key, std::string_view(it->key).substr(head.size()));
}

Result<std::string> get_text(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return bad(where + "/" + key, "must be a string");
  return it->get<std::string>();
}

Result<oci::Digest> get_digest(const json& j, const char* key, const std::string& where) {
  ENVD_TRY(auto text, get_text(j, key, where));
  auto d = oci::Digest::parse(text);
  if (!d) return bad(where + "/" + key, d.error().message());
  return *d;
}

Result<std::vector<std::string>> get_paths(const json& j, const char* key,
                                           const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array()) return bad(where + "/" + key, "must be an array");
  std::vector<std::string> out;
  for (std::size_t i = 0; i < it->size(); ++i) {
    const json& p = (*it)[i];
    if (!p.is_string() || !is_safe_relative_path(p.get<std::string>()))
      return bad(where + "/" + key + "/" + std::to_string(i), "must be a safe relative path");
    out.push_back(p.get<std::string>());
  }
  return out;
}

// `base` with the files in `removed` taken out and those of `put` added or replacing the base's
// at the same path; every list sorted by path. Errors: a removed path the base lacks or that
// `put` also names.
Result<std::vector<FileEntry>> merge_files(const std::vector<FileEntry>& base,
                                           const std::vector<FileEntry>& put,
                                           std::vector<std::string> removed,
                                           const std::string& where) {
  std::sort(removed.begin(), removed.end());
  auto by_path = [](const FileEntry& f, const std::string& p) { return f.path < p; };
  for (const auto& p : removed) {
    auto b = std::lower_bound(base.begin(), base.end(), p, by_path);
    if (b == base.end() || b->path != p)
      return bad(where, "removes \"" + p + "\", which the base snapshot does not have");
    auto n = std::lower_bound(put.begin(), put.end(), p, by_path);
    if (n != put.end() && n->path == p) return bad(where, "both removes and changes \"" + p + "\"");
  }
  std::vector<FileEntry> out;
  out.reserve(base.size() + put.size());
  auto r = removed.begin();
  auto keep = [&](const FileEntry& f) {
    while (r != removed.end() && *r < f.path) ++r;
    if (r == removed.end() || *r != f.path) out.push_back(f);
  };
  auto n = put.begin();
  for (const auto& f : base) {
    while (n != put.end() && n->path < f.path) out.push_back(*n++);
    if (n != put.end() && n->path == f.path) {
      out.push_back(*n++);
    } else {
      keep(f);
    }
  }
  out.insert(out.end(), n, put.end());
  return out;
}

Result<std::vector<Package>> merge_packages(const std::vector<Package>& base,
                                            const std::vector<Package>& put,
                                            const std::vector<Patch::PackageId>& removed,
                                            const std::string& where) {
  auto same = [](const Package& p, std::string_view name, PackageManager manager) {
    return p.name == name && p.manager == manager;
  };
  std::vector<bool> dropped(base.size(), false);
  for (const auto& id : removed) {
    auto it = std::find_if(base.begin(), base.end(),
                           [&](const Package& p) { return same(p, id.name, id.manager); });
    if (it == base.end())
      return bad(where, "removes " + std::string(to_string(id.manager)) + " package \"" + id.name +
                            "\", which the base snapshot does not have");
    dropped[static_cast<std::size_t>(it - base.begin())] = true;
  }
  for (const auto& p : put)
    for (std::size_t i = 0; i < base.size(); ++i)
      if (same(base[i], p.name, p.manager)) {
        if (dropped[i]) return bad(where, "both removes and changes package \"" + p.name + "\"");
        dropped[i] = true;
      }
  std::vector<Package> out;
  out.reserve(base.size() + put.size());
  for (std::size_t i = 0; i < base.size(); ++i)
    if (!dropped[i]) out.push_back(base[i]);
  out.insert(out.end(), put.begin(), put.end());
  std::sort(out.begin(), out.end(), package_before);
  return out;
}

}  // namespace

// --- the index -------------------------------------------------------------------------------

Result<ItemIndex> ItemIndex::of(const Snapshot& snapshot, const oci::Digest& digest) {
  ENVD_TRY(auto items, item_digests(snapshot));
  return ItemIndex{digest, std::move(items)};
}

std::string ItemIndex::to_text() const {
  json list = json::array();
  for (const auto& item : items) list.push_back(json::array({item.key, item.digest.str()}));
  return json{{"snapshot_digest", snapshot_digest.str()}, {"items", std::move(list)}}.dump();
}

Result<ItemIndex> ItemIndex::parse(std::string_view text) {
  ENVD_TRY(json j, envd::json::parse(text, "snapshot item index"));
  if (!j.is_object()) return bad("", "an item index must be a JSON object");
  ENVD_TRY(auto digest, get_digest(j, "snapshot_digest", ""));
  ItemIndex index{std::move(digest), {}};
  auto it = j.find("items");
  if (it == j.end() || !it->is_array()) return bad("/items", "must be an array");
  index.items.reserve(it->size());
  for (std::size_t i = 0; i < it->size(); ++i) {
    const json& item = (*it)[i];
    const std::string where = "/items/" + std::to_string(i);
    if (!item.is_array() || item.size() != 2 || !item[0].is_string() || !item[1].is_string())
      return bad(where, "must be [key, digest]");
    auto d = oci::Digest::parse(item[1].get<std::string>());
    if (!d) return bad(where, d.error().message());
    index.items.push_back({item[0].get<std::string>(), std::move(*d)});
    if (i > 0 && !(index.items[i - 1].key < index.items[i].key))
      return bad(where, "items must be sorted by key without duplicates");
  }
  return index;
}

const oci::Digest* ItemIndex::find(std::string_view key) const {
  auto it = std::lower_bound(items.begin(), items.end(), key,
                             [](const Item& item, std::string_view k) { return item.key < k; });
  return it != items.end() && it->key == key ? &it->digest : nullptr;
}

// --- making a patch --------------------------------------------------------------------------

Result<std::string> make_patch(const ItemIndex& base, const Snapshot& next,
                               const ItemIndex& next_index) {
  auto changed = [&](const std::string& key) {
    const oci::Digest* was = base.find(key);
    const oci::Digest* now = next_index.find(key);
    return was == nullptr || now == nullptr || !(*was == *now);
  };
  Snapshot fragment;
  fragment.platform = next.platform;
  fragment.created = next.created;
  fragment.host = next.host;
  fragment.envd_version = next.envd_version;
  json removed_envs = json::array();
  for (const auto& env : next.environments) {
    Environment f = without_items(env);
    for (const auto& p : env.packages)
      if (changed(package_key(env.prefix, p.name, p.manager))) f.packages.push_back(p);
    for (const auto& u : env.unowned)
      if (changed(unowned_key(env.prefix, u.path))) f.unowned.push_back(u);
    json gone_packages = json::array();
    for_each_in_scope(base, env.prefix, 'p', [&](const std::string& key, std::string_view rest) {
      if (next_index.find(key) != nullptr) return;
      auto sep = rest.find('\0');
      gone_packages.push_back(
          {{"name", std::string(rest.substr(0, sep))},
           {"manager", std::string(rest.substr(std::min(sep + 1, rest.size())))}});
    });
    json gone_files = json::array();
    for_each_in_scope(base, env.prefix, 'u', [&](const std::string& key, std::string_view rest) {
      if (next_index.find(key) == nullptr) gone_files.push_back(std::string(rest));
    });
    removed_envs.push_back({{"packages", std::move(gone_packages)}, {"unowned", gone_files}});
    fragment.environments.push_back(std::move(f));
  }
  json removed_sources = json::array();
  for (const auto& src : next.sources) {
    SourceTree f = without_items(src);
    for (const auto& file : src.files)
      if (changed(source_key(src.root, file.path))) f.files.push_back(file);
    json gone = json::array();
    for_each_in_scope(base, src.root, 's', [&](const std::string& key, std::string_view rest) {
      if (next_index.find(key) == nullptr) gone.push_back(std::string(rest));
    });
    removed_sources.push_back({{"files", std::move(gone)}});
    fragment.sources.push_back(std::move(f));
  }
  // The fragment's changed files may link to unchanged ones it does not hold.
  ENVD_TRY(auto fragment_text, fragment_to_json(fragment));
  std::string text =
      json{{"media_type", std::string(k_patch_media_type)},
           {"base", base.snapshot_digest.str()},
           {"digest", next_index.snapshot_digest.str()},
           {"removed",
            {{"environments", std::move(removed_envs)}, {"sources", std::move(removed_sources)}}}}
          .dump();
  text.pop_back();  // the closing brace: the fragment goes in as it is
  text += ",\"snapshot\":";
  text += fragment_text;
  text += "}";
  return text;
}

// --- reading and applying a patch ------------------------------------------------------------

Result<Patch> parse_patch(std::string_view text) {
  ENVD_TRY(json j, envd::json::parse(text, "snapshot patch"));
  if (!j.is_object()) return bad("", "a snapshot patch must be a JSON object");
  ENVD_TRY(auto media_type, get_text(j, "media_type", ""));
  if (media_type != k_patch_media_type)
    return bad("/media_type",
               "must be " + std::string(k_patch_media_type) + ", not \"" + media_type + "\"");
  ENVD_TRY(auto base, get_digest(j, "base", ""));
  ENVD_TRY(auto digest, get_digest(j, "digest", ""));
  Patch patch{std::move(base), std::move(digest), {}, {}, {}};
  auto snap = j.find("snapshot");
  if (snap == j.end()) return bad("/snapshot", "missing");
  ENVD_TRY(patch.fragment, parse_value(*snap, LinkCheck::per_file));
  auto removed = j.find("removed");
  if (removed == j.end() || !removed->is_object()) return bad("/removed", "must be an object");
  auto envs = removed->find("environments");
  if (envs == removed->end() || !envs->is_array() ||
      envs->size() != patch.fragment.environments.size())
    return bad("/removed/environments",
               "must be an array with one entry per environment of /snapshot");
  for (std::size_t i = 0; i < envs->size(); ++i) {
    const json& e = (*envs)[i];
    const std::string where = "/removed/environments/" + std::to_string(i);
    if (!e.is_object()) return bad(where, "must be an object");
    Patch::EnvironmentRemovals r;
    auto pkgs = e.find("packages");
    if (pkgs == e.end() || !pkgs->is_array()) return bad(where + "/packages", "must be an array");
    for (std::size_t k = 0; k < pkgs->size(); ++k) {
      const std::string at = where + "/packages/" + std::to_string(k);
      const json& p = (*pkgs)[k];
      if (!p.is_object()) return bad(at, "must be an object");
      ENVD_TRY(auto name, get_text(p, "name", at));
      ENVD_TRY(auto manager, get_text(p, "manager", at));
      if (name.empty()) return bad(at + "/name", "must not be empty");
      if (manager != "pip" && manager != "conda")
        return bad(at + "/manager", "must be \"pip\" or \"conda\"");
      r.packages.push_back(
          {name, manager == "conda" ? PackageManager::conda : PackageManager::pip});
    }
    ENVD_TRY(r.unowned, get_paths(e, "unowned", where));
    patch.removed_from_environments.push_back(std::move(r));
  }
  auto srcs = removed->find("sources");
  if (srcs == removed->end() || !srcs->is_array() || srcs->size() != patch.fragment.sources.size())
    return bad("/removed/sources", "must be an array with one entry per source tree of /snapshot");
  for (std::size_t i = 0; i < srcs->size(); ++i) {
    const std::string where = "/removed/sources/" + std::to_string(i);
    if (!(*srcs)[i].is_object()) return bad(where, "must be an object");
    ENVD_TRY(auto files, get_paths((*srcs)[i], "files", where));
    patch.removed_from_sources.push_back(std::move(files));
  }
  return patch;
}

Result<Snapshot> apply_patch(const Snapshot& base, const Patch& patch) {
  const Snapshot& f = patch.fragment;
  Snapshot out;
  out.platform = f.platform;
  out.created = f.created;
  out.host = f.host;
  out.envd_version = f.envd_version;
  for (std::size_t i = 0; i < f.environments.size(); ++i) {
    const Environment& fe = f.environments[i];
    const auto& removed = patch.removed_from_environments.at(i);
    const std::string where = "patch /removed/environments/" + std::to_string(i);
    auto be = std::find_if(base.environments.begin(), base.environments.end(),
                           [&](const Environment& e) { return e.prefix == fe.prefix; });
    if (be == base.environments.end()) {
      if (!removed.packages.empty() || !removed.unowned.empty())
        return bad(where, "removes from " + fe.prefix + ", which the base snapshot does not have");
      out.environments.push_back(fe);
      continue;
    }
    Environment e = without_items(fe);
    ENVD_TRY(e.packages, merge_packages(be->packages, fe.packages, removed.packages, where));
    ENVD_TRY(e.unowned, merge_files(be->unowned, fe.unowned, removed.unowned, where));
    out.environments.push_back(std::move(e));
  }
  for (std::size_t i = 0; i < f.sources.size(); ++i) {
    const SourceTree& fsrc = f.sources[i];
    const auto& removed = patch.removed_from_sources.at(i);
    const std::string where = "patch /removed/sources/" + std::to_string(i);
    auto bs = std::find_if(base.sources.begin(), base.sources.end(),
                           [&](const SourceTree& s) { return s.root == fsrc.root; });
    if (bs == base.sources.end()) {
      if (!removed.empty())
        return bad(where, "removes from " + fsrc.root + ", which the base snapshot does not have");
      out.sources.push_back(fsrc);
      continue;
    }
    SourceTree s = without_items(fsrc);
    ENVD_TRY(s.files, merge_files(bs->files, fsrc.files, removed, where));
    out.sources.push_back(std::move(s));
  }
  ENVD_TRY(auto digest, digest_of(out));
  if (!(digest == patch.digest))
    return bad("/digest", "the patched snapshot has digest " + digest.str() + ", not " +
                              patch.digest.str() + " (the sender's base differs from " +
                              patch.base.str() + " as stored here)");
  return out;
}

}  // namespace envd::snapshot
