// Internal to the change watcher (change_watcher.cpp): what it looks at. In an environment prefix,
// its site-packages directories and the names of package metadata; in a source tree, its git
// context and ignore rules, which decide which entries matter (as for the snapshot).
#pragma once

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "agent/ignore_pattern.hpp"

namespace envd::agent::watch_scope {

// One source tree and what decides which of its entries matter.
struct Tree {
  std::string root;
  std::string git_prefix;  // root relative to the git work tree: "" or "a/b/"; unused outside git
  bool in_git = false;
  std::string git_base_rules;                      // ~/.config/git/ignore, then .git/info/exclude
  std::string extra_rules;                         // WatchSet::extra_ignores, one per line
  std::map<std::string, std::string> gitignores;   // work-tree-relative dir -> .gitignore text
  std::map<std::string, std::string> envdignores;  // root-relative dir -> .envdignore text
  std::unordered_set<std::string> listed;          // files the snapshot captures
  std::unordered_set<std::string> listed_dirs;     // directories holding them
};

// DIR/NAME, or NAME when DIR is "".
std::string join(const std::string& dir, std::string_view name);

// A file's content (at most about 1 MiB), not following a symlink; nullopt when unreadable.
std::optional<std::string> read_small_file(const std::string& path);

// *.dist-info, *.egg-info, *.pth, *.egg-link, *.egg: what pip and setuptools leave per package.
bool is_metadata_name(std::string_view name);

// .gitignore or .envdignore.
bool is_rule_file(std::string_view name);

struct Entry {
  std::string name;
  bool dir = false;
};

// Entries of a directory without "." and "..", never following symlinks.
std::vector<Entry> list_dir(const std::string& abs);

// lib*/python*/{site,dist}-packages and lib/python3/dist-packages, each real directory once.
std::vector<std::string> site_packages_of(const std::string& prefix);

// Fills in a tree's git context: the work tree above it, info/exclude and the global excludes.
void find_git(Tree& t);

// The rules that apply to the entries of root-relative directory `dir_rel` (nullopt: only those
// from outside the tree): git's (matched against work-tree-relative paths) and envd's
// (root-relative).
void rules_for(const Tree& t, const std::optional<std::string>& dir_rel, IgnoreRules& git,
               IgnoreRules& envd);

// Whether root-relative `rel` is ignored under those rules (never a file the snapshot captures,
// nor a directory holding one).
bool ignored(const Tree& t, const IgnoreRules& git, const IgnoreRules& envd, const std::string& rel,
             bool dir);

// (Re)reads the .gitignore and .envdignore of root-relative directory `rel`.
void load_rules(Tree& t, const std::string& rel);

}  // namespace envd::agent::watch_scope
