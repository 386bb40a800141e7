// Reads a conda prefix's conda-meta/*.json records, as written by conda, mamba, micromamba and
// pixi/rattler.
#pragma once

#include <filesystem>
#include <vector>

#include "agent/diagnostics.hpp"
#include "agent/package_record.hpp"
#include "envd/util/error.hpp"

namespace envd::agent {

// One PackageRecord per conda-meta/*.json (manager conda, installer "conda"), sorted by name;
// other files there (history, pinned, frozen, state) are ignored. Owned paths are the record's
// prefix-relative `files`, any paths_data path `files` lacks, and the record itself
// ("conda-meta/NAME-VER-BUILD.json"). `paths_data.paths[].(_path|path)` supplies expected digests
// (sha256_in_prefix, else sha256, for hardlinked files only; a file with a prefix_placeholder
// gets sha256_in_prefix or nothing); noarch: python paths in it are mapped from package-relative
// ("site-packages/x", "python-scripts/x") to prefix-relative paths. The channel
// is stored without its trailing subdir and with credentials redacted ("user:pw@" and "/t/<token>"
// become "***"); the subdir comes from the record's "subdir" or the channel URL. A broken record
// (bad JSON, missing name or version, wrong types) is a warning naming the file and the package is
// skipped; absolute or ".." paths are dropped with a warning. Reads only; never writes.
// Errors: not_found when `prefix/conda-meta` does not exist; io / permission_denied when it
// cannot be listed. Thread-safe (diagnostics is the only shared state).
Result<std::vector<PackageRecord>> read_conda_meta(const std::filesystem::path& prefix,
                                                   Diagnostics& diagnostics);

}  // namespace envd::agent
