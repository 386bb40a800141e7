// Layer planning (see layer_plan.hpp). Order of layers in the image: base interpreters, then per
// environment its unowned files, its own-layer packages by name, its groups by index; then source
// trees by root. Lower layers change least often, which is what registries and caches reward.
#include "builder/layer_plan.hpp"

#include <algorithm>
#include <map>

namespace envd::builder {
namespace {

// Bump when the tar layout written for the same entries changes, so cached layers are rebuilt.
constexpr std::string_view k_format = "envd-layer-v1";

struct Unit {
  std::string name;
  std::vector<LayerEntry> entries;
  std::uint64_t bytes = 0;
};

std::string image_path(const std::string& root, const std::string& rel) {
  // Roots are absolute and normalised; inside the image the path has no leading '/'.
  std::string out = root == "/" ? std::string() : root.substr(1) + "/";
  return out + rel;
}

void add_files(Unit& unit, const std::string& root, const std::vector<snapshot::FileEntry>& files) {
  for (const auto& f : files) {
    LayerEntry e;
    e.path = image_path(root, f.path);
    e.type = f.type;
    e.mode = f.mode;
    e.size = f.size;
    e.digest = f.digest;
    e.target = f.target;
    e.source = root == "/" ? "/" + f.path : root + "/" + f.path;
    unit.bytes += f.size;
    unit.entries.push_back(std::move(e));
  }
}

std::uint64_t stable_hash(std::string_view s) {
  // FNV-1a: stable across machines and runs, unlike std::hash.
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

PlannedLayer finish(std::string name, std::vector<Unit*> units) {
  PlannedLayer layer;
  layer.name = std::move(name);
  for (auto* u : units) {
    layer.bytes += u->bytes;
    std::move(u->entries.begin(), u->entries.end(), std::back_inserter(layer.entries));
  }
  std::sort(layer.entries.begin(), layer.entries.end(),
            [](const LayerEntry& a, const LayerEntry& b) { return a.path < b.path; });
  // A path can come twice only from nested roots (an environment inside another's prefix); a tar
  // must not hold it twice, and the first unit's copy is as good as the other's.
  layer.entries.erase(
      std::unique(layer.entries.begin(), layer.entries.end(),
                  [](const LayerEntry& a, const LayerEntry& b) { return a.path == b.path; }),
      layer.entries.end());
  layer.key = layer_key(layer.entries, k_format);
  return layer;
}

}  // namespace

oci::Digest layer_key(const std::vector<LayerEntry>& entries, std::string_view format) {
  oci::Sha256 h;
  h.update(format);
  h.update("\n", 1);
  for (const auto& e : entries) {
    h.update(e.path);
    h.update("\0", 1);
    char meta[32];
    int n = std::snprintf(meta, sizeof meta, "%d %o ",
                          e.type == snapshot::FileType::regular ? 0 : 1, e.mode);
    h.update(meta, static_cast<std::size_t>(n));
    if (e.type == snapshot::FileType::regular) {
      h.update(e.digest ? e.digest->view() : std::string_view());
    } else {
      h.update(e.target);
    }
    h.update("\n", 1);
  }
  return h.finish();
}

std::vector<PlannedLayer> plan_layers(const snapshot::Snapshot& snap, const PlanOptions& options) {
  // Units per environment, in environment order (partial base interpreters first).
  struct EnvUnits {
    Unit unowned;
    std::vector<Unit> packages;
  };
  std::vector<const snapshot::Environment*> envs;
  for (const auto& e : snap.environments) envs.push_back(&e);
  std::stable_sort(envs.begin(), envs.end(),
                   [](const auto* a, const auto* b) { return a->partial > b->partial; });
  std::vector<EnvUnits> per_env(envs.size());
  std::vector<Unit> sources(snap.sources.size());
  for (std::size_t i = 0; i < envs.size(); ++i) {
    const auto& env = *envs[i];
    per_env[i].unowned.name = "unowned:" + env.prefix;
    add_files(per_env[i].unowned, env.prefix, env.unowned);
    for (const auto& p : env.packages) {
      Unit u;
      u.name =
          "pkg:" + env.prefix + ":" + std::string(snapshot::to_string(p.manager)) + ":" + p.name;
      add_files(u, env.prefix, p.files);
      per_env[i].packages.push_back(std::move(u));
    }
  }
  for (std::size_t i = 0; i < snap.sources.size(); ++i) {
    sources[i].name = "src:" + snap.sources[i].root;
    add_files(sources[i], snap.sources[i].root, snap.sources[i].files);
  }

  // Fixed layers: one unowned layer per environment, one per source tree, and the groups. The
  // rest of the cap goes to the largest packages at or above the threshold.
  std::size_t fixed = envs.size() + sources.size() + 1 /* snapshot document */;
  std::size_t groups =
      std::min(options.groups, options.layer_cap > fixed + 1 ? options.layer_cap - fixed - 1 : 1);
  std::size_t own_budget =
      options.layer_cap > fixed + groups ? options.layer_cap - fixed - groups : 0;
  std::vector<Unit*> candidates;
  for (auto& e : per_env)
    for (auto& u : e.packages)
      if (u.bytes >= options.own_layer_bytes) candidates.push_back(&u);
  std::sort(candidates.begin(), candidates.end(), [](const Unit* a, const Unit* b) {
    return a->bytes != b->bytes ? a->bytes > b->bytes : a->name < b->name;
  });
  if (candidates.size() > own_budget) candidates.resize(own_budget);
  std::map<const Unit*, bool> own;
  for (auto* u : candidates) own[u] = true;

  std::vector<PlannedLayer> layers;
  for (auto& e : per_env) {
    if (!e.unowned.entries.empty()) layers.push_back(finish(e.unowned.name, {&e.unowned}));
  }
  std::vector<Unit*> own_units;
  std::map<std::size_t, std::vector<Unit*>> grouped;
  for (auto& e : per_env) {
    for (auto& u : e.packages) {
      if (u.entries.empty()) continue;
      if (own.count(&u) != 0) {
        own_units.push_back(&u);
      } else {
        grouped[stable_hash(u.name) % groups].push_back(&u);
      }
    }
  }
  std::sort(own_units.begin(), own_units.end(),
            [](const Unit* a, const Unit* b) { return a->name < b->name; });
  for (auto* u : own_units) layers.push_back(finish(u->name, {u}));
  for (auto& [index, units] : grouped)
    layers.push_back(finish("group:" + std::to_string(index), units));
  for (auto& s : sources) {
    if (!s.entries.empty()) layers.push_back(finish(s.name, {&s}));
  }
  return layers;
}

}  // namespace envd::builder
