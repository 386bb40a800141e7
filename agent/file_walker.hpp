// Stat walk of a directory tree (parallel over directories, never following symlinks), and stat of
// a given list of paths. Produces the metadata the hasher and the stat cache key on; can hand each
// regular file to a reader while its directory is open, so that reading overlaps the walk.
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
#include "envd/util/stat_key.hpp"

namespace envd::agent {

using envd::stat_key;
using envd::StatKey;  // as agent::StatKey, the name the agent's callers use

struct WalkedFile {
  std::string path;  // root-relative, '/'-separated
  snapshot::FileType type = snapshot::FileType::regular;
  std::uint32_t mode = 0;  // permission bits
  StatKey key;
  std::uint64_t nlink = 1;            // st_nlink of the stat that found it (not in the cache key)
  std::string target;                 // symlink target
  std::optional<oci::Digest> digest;  // regular files, once hashed (hash_files, walk_and_hash)
};

// Finds the hard links among one root's files while they become snapshot entries, and sets
// snapshot::FileEntry::link: on each regular file sharing its device and inode with other noted
// files, the path of the first of them in byte order (which gets no link). Other links of a
// file that are not noted (outside the root, ignored) do not count, so a file whose only other
// links are elsewhere gets no link. A file whose digest, size or mode differs from its first
// one's (it changed while the root was read) is left unlinked. Only files with nlink > 1 are
// kept: a root without hard links costs one comparison per file, in a loop the caller has anyway.
class HardLinkFinder {
 public:
  // `entry` is `walked` as a snapshot entry (to_file_entry; `walked` may be the moved-from
  // original, whose stat fields are intact). It must stay at its address until finish().
  void note(const WalkedFile& walked, snapshot::FileEntry& entry) {
    if (walked.nlink > 1 && entry.type == snapshot::FileType::regular)
      m_noted.push_back({walked.key.dev, walked.key.ino, &entry});
  }
  // Sets the links of the files noted, in any order of noting.
  void finish();

 private:
  struct Noted {
    std::uint64_t dev;
    std::uint64_t ino;
    snapshot::FileEntry* entry;
  };
  std::vector<Noted> m_noted;
};

// The snapshot entry of a walked (and, for regular files, hashed) file; moves its strings.
snapshot::FileEntry to_file_entry(WalkedFile&& file);

// Reads regular files during a walk, relative to their open directory (openat: no re-resolution of
// the full path per file). Called concurrently from all walking threads. `file.path` is set (root-
// relative) when either method is called.
class ContentReader {
 public:
  virtual ~ContentReader() = default;
  // For an entry its directory lists as a regular file, before the walker stat-ed it: either fill
  // `file` (type, mode, key and digest) from the file itself and return true, or return false to
  // have the walker lstat the entry, skip it or record it as what it is now, and pass it to
  // read_statted() if it is a regular file. An error stops the walk.
  virtual Result<bool> read_listed(int dirfd, const char* name, WalkedFile& file) = 0;
  // For a regular file the walker lstat-ed (`file` has type, mode and key): sets its digest, and
  // its key if the file was read under a newer stat. An error stops the walk.
  virtual Result<void> read_statted(int dirfd, const char* name, WalkedFile& file) = 0;
};

struct WalkOptions {
  unsigned threads = 0;             // 0: one per core
  ContentReader* reader = nullptr;  // optional: regular files are passed to it during the walk
};

// Every regular file and symlink below `root`, sorted by path. Directories are descended (not
// through symlinks); FIFOs, sockets and devices are skipped with a warning; unreadable directories
// and non-UTF-8 names are skipped with a warning naming them. Errors: not_found / invalid_argument
// when root is missing or not a directory; the reader's first error.
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
