// Hashes files in parallel on all cores, consulting the stat cache first, either from a list of
// stat-ed files or during the walk itself. Guarantees that a recorded digest matches the file: a
// file whose stat changes while it is read is re-read.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "agent/file_walker.hpp"
#include "agent/stat_cache.hpp"
#include "envd/oci/digest.hpp"
#include "envd/util/error.hpp"

namespace envd::agent {

// Live counters, readable from another thread (progress display).
struct HashProgress {
  std::atomic<std::uint64_t> files_total{0};
  std::atomic<std::uint64_t> bytes_total{0};
  std::atomic<std::uint64_t> files_done{0};
  std::atomic<std::uint64_t> bytes_done{0};
  std::atomic<std::uint64_t> files_hashed{0};  // read and hashed (cache misses)
  std::atomic<std::uint64_t> bytes_hashed{0};
};

struct HashOptions {
  unsigned threads = 0;  // 0: one per core
  // Files whose mtime or ctime is at or after this (ns since the epoch) are hashed but not
  // cached: a change within the filesystem's timestamp granularity could leave their stat
  // unchanged ("racy" entries, as in git's index).
  std::int64_t racy_after_ns = std::numeric_limits<std::int64_t>::max();
  // Files whose mtime and ctime are both before this (ns since the epoch) count as settled: not
  // written since the scan began, so walk_and_hash reads them with one fstat after the read instead
  // of a stat before and after (a write during the read would have moved the ctime past this).
  // Must be at or before the scan's start minus the filesystem's timestamp granularity; the
  // default counts no file as settled.
  std::int64_t settled_before_ns = std::numeric_limits<std::int64_t>::min();
  // Called after a file's bytes were read and before its stat is checked, with its root-relative
  // path (tests change files here to exercise change detection). Called from many threads.
  std::function<void(const std::string& path)> after_read;
};

// Sets `digest` on every regular file in `files` (paths relative to `root`), from the cache or by
// reading the file (O_NOFOLLOW); a file read now gets its verified stat in `key`. Then replaces
// the cache's entries for `root` with these files (racy ones left out); the caller saves it.
// Errors: the first failure, naming the file: permission_denied/not_found/io when unreadable,
// failed_precondition when it kept changing while being read.
Result<void> hash_files(const std::filesystem::path& root, std::vector<WalkedFile>& files,
                        StatCache& cache, const HashOptions& options, HashProgress& progress);

// walk_tree and hash_files in one pass: each directory's regular files are read while the walk has
// it open (openat), on the walking threads, so reading overlaps listing. A file the cache knows by
// path is stat-ed and looked up as in hash_files; a file it does not know is read first and
// fstat-ed once after (see HashOptions::settled_before_ns), falling back to the stat before and
// after when it is not settled. Then replaces the cache's entries for `root`, as hash_files does.
// Errors: those of walk_tree and hash_files.
Result<std::vector<WalkedFile>> walk_and_hash(const std::filesystem::path& root, StatCache& cache,
                                              const WalkOptions& walk_options,
                                              const HashOptions& options, HashProgress& progress,
                                              Diagnostics& diagnostics);

}  // namespace envd::agent
