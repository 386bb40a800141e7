// Defaults of the command line (DESIGN.md §5): the active environment's prefix, the git work tree
// around the current directory, and $ENVD_HOME.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "agent/snapshotter.hpp"
#include "envd/cli/user_config.hpp"
#include "envd/util/error.hpp"

namespace CLI {
class App;
}

namespace envd::cli {

// The scan flags shared by snapshot, push, diff and watch (DESIGN.md §5).
struct ScanArgs {
  std::vector<std::string> prefixes;       // --prefix (repeatable)
  std::string src;                         // --src
  bool no_src = false;                     // --no-src
  std::vector<std::string> allow_secrets;  // --allow-secret (repeatable)
};

// Registers --prefix, --src, --no-src and --allow-secret on `cmd`, filling `args`.
void add_scan_options(CLI::App& cmd, ScanArgs& args);

// Where push and watch send the image (resolve_push_target, resolve_image_name).
struct TargetArgs {
  std::string name;         // --name NAMESPACE/NAME[:TAG]
  std::string builder;      // --builder URL
  std::string compression;  // --compression zstd|gzip
};

// Registers --name, --builder and --compression on `cmd`, filling `args`.
void add_target_options(CLI::App& cmd, TargetArgs& args);

// $CONDA_PREFIX, else $VIRTUAL_ENV, else sys.prefix of the python3 on PATH (asked from Python
// itself, so pyenv shims and symlinked interpreters resolve right). Errors: not_found when none.
Result<std::filesystem::path> default_prefix();

// The nearest directory at or above `dir` holding a .git entry (directory or gitfile).
std::optional<std::filesystem::path> enclosing_work_tree(const std::filesystem::path& dir);

// $ENVD_HOME, else ~/.local/share/envd.
std::filesystem::path envd_home();

// Snapshot options from the scan flags, with the defaults above for what is not given, and the
// user config's ignore patterns and secret allow-list (the --allow-secret flags add to it).
// Errors: not_found when no environment can be found.
Result<agent::SnapshotOptions> snapshot_options(const ScanArgs& scan, const UserConfig& config);

// The same, reading the user config itself (load_user_config). Errors: also the config's
// (invalid_argument naming its line and key).
Result<agent::SnapshotOptions> snapshot_options(const ScanArgs& scan);

}  // namespace envd::cli
