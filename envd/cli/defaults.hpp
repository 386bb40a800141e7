// Defaults of the command line (DESIGN.md §5): the active environment's prefix, the git work tree
// around the current directory, and $ENVD_HOME.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "agent/snapshotter.hpp"

#include "envd/util/error.hpp"

namespace envd::cli {

// $CONDA_PREFIX, else $VIRTUAL_ENV, else sys.prefix of the python3 on PATH (asked from Python
// itself, so pyenv shims and symlinked interpreters resolve right). Errors: not_found when none.
Result<std::filesystem::path> default_prefix();

// The nearest directory at or above `dir` holding a .git entry (directory or gitfile).
std::optional<std::filesystem::path> enclosing_work_tree(const std::filesystem::path& dir);

// $ENVD_HOME, else ~/.local/share/envd.
std::filesystem::path envd_home();

// Snapshot options from the scan flags shared by snapshot, push and diff, with the defaults
// above for what is not given. Errors: not_found when no environment can be found.
Result<agent::SnapshotOptions> snapshot_options(const std::vector<std::string>& prefixes,
                                                const std::string& src, bool no_src,
                                                const std::vector<std::string>& allow_secrets);

}  // namespace envd::cli
