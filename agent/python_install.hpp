// Knowledge of how a Python installation is laid out: which kind of environment a directory is,
// the venv's pyvenv.cfg, and the subset of a base interpreter's prefix that a venv needs.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "agent/diagnostics.hpp"
#include "envd/snapshot/snapshot.hpp"
#include "envd/util/error.hpp"

namespace envd::agent {

struct PyvenvConfig {
  std::filesystem::path home;           // "home" key: the base interpreter's bin directory
  bool include_system_site_packages = false;
  std::string version;                  // "version" / "version_info" key, if present
  std::optional<std::filesystem::path> base_executable;  // "base-executable" (uv, virtualenv 20)
};

// Parses prefix/pyvenv.cfg. Errors: not_found; invalid_argument naming the file and line.
Result<PyvenvConfig> read_pyvenv_cfg(const std::filesystem::path& prefix);

// What a prefix is: conda (conda-meta/history), venv (pyvenv.cfg), plain prefix (bin/python3 and
// lib/pythonX.Y). Errors: invalid_argument "DIR is not a Python environment (no conda-meta/history,
// pyvenv.cfg or bin/python3)".
Result<snapshot::EnvironmentKind> detect_environment_kind(const std::filesystem::path& prefix);

// "3.11.7" from the prefix's interpreter (from lib/pythonX.Y and the binary/pyvenv.cfg/conda
// record, without running Python), or "X.Y" when only that is known. Empty if none.
std::string python_version_of(const std::filesystem::path& prefix);

// The prefix-relative site-packages directories that exist ("lib/python3.11/site-packages", and
// Debian's "lib/python3/dist-packages" for /usr).
std::vector<std::string> site_packages_dirs(const std::filesystem::path& prefix);

// The base prefix of a venv: from pyvenv.cfg `home` (its parent when it ends in bin), resolving
// symlinks. Errors: not_found naming pyvenv.cfg and the path.
Result<std::filesystem::path> base_prefix_of(const std::filesystem::path& venv_prefix,
                                             const PyvenvConfig& config);

// Prefix-relative paths (files and symlinks) of the base interpreter that a venv needs: the
// interpreter binaries (python3, python3.X and what they link to inside the prefix), the
// standard library lib/pythonX.Y (without site-packages / dist-packages unless
// `with_site_packages`), lib-dynload, and the shared libraries (DT_NEEDED, resolved inside the
// prefix's lib directories) of the interpreter and extension modules, except the C library's own
// (libc, libm, libpthread, libdl, librt, ld-linux), which belong to the platform.
// Errors: not_found when no interpreter is found in base_prefix/bin.
Result<std::vector<std::string>> base_interpreter_paths(const std::filesystem::path& base_prefix,
                                                        bool with_site_packages,
                                                        Diagnostics& diagnostics);

}  // namespace envd::agent
