// Takes a whole snapshot: every environment prefix, the source tree and editable projects'
// sources, with the stat cache under the state directory and the secret deny-list enforced.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "agent/diagnostics.hpp"
#include "agent/file_hasher.hpp"
#include "envd/snapshot/snapshot.hpp"
#include "envd/util/error.hpp"

namespace envd::agent {

struct SnapshotOptions {
  std::vector<std::filesystem::path> prefixes;  // at least one
  std::optional<std::filesystem::path> src;     // source tree root
  // Where the stat cache lives ($ENVD_HOME); empty: no persistent cache.
  std::filesystem::path state_dir;
  std::vector<std::string> secret_allow;   // gitignore-syntax patterns of allowed secret paths
  std::vector<std::string> extra_ignores;  // gitignore-syntax patterns for source trees
  unsigned threads = 0;                    // 0: one per core
  // Wall clock in ns since the epoch (tests inject a fake one to control racy-entry handling).
  std::function<std::int64_t()> clock;
  std::string envd_version;
};

struct SnapshotOutcome {
  snapshot::Snapshot snapshot;
  oci::Digest digest;
  std::uint64_t files_hashed = 0;  // cache misses: files actually read
  std::uint64_t bytes_hashed = 0;
  double seconds = 0;
  std::vector<Diagnostic> warnings;
};

// Errors (each naming the path at fault): not_found / invalid_argument for a prefix that is no
// Python environment or a missing source root; permission_denied for a file matching the secret
// deny-list ("src/.env: blocked by secret rule ..."); failed_precondition for a file that kept
// changing or a source tree over the size cap; io. The scanned trees are only read.
// `progress` (optional) is updated live for a progress display on another thread.
Result<SnapshotOutcome> take_snapshot(const SnapshotOptions& options,
                                      HashProgress* progress = nullptr);

// The platform this process runs on: os, OCI architecture name, C library and version.
snapshot::Platform current_platform();

}  // namespace envd::agent
