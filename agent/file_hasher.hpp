// Hashes files in parallel on all cores, consulting the stat cache first. Guarantees that a
// recorded digest matches the file: a file whose stat changes while it is read is re-read.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
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
};

// Sets `digest` on every regular file in `files` (paths relative to `root`), from the cache or by
// reading the file (O_NOFOLLOW); a file read now gets its verified stat in `key`. Then replaces
// the cache's entries for `root` with these files (racy ones left out); the caller saves it.
// Errors: the first failure, naming the file: permission_denied/not_found/io when unreadable,
// failed_precondition when it kept changing while being read.
Result<void> hash_files(const std::filesystem::path& root, std::vector<WalkedFile>& files,
                        StatCache& cache, const HashOptions& options, HashProgress& progress);

}  // namespace envd::agent
