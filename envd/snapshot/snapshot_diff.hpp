// What changed between two snapshots (for `envd diff` and `envd watch`'s log line): packages
// added, removed, upgraded or downgraded, packages whose files changed at the same version, files
// owned by no package, source files, and any other field that moves the snapshot digest.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "envd/snapshot/snapshot.hpp"

namespace envd::snapshot {

// Paths (relative to their root) that appeared, disappeared or changed (content, size, mode,
// type, symlink target or hard link), each list sorted.
struct FileChanges {
  std::vector<std::string> added;
  std::vector<std::string> removed;
  std::vector<std::string> modified;

  bool empty() const { return added.empty() && removed.empty() && modified.empty(); }
  std::size_t count() const { return added.size() + removed.size() + modified.size(); }
  friend bool operator==(const FileChanges&, const FileChanges&) = default;
};

// A package present on one side only.
struct PackageRef {
  std::string name;
  PackageManager manager = PackageManager::pip;
  std::string version;
  std::string build;  // conda build string; empty for pip

  friend bool operator==(const PackageRef&, const PackageRef&) = default;
};

// The same package (name and manager) at another version or build.
struct VersionChange {
  std::string name;
  PackageManager manager = PackageManager::pip;
  std::string old_version;
  std::string new_version;
  std::string old_build;
  std::string new_build;

  friend bool operator==(const VersionChange&, const VersionChange&) = default;
};

// The same package at the same version and build whose files or metadata changed (an edited
// installed file, a re-install from another source, an editable install moved).
struct PackageChange {
  std::string name;
  PackageManager manager = PackageManager::pip;
  std::string version;
  FileChanges files;
  std::vector<std::string> fields;  // changed metadata, e.g. "installer pip -> uv", sorted

  friend bool operator==(const PackageChange&, const PackageChange&) = default;
};

// Whether an environment or source tree is on both sides or one.
enum class Presence { both, added, removed };
std::string_view to_string(Presence presence);

struct EnvironmentDiff {
  std::string prefix;
  EnvironmentKind kind = EnvironmentKind::prefix;  // of the newer side when on both
  Presence presence = Presence::both;
  // Packages, each list sorted by (name, manager). An added or removed environment lists all of
  // its packages as added or removed.
  std::vector<PackageRef> added;
  std::vector<PackageRef> removed;
  std::vector<VersionChange> upgraded;    // newer version, or same version with another build
  std::vector<VersionChange> downgraded;  // older version (see compare_versions)
  std::vector<PackageChange> changed;
  FileChanges unowned;
  // Other changes to the environment, e.g. "python_version 3.11.7 -> 3.11.8", sorted.
  std::vector<std::string> other;

  bool empty() const;
  friend bool operator==(const EnvironmentDiff&, const EnvironmentDiff&) = default;
};

struct SourceDiff {
  std::string root;
  SourceRole role = SourceRole::src;  // of the newer side when on both
  Presence presence = Presence::both;
  FileChanges files;  // an added or removed tree lists all of its files as added or removed
  // Other changes, e.g. "git_commit 1a2b3c4 -> 5d6e7f8", "dirty false -> true", sorted.
  std::vector<std::string> other;

  bool empty() const;
  friend bool operator==(const SourceDiff&, const SourceDiff&) = default;
};

// Only environments and source trees that differ are listed: environments in the newer
// snapshot's order, then removed ones in the older order; sources sorted by root.
struct SnapshotDiff {
  std::vector<EnvironmentDiff> environments;
  std::vector<SourceDiff> sources;
  std::vector<std::string> other;  // e.g. "platform.libc glibc 2.36 -> glibc 2.37"

  // True when the two snapshots have the same digest (volatile fields never count).
  bool empty() const { return environments.empty() && sources.empty() && other.empty(); }
  friend bool operator==(const SnapshotDiff&, const SnapshotDiff&) = default;
};

// Compares `before` with `after`. Environments are matched by prefix, source trees by root,
// packages by (name, manager), files by path. Every difference that changes digest_of() shows up
// somewhere in the result, so an empty diff means an identical build key. Pure.
SnapshotDiff diff_snapshots(const Snapshot& before, const Snapshot& after);

// Orders two version strings as package managers roughly do (PEP 440 and conda): numbers compare
// numerically, pre-release words (dev < a/alpha < b/beta < rc/c/pre) sort before the release,
// "post" after it, trailing zero components are insignificant ("1.0" == "1.0.0"). Returns <0,
// 0 or >0. Pure.
int compare_versions(std::string_view a, std::string_view b);

// One line for a log: the package-level changes, e.g. "+rich 13.7.0, -six 1.16.0, numpy 1.26.3
// -> 1.26.4, ~mypkg (2 files), unowned: 1 file, src: 3 files"; "no changes" when empty. Long
// lists are cut after `max_items` entries with "and N more". Pure.
std::string summary_line(const SnapshotDiff& diff, std::size_t max_items = 12);

}  // namespace envd::snapshot
