// Comparing two snapshots: environments by prefix, packages by (name, manager), files by path;
// plus a version order good enough to tell an upgrade from a downgrade, and a one-line summary.
#include "envd/snapshot/snapshot_diff.hpp"

#include <algorithm>
#include <cctype>
#include <map>
#include <optional>
#include <set>
#include <utility>

namespace envd::snapshot {
namespace {

std::string show(bool value) {
  return value ? "true" : "false";
}

std::string show(const std::optional<std::string>& value) {
  return value ? (value->empty() ? "\"\"" : *value) : "(none)";
}

std::string show_text(const std::string& value) {
  return value.empty() ? "\"\"" : value;
}

// Appends "label old -> new" when the values differ.
template <class T>
void note(std::vector<std::string>& out, std::string_view label, const T& before, const T& after) {
  if (before == after) return;
  if constexpr (std::is_same_v<T, std::string>) {
    out.push_back(std::string(label) + " " + show_text(before) + " -> " + show_text(after));
  } else {
    out.push_back(std::string(label) + " " + show(before) + " -> " + show(after));
  }
}

// Files by path. Snapshots keep them sorted and unique, but diff must not depend on it.
std::map<std::string_view, const FileEntry*> by_path(const std::vector<FileEntry>& files) {
  std::map<std::string_view, const FileEntry*> out;
  for (const FileEntry& f : files) out.emplace(f.path, &f);
  return out;
}

FileChanges diff_files(const std::vector<FileEntry>& before, const std::vector<FileEntry>& after) {
  FileChanges out;
  const auto old_files = by_path(before);
  const auto new_files = by_path(after);
  auto o = old_files.begin();
  auto n = new_files.begin();
  while (o != old_files.end() || n != new_files.end()) {
    if (n == new_files.end() || (o != old_files.end() && o->first < n->first)) {
      out.removed.emplace_back(o->first);
      ++o;
    } else if (o == old_files.end() || n->first < o->first) {
      out.added.emplace_back(n->first);
      ++n;
    } else {
      if (!(*o->second == *n->second)) out.modified.emplace_back(n->first);
      ++o;
      ++n;
    }
  }
  return out;
}

FileChanges all_files(const std::vector<FileEntry>& files, Presence presence) {
  FileChanges out;
  auto& list = presence == Presence::added ? out.added : out.removed;
  for (const auto& [path, entry] : by_path(files)) list.emplace_back(path);
  return out;
}

// Key of a package: (name, manager, occurrence). The occurrence keeps a duplicate entry (which a
// valid snapshot never has) from hiding another.
using PackageKey = std::tuple<std::string_view, PackageManager, int>;

std::map<PackageKey, const Package*> by_key(const std::vector<Package>& packages) {
  std::map<PackageKey, const Package*> out;
  for (const Package& p : packages) {
    int occurrence = 0;
    while (!out.emplace(PackageKey{p.name, p.manager, occurrence}, &p).second) ++occurrence;
  }
  return out;
}

PackageRef ref_of(const Package& p) {
  return PackageRef{p.name, p.manager, p.version, p.build};
}

std::string joined(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ",") + item;
  return "[" + out + "]";
}

PackageChange compare_package(const Package& before, const Package& after) {
  PackageChange change{after.name, after.manager, after.version, {}, {}};
  change.files = diff_files(before.files, after.files);
  auto& fields = change.fields;
  note(fields, "channel", before.channel, after.channel);
  note(fields, "subdir", before.subdir, after.subdir);
  note(fields, "installer", before.installer, after.installer);
  note(fields, "requested", before.requested, after.requested);
  note(fields, "direct_url", before.direct_url, after.direct_url);
  note(fields, "editable_root", before.editable_root, after.editable_root);
  if (before.modified != after.modified) {
    fields.push_back("modified " + joined(before.modified) + " -> " + joined(after.modified));
  }
  std::sort(fields.begin(), fields.end());
  return change;
}

void compare_packages(const Environment& before, const Environment& after, EnvironmentDiff& out) {
  const auto old_packages = by_key(before.packages);
  const auto new_packages = by_key(after.packages);
  for (const auto& [key, p] : old_packages) {
    if (!new_packages.contains(key)) out.removed.push_back(ref_of(*p));
  }
  for (const auto& [key, p] : new_packages) {
    auto it = old_packages.find(key);
    if (it == old_packages.end()) {
      out.added.push_back(ref_of(*p));
      continue;
    }
    const Package& old = *it->second;
    if (old.version != p->version || old.build != p->build) {
      VersionChange change{p->name, p->manager, old.version, p->version, old.build, p->build};
      (compare_versions(old.version, p->version) > 0 ? out.downgraded : out.upgraded)
          .push_back(std::move(change));
      continue;
    }
    if (old == *p) continue;
    PackageChange change = compare_package(old, *p);
    if (change.files.empty() && change.fields.empty()) continue;
    out.changed.push_back(std::move(change));
  }
}

EnvironmentDiff one_sided(const Environment& env, Presence presence) {
  EnvironmentDiff out;
  out.prefix = env.prefix;
  out.kind = env.kind;
  out.presence = presence;
  auto& list = presence == Presence::added ? out.added : out.removed;
  for (const auto& [key, p] : by_key(env.packages)) list.push_back(ref_of(*p));
  out.unowned = all_files(env.unowned, presence);
  return out;
}

EnvironmentDiff compare_environment(const Environment& before, const Environment& after) {
  EnvironmentDiff out;
  out.prefix = after.prefix;
  out.kind = after.kind;
  compare_packages(before, after, out);
  out.unowned = diff_files(before.unowned, after.unowned);
  auto& other = out.other;
  if (before.kind != after.kind) {
    other.push_back("kind " + std::string(to_string(before.kind)) + " -> " +
                    std::string(to_string(after.kind)));
  }
  note(other, "name", before.name, after.name);
  note(other, "python_version", before.python_version, after.python_version);
  note(other, "base_prefix", before.base_prefix, after.base_prefix);
  note(other, "system_site_packages", before.system_site_packages, after.system_site_packages);
  note(other, "partial", before.partial, after.partial);
  std::sort(other.begin(), other.end());
  return out;
}

SourceDiff compare_source(const SourceTree& before, const SourceTree& after) {
  SourceDiff out;
  out.root = after.root;
  out.role = after.role;
  out.files = diff_files(before.files, after.files);
  auto& other = out.other;
  if (before.role != after.role) {
    other.push_back("role " + std::string(to_string(before.role)) + " -> " +
                    std::string(to_string(after.role)));
  }
  note(other, "git_commit", before.git_commit, after.git_commit);
  note(other, "dirty", before.dirty, after.dirty);
  std::set<std::string> origins;
  for (const auto& [origin, n] : before.ignored) origins.insert(origin);
  for (const auto& [origin, n] : after.ignored) origins.insert(origin);
  for (const auto& origin : origins) {
    auto count = [&](const SourceTree& t) {
      auto it = t.ignored.find(origin);
      return it == t.ignored.end() ? std::uint64_t{0} : it->second;
    };
    if (count(before) != count(after)) {
      other.push_back("ignored by " + origin + " " + std::to_string(count(before)) + " -> " +
                      std::to_string(count(after)) + " entries");
    }
  }
  std::sort(other.begin(), other.end());
  return out;
}

// A version as tokens: numbers, and lowercased words; separators dropped.
struct Token {
  bool number = false;
  std::string text;  // digits without leading zeros ("0" for zero), or the word
};

std::vector<Token> tokenize(std::string_view v) {
  std::vector<Token> out;
  std::size_t i = 0;
  // A leading "v" ("v1.2") is no word.
  if (!v.empty() && (v[0] == 'v' || v[0] == 'V') && v.size() > 1 &&
      std::isdigit(static_cast<unsigned char>(v[1]))) {
    i = 1;
  }
  while (i < v.size()) {
    const auto c = static_cast<unsigned char>(v[i]);
    if (std::isdigit(c)) {
      std::size_t j = i;
      while (j < v.size() && std::isdigit(static_cast<unsigned char>(v[j]))) ++j;
      std::string digits(v.substr(i, j - i));
      digits.erase(0, std::min(digits.find_first_not_of('0'), digits.size() - 1));
      out.push_back({true, std::move(digits)});
      i = j;
    } else if (std::isalpha(c)) {
      std::size_t j = i;
      std::string word;
      while (j < v.size() && std::isalpha(static_cast<unsigned char>(v[j]))) {
        word += static_cast<char>(std::tolower(static_cast<unsigned char>(v[j])));
        ++j;
      }
      // PEP 440's spellings of the same thing.
      if (word == "alpha") word = "a";
      if (word == "beta") word = "b";
      if (word == "c" || word == "pre" || word == "preview") word = "rc";
      if (word == "r" || word == "rev") word = "post";
      out.push_back({false, std::move(word)});
      i = j;
    } else {
      ++i;
    }
  }
  return out;
}

// Pre-release words sort before the release (rank < 0), post-release words after it (> 0); any
// other word (a local version label, say) counts as after the release too.
int word_rank(const std::string& w) {
  if (w == "dev") return -4;
  if (w == "a") return -3;
  if (w == "b") return -2;
  if (w == "rc") return -1;
  if (w == "post") return 2;
  return 1;
}

int compare_numbers(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return a.size() < b.size() ? -1 : 1;
  return a.compare(b) < 0 ? -1 : (a == b ? 0 : 1);
}

// The sign of what remains of the longer version, against nothing.
int compare_rest(const std::vector<Token>& rest, std::size_t from) {
  for (std::size_t i = from; i < rest.size(); ++i) {
    if (rest[i].number) {
      if (rest[i].text != "0") return 1;
      continue;
    }
    return word_rank(rest[i].text) < 0 ? -1 : 1;
  }
  return 0;
}

}  // namespace

std::string_view to_string(Presence presence) {
  switch (presence) {
    case Presence::both:
      return "changed";
    case Presence::added:
      return "added";
    case Presence::removed:
      return "removed";
  }
  return "changed";
}

bool EnvironmentDiff::empty() const {
  return presence == Presence::both && added.empty() && removed.empty() && upgraded.empty() &&
         downgraded.empty() && changed.empty() && unowned.empty() && other.empty();
}

bool SourceDiff::empty() const {
  return presence == Presence::both && files.empty() && other.empty();
}

int compare_versions(std::string_view a, std::string_view b) {
  const auto ta = tokenize(a);
  const auto tb = tokenize(b);
  const std::size_t n = std::min(ta.size(), tb.size());
  for (std::size_t i = 0; i < n; ++i) {
    const Token& x = ta[i];
    const Token& y = tb[i];
    if (x.number && y.number) {
      if (int c = compare_numbers(x.text, y.text); c != 0) return c;
    } else if (!x.number && !y.number) {
      const int rx = word_rank(x.text);
      const int ry = word_rank(y.text);
      if (rx != ry) return rx < ry ? -1 : 1;
      if (int c = x.text.compare(y.text); c != 0) return c < 0 ? -1 : 1;
    } else {
      // "1.0.1" against "1.0rc1" or "1.0.post1": a number is a further release component,
      // later than a pre-release and than a post-release of the shorter release.
      return x.number ? 1 : -1;
    }
  }
  if (ta.size() == tb.size()) return 0;
  return ta.size() > tb.size() ? compare_rest(ta, n) : -compare_rest(tb, n);
}

SnapshotDiff diff_snapshots(const Snapshot& before, const Snapshot& after) {
  SnapshotDiff out;
  note(out.other, "platform.os", before.platform.os, after.platform.os);
  note(out.other, "platform.arch", before.platform.arch, after.platform.arch);
  note(out.other, "platform.libc", before.platform.libc, after.platform.libc);

  std::map<std::string_view, const Environment*> old_envs;
  for (const Environment& env : before.environments) old_envs.emplace(env.prefix, &env);
  std::set<std::string_view> seen;
  for (const Environment& env : after.environments) {
    if (!seen.insert(env.prefix).second) continue;
    auto it = old_envs.find(env.prefix);
    EnvironmentDiff d = it == old_envs.end() ? one_sided(env, Presence::added)
                                             : compare_environment(*it->second, env);
    if (!d.empty()) out.environments.push_back(std::move(d));
  }
  for (const Environment& env : before.environments) {
    if (!seen.insert(env.prefix).second) continue;
    out.environments.push_back(one_sided(env, Presence::removed));
  }
  // The primary environment is the first: the same set in another order builds another image.
  auto order = [](const Snapshot& of, const Snapshot& within) {
    std::set<std::string_view> present;
    for (const Environment& env : within.environments) present.insert(env.prefix);
    std::vector<std::string_view> prefixes;
    for (const Environment& env : of.environments)
      if (present.contains(env.prefix)) prefixes.push_back(env.prefix);
    return prefixes;
  };
  if (order(before, after) != order(after, before)) {
    out.other.push_back("environment order changed");
  }

  std::map<std::string_view, const SourceTree*> old_sources;
  std::map<std::string_view, const SourceTree*> new_sources;
  for (const SourceTree& s : before.sources) old_sources.emplace(s.root, &s);
  for (const SourceTree& s : after.sources) new_sources.emplace(s.root, &s);
  std::set<std::string_view> roots;
  for (const auto& [root, s] : old_sources) roots.insert(root);
  for (const auto& [root, s] : new_sources) roots.insert(root);
  for (std::string_view root : roots) {
    auto o = old_sources.find(root);
    auto n = new_sources.find(root);
    SourceDiff d;
    if (o == old_sources.end() || n == new_sources.end()) {
      const SourceTree& tree = o == old_sources.end() ? *n->second : *o->second;
      d.root = tree.root;
      d.role = tree.role;
      d.presence = o == old_sources.end() ? Presence::added : Presence::removed;
      d.files = all_files(tree.files, d.presence);
    } else {
      d = compare_source(*o->second, *n->second);
    }
    if (!d.empty()) out.sources.push_back(std::move(d));
  }
  return out;
}

std::string summary_line(const SnapshotDiff& diff, std::size_t max_items) {
  std::vector<std::string> items;
  const bool many_envs = diff.environments.size() > 1;
  auto files = [](std::size_t n) { return std::to_string(n) + (n == 1 ? " file" : " files"); };
  auto with_build = [](const std::string& version, const std::string& build) {
    return build.empty() ? version : version + " (" + build + ")";
  };
  for (const auto& env : diff.environments) {
    const std::string where = many_envs ? env.prefix + ": " : "";
    if (env.presence != Presence::both) {
      const auto n = env.presence == Presence::added ? env.added.size() : env.removed.size();
      items.push_back((env.presence == Presence::added ? "+environment " : "-environment ") +
                      env.prefix + " (" + std::to_string(n) + " packages)");
      continue;
    }
    for (const auto& p : env.added) items.push_back(where + "+" + p.name + " " + p.version);
    for (const auto& p : env.removed) items.push_back(where + "-" + p.name + " " + p.version);
    for (const auto* list : {&env.upgraded, &env.downgraded}) {
      for (const auto& c : *list) {
        const bool rebuild = c.old_version == c.new_version;
        items.push_back(where + c.name + " " +
                        (rebuild ? with_build(c.old_version, c.old_build) : c.old_version) +
                        " -> " +
                        (rebuild ? with_build(c.new_version, c.new_build) : c.new_version));
      }
    }
    for (const auto& c : env.changed) {
      std::string what = c.files.empty() ? "metadata" : files(c.files.count());
      items.push_back(where + "~" + c.name + " (" + what + ")");
    }
    if (!env.unowned.empty()) items.push_back(where + "unowned: " + files(env.unowned.count()));
    for (const auto& o : env.other) items.push_back(where + o);
  }
  for (const auto& src : diff.sources) {
    std::string label = std::string(to_string(src.role));
    if (src.role == SourceRole::editable || diff.sources.size() > 1) label += " " + src.root;
    if (src.presence != Presence::both) {
      items.push_back((src.presence == Presence::added ? "+" : "-") + label + " (" +
                      files(src.files.count()) + ")");
      continue;
    }
    if (!src.files.empty()) items.push_back(label + ": " + files(src.files.count()));
    for (const auto& o : src.other) items.push_back(label + " " + o);
  }
  for (const auto& o : diff.other) items.push_back(o);
  if (items.empty()) return "no changes";
  std::string out;
  const std::size_t shown = std::min(items.size(), std::max<std::size_t>(max_items, 1));
  for (std::size_t i = 0; i < shown; ++i) out += (i == 0 ? "" : ", ") + items[i];
  if (shown < items.size()) out += " and " + std::to_string(items.size() - shown) + " more";
  return out;
}

}  // namespace envd::snapshot
