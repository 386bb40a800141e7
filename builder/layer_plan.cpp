// Layer planning (see layer_plan.hpp). Order of layers in the image: base interpreters, then per
// environment its unowned files, its own-layer packages by name, its groups by index; then source
// trees by root; the parts of a split unit in a row. Lower layers change least often, which is
// what registries and caches reward.
#include "builder/layer_plan.hpp"

#include <algorithm>
#include <bit>
#include <map>
#include <set>
#include <unordered_map>
#include <unordered_set>

namespace envd::builder {
namespace {

struct Unit {
  std::string name;
  const std::string* root = nullptr;
  const std::vector<snapshot::FileEntry>* files = nullptr;
  std::uint64_t bytes = 0;
};

Unit make_unit(std::string name, const std::string& root,
               const std::vector<snapshot::FileEntry>& files) {
  Unit u{std::move(name), &root, &files, 0};
  for (const auto& f : files) u.bytes += f.size;
  return u;
}

std::string image_prefix(const std::string& root) {
  // Roots are absolute and normalised; inside the image the path has no leading '/'.
  return root == "/" ? std::string() : root.substr(1) + "/";
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

// Compares a1+a2 with b1+b2 byte by byte (as std::string::compare does), without joining them:
// an image path is its root's prefix followed by the file's path in the snapshot.
int compare_joined(std::string_view a1, std::string_view a2, std::string_view b1,
                   std::string_view b2) {
  std::string_view a[2] = {a1, a2};
  std::string_view b[2] = {b1, b2};
  std::size_t i = 0;
  std::size_t j = 0;
  for (;;) {
    while (i < 2 && a[i].empty()) ++i;
    while (j < 2 && b[j].empty()) ++j;
    if (i == 2 || j == 2) return (i == 2 ? 0 : 1) - (j == 2 ? 0 : 1);
    std::size_t n = std::min(a[i].size(), b[j].size());
    if (int c = a[i].substr(0, n).compare(b[j].substr(0, n)); c != 0) return c;
    a[i].remove_prefix(n);
    b[j].remove_prefix(n);
  }
}

// What the key hashes for one entry, the image path and the link given in two parts; layer_key
// and the plan both use it, so a planned layer's key equals the key of its materialised entries.
// A hard link adds "\0<image path of the link>" after the digest, only when set: the keys of
// layers without links are those from before links existed, and so are their layers.
void hash_entry(oci::Sha256& h, std::string_view prefix, std::string_view path,
                snapshot::FileType type, std::uint32_t mode,
                const std::optional<oci::Digest>& digest, std::string_view target,
                std::string_view link_prefix, std::string_view link) {
  h.update(prefix);
  h.update(path);
  h.update("\0", 1);
  // "<0 regular | 1 other> <mode in octal> ", as printf("%d %o ") writes it.
  char meta[16];
  char* end = meta + sizeof meta;
  char* p = end;
  *--p = ' ';
  std::uint32_t m = mode;
  do {
    *--p = static_cast<char>('0' + (m & 7));
    m >>= 3;
  } while (m != 0);
  *--p = ' ';
  *--p = type == snapshot::FileType::regular ? '0' : '1';
  h.update(p, static_cast<std::size_t>(end - p));
  if (type == snapshot::FileType::regular) {
    h.update(digest ? digest->view() : std::string_view());
    if (!link.empty()) {
      h.update("\0", 1);
      h.update(link_prefix);
      h.update(link);
    }
  } else {
    h.update(target);
  }
  h.update("\n", 1);
}

std::string_view dir_of(std::string_view path) {
  std::size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? std::string_view() : path.substr(0, slash);
}

// How a split unit's files are spread over its parts. Each directory goes whole to the part a
// hash of its path picks, so that a directory is created once on a node, not once per part, and
// similar files stay side by side in one compressed stream; a directory heavier than half a part
// (a Python prefix's test/__pycache__: 2,000 files, 76 MB) is spread by the start of each name up
// to the first '.', which keeps "m.cpython-311.pyc" next to "m.cpython-311.opt-1.pyc" (spread
// file by file, the parts of that prefix compressed 40% bigger and held 3x the directories). A
// hard link goes by its group's first member, so that the group is in one part.
class Spread {
 public:
  Spread() = default;
  Spread(const std::vector<snapshot::FileEntry>& files, std::size_t parts,
         const PlanOptions& options)
      : m_parts(parts) {
    std::unordered_map<std::string_view, std::uint64_t> weight;
    for (const auto& f : files) weight[dir_of(f.path)] += f.size + options.file_weight;
    for (const auto& [dir, w] : weight)
      if (w > options.part_bytes / 2) m_heavy.insert(dir);
  }

  std::size_t parts() const { return m_parts; }

  std::size_t part_of(const snapshot::FileEntry& f) const {
    std::string_view path = f.link.empty() ? f.path : f.link;
    std::string_view dir = dir_of(path);
    if (m_heavy.count(dir) == 0) return stable_hash(dir) % m_parts;
    std::size_t name = dir.empty() ? 0 : dir.size() + 1;
    return stable_hash(path.substr(0, path.find('.', name))) % m_parts;
  }

 private:
  std::size_t m_parts = 1;
  std::unordered_set<std::string_view> m_heavy;  // directories spread by name
};

// A layer of the files of `units`, or of those that `spread` puts in part `part`.
PlannedLayer finish(std::string name, const std::vector<const Unit*>& units,
                    const Spread& spread = {}, std::size_t part = 0) {
  PlannedLayer layer;
  layer.name = std::move(name);
  if (spread.parts() > 1)
    layer.name += " part " + std::to_string(part + 1) + "/" + std::to_string(spread.parts());
  std::size_t count = 0;
  for (const auto* u : units) count += u->files->size();
  layer.files.reserve(spread.parts() == 1 ? count : count / spread.parts() * 2);
  bool sorted = units.size() == 1;
  for (const auto* u : units) {
    std::uint32_t root = 0;
    while (root < layer.roots.size() && layer.roots[root].root != *u->root) ++root;
    if (root == layer.roots.size()) layer.roots.push_back({*u->root, image_prefix(*u->root)});
    if (spread.parts() == 1) {
      layer.bytes += u->bytes;
      for (const auto& f : *u->files) layer.files.push_back({&f, root});
      continue;
    }
    for (const auto& f : *u->files) {
      if (spread.part_of(f) != part) continue;
      layer.bytes += f.size;
      layer.files.push_back({&f, root});
    }
  }
  auto compare = [&](const PlannedFile& a, const PlannedFile& b) {
    if (a.root == b.root) return a.file->path.compare(b.file->path);
    return compare_joined(layer.roots[a.root].image_prefix, a.file->path,
                          layer.roots[b.root].image_prefix, b.file->path);
  };
  auto less = [&](const PlannedFile& a, const PlannedFile& b) { return compare(a, b) < 0; };
  // A snapshot keeps each file list sorted: a layer of one unit is usually in order already.
  if (!sorted || !std::is_sorted(layer.files.begin(), layer.files.end(), less))
    std::stable_sort(layer.files.begin(), layer.files.end(), less);
  // A path can come twice only from nested roots (an environment inside another's prefix); a tar
  // must not hold it twice, and the first unit's copy is as good as the other's.
  layer.files.erase(
      std::unique(layer.files.begin(), layer.files.end(),
                  [&](const PlannedFile& a, const PlannedFile& b) { return compare(a, b) == 0; }),
      layer.files.end());
  oci::Sha256 h;
  h.update(k_layer_format);
  h.update("\n", 1);
  for (const auto& pf : layer.files) {
    const auto& f = *pf.file;
    const std::string& prefix = layer.roots[pf.root].image_prefix;
    hash_entry(h, prefix, f.path, f.type, f.mode, f.digest, f.target, prefix, f.link);
  }
  layer.key = h.finish();
  return layer;
}

}  // namespace

std::vector<LayerEntry> PlannedLayer::entries() const {
  std::vector<LayerEntry> out;
  out.reserve(files.size());
  for (const auto& pf : files) {
    const auto& f = *pf.file;
    const auto& root = roots[pf.root];
    LayerEntry e;
    e.path.reserve(root.image_prefix.size() + f.path.size());
    e.path.append(root.image_prefix).append(f.path);
    e.type = f.type;
    e.mode = f.mode;
    e.size = f.size;
    e.digest = f.digest;
    e.target = f.target;
    if (!f.link.empty()) e.link = root.image_prefix + f.link;
    e.source = root.root == "/" ? "/" + f.path : root.root + "/" + f.path;
    out.push_back(std::move(e));
  }
  return out;
}

oci::Digest layer_key(const std::vector<LayerEntry>& entries, std::string_view format) {
  oci::Sha256 h;
  h.update(format);
  h.update("\n", 1);
  for (const auto& e : entries)
    hash_entry(h, {}, e.path, e.type, e.mode, e.digest, e.target, {}, e.link);
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
  std::vector<Unit> sources;
  for (std::size_t i = 0; i < envs.size(); ++i) {
    const auto& env = *envs[i];
    per_env[i].unowned = make_unit("unowned:" + env.prefix, env.prefix, env.unowned);
    per_env[i].packages.reserve(env.packages.size());
    for (const auto& p : env.packages) {
      per_env[i].packages.push_back(make_unit(
          "pkg:" + env.prefix + ":" + std::string(snapshot::to_string(p.manager)) + ":" + p.name,
          env.prefix, p.files));
    }
  }
  for (const auto& s : snap.sources) sources.push_back(make_unit("src:" + s.root, s.root, s.files));

  // Fixed layers: one unowned layer per environment, one per source tree, and the groups. The
  // rest of the cap goes to the largest packages at or above the threshold.
  std::size_t fixed = envs.size() + sources.size() + 1 /* snapshot document */;
  std::size_t groups =
      std::min(options.groups, options.layer_cap > fixed + 1 ? options.layer_cap - fixed - 1 : 1);
  std::size_t own_budget =
      options.layer_cap > fixed + groups ? options.layer_cap - fixed - groups : 0;
  auto weight = [&](const Unit* u) { return u->bytes + u->files->size() * options.file_weight; };
  std::vector<const Unit*> candidates;
  for (auto& e : per_env)
    for (auto& u : e.packages)
      if (weight(&u) >= options.own_layer_bytes) candidates.push_back(&u);
  std::sort(candidates.begin(), candidates.end(), [&](const Unit* a, const Unit* b) {
    return weight(a) != weight(b) ? weight(a) > weight(b) : a->name < b->name;
  });
  if (candidates.size() > own_budget) candidates.resize(own_budget);
  std::set<const Unit*> own(candidates.begin(), candidates.end());

  // The units with a layer of their own, in image order, and the groups after their packages.
  std::vector<const Unit*> solo;
  for (auto& e : per_env)
    if (!e.unowned.files->empty()) solo.push_back(&e.unowned);
  std::vector<const Unit*> own_units;
  std::map<std::size_t, std::vector<const Unit*>> grouped;
  for (auto& e : per_env) {
    for (auto& u : e.packages) {
      if (u.files->empty()) continue;
      if (own.count(&u) != 0) {
        own_units.push_back(&u);
      } else {
        grouped[stable_hash(u.name) % groups].push_back(&u);
      }
    }
  }
  std::sort(own_units.begin(), own_units.end(),
            [](const Unit* a, const Unit* b) { return a->name < b->name; });
  solo.insert(solo.end(), own_units.begin(), own_units.end());
  std::size_t sources_from = solo.size();
  for (auto& s : sources)
    if (!s.files->empty()) solo.push_back(&s);

  // Parts per solo unit; while they would pass the cap, the unit with the most (the first of
  // them) gets half as many.
  std::vector<std::size_t> parts(solo.size(), 1);
  std::size_t total = solo.size() + grouped.size() + 1 /* snapshot document */;
  for (std::size_t i = 0; i < solo.size(); ++i) {
    if (options.part_bytes == 0 || options.max_parts <= 1) break;
    std::uint64_t n =
        std::clamp<std::uint64_t>(weight(solo[i]) / options.part_bytes, 1, options.max_parts);
    parts[i] = std::bit_floor(n);
    total += parts[i] - 1;
  }
  while (total > options.layer_cap) {
    auto most = std::max_element(parts.begin(), parts.end());
    if (most == parts.end() || *most == 1) break;
    total -= *most / 2;
    *most /= 2;
  }

  std::vector<PlannedLayer> layers;
  auto add_solo = [&](std::size_t i) {
    Spread spread;
    if (parts[i] > 1) spread = Spread(*solo[i]->files, parts[i], options);
    for (std::size_t k = 0; k < parts[i]; ++k) {
      auto layer = finish(solo[i]->name, {solo[i]}, spread, k);
      if (!layer.files.empty()) layers.push_back(std::move(layer));  // a few huge files: gaps
    }
  };
  for (std::size_t i = 0; i < sources_from; ++i) add_solo(i);
  for (auto& [index, units] : grouped)
    layers.push_back(finish("group:" + std::to_string(index), units));
  for (std::size_t i = sources_from; i < solo.size(); ++i) add_solo(i);
  return layers;
}

}  // namespace envd::builder
