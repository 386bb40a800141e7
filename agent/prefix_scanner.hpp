// Scans one environment prefix into snapshot Environments: walks it, asks the conda and pip
// scanners who owns what, hashes every file, and marks modified and unowned files. A venv also
// yields its base interpreter as a second, partial environment.
#pragma once

#include <filesystem>
#include <vector>

#include "agent/diagnostics.hpp"
#include "agent/file_hasher.hpp"
#include "agent/file_walker.hpp"
#include "agent/stat_cache.hpp"
#include "envd/snapshot/snapshot.hpp"
#include "envd/util/error.hpp"

namespace envd::agent {

struct ScanContext {
  StatCache& cache;
  HashOptions hash_options;
  WalkOptions walk_options;
  HashProgress& progress;
  Diagnostics& diagnostics;
};

// The environment at `prefix` (absolute, canonical), then for a venv its base interpreter
// (partial: only what the venv needs; with the system site-packages when the venv includes
// them). Errors: not_found / invalid_argument ("not a Python environment") naming the prefix;
// the hasher's errors naming the file.
Result<std::vector<snapshot::Environment>> scan_environment(const std::filesystem::path& prefix,
                                                            ScanContext& context);

// Prefixes that are system roots (/usr, /usr/local): only the interpreter's part is captured.
bool is_system_prefix(const std::filesystem::path& prefix);

}  // namespace envd::agent
