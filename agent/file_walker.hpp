// Stat walk of a directory tree (parallel over directories, never following symlinks), and stat of
// a given list of paths. Produces the metadata the hasher and the stat cache key on.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "agent/diagnostics.hpp"
#include "envd/oci/digest.hpp"
#include "envd/snapshot/snapshot.hpp"
#include "envd/util/error.hpp"

namespace envd::agent {

// What identifies a file's content without reading it: if all five are unchanged, so is the
// content (the stat cache's key, as in git's index).
struct StatKey {
  std::uint64_t dev = 0;
  std::uint64_t ino = 0;
  std::uint64_t size = 0;
  std::int64_t mtime_ns = 0;
  std::int64_t ctime_ns = 0;
  friend bool operator==(const StatKey&, const StatKey&) = default;
};

struct WalkedFile {
  std::string path;  // root-relative, '/'-separated
  snapshot::FileType type = snapshot::FileType::regular;
  std::uint32_t mode = 0;  // permission bits
  StatKey key;
  std::string target;                 // symlink target
  std::optional<oci::Digest> digest;  // regular files, once hashed (hash_files)
};

// The StatKey of an lstat/fstat result.
StatKey stat_key(const struct ::stat& st);

// The snapshot entry of a walked (and, for regular files, hashed) file; moves its strings.
snapshot::FileEntry to_file_entry(WalkedFile&& file);

struct WalkOptions {
  unsigned threads = 0;  // 0: one per core
};

// Every regular file and symlink below `root`, sorted by path. Directories are descended (not
// through symlinks); FIFOs, sockets and devices are skipped with a warning; unreadable directories
// and non-UTF-8 names are skipped with a warning naming them. Errors: not_found / invalid_argument
// when root is missing or not a directory.
Result<std::vector<WalkedFile>> walk_tree(const std::filesystem::path& root,
                                          const WalkOptions& options, Diagnostics& diagnostics);

// lstat of each root-relative path (files and symlinks; directories are skipped). Paths that
// vanished are skipped with a warning. Output sorted by path.
std::vector<WalkedFile> stat_paths(const std::filesystem::path& root,
                                   const std::vector<std::string>& paths, Diagnostics& diagnostics);

// True when `name` is valid UTF-8 (the snapshot is JSON, which cannot carry other bytes).
bool is_valid_utf8(std::string_view name);

// A printable rendering of a possibly non-UTF-8 path: invalid bytes as \xNN.
std::string escape_path(std::string_view path);

}  // namespace envd::agent
