// Reads a conda prefix's conda-meta/*.json records, as written by conda, mamba, micromamba and
// pixi/rattler.
#pragma once

#include <filesystem>
#include <vector>

#include "agent/diagnostics.hpp"
#include "agent/package_record.hpp"
#include "envd/util/error.hpp"

namespace envd::agent {

// One PackageRecord per conda-meta/*.json (manager conda, installer "conda"). Paths come from
// `paths_data.paths[].(_path|path)` when present, else `files`; noarch-python records whose
// paths are relative to site-packages are mapped to prefix-relative paths. Channel credentials
// are redacted. A broken record is a warning naming the file (the package is skipped), not a
// failure. Errors: not_found when `prefix/conda-meta` does not exist; io.
Result<std::vector<PackageRecord>> read_conda_meta(const std::filesystem::path& prefix,
                                                   Diagnostics& diagnostics);

}  // namespace envd::agent
