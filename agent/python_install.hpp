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

// The keys of a venv's pyvenv.cfg that envd uses (written by `python -m venv`, virtualenv, uv).
struct PyvenvConfig {
  std::filesystem::path home;  // "home" key: the base interpreter's bin directory
  bool include_system_site_packages = false;
  std::string version;  // "version" key, else "version_info" cut to X.Y.Z ("3.11.9.final.0")
  std::optional<std::filesystem::path> base_executable;  // "base-executable" (uv, virtualenv 20)
  std::string prompt;                                    // "prompt", if present
  std::string implementation;  // "implementation" ("CPython"; uv, virtualenv)
  std::string virtualenv;      // "virtualenv": the virtualenv version that wrote the file
  std::string uv;              // "uv": the uv version that wrote the file
};

// Parses prefix/pyvenv.cfg: `key = value` lines, keys case-insensitive, whitespace around keys
// and values ignored, blank lines and lines starting with '#' or ';' skipped, unknown keys
// ignored. Errors: not_found (no pyvenv.cfg); invalid_argument "FILE:LINE: ..." for a line
// without '=', an empty key or home, or include-system-site-packages not true/false;
// invalid_argument when there is no home key. Thread-safe.
Result<PyvenvConfig> read_pyvenv_cfg(const std::filesystem::path& prefix);

// What a prefix is, first match wins: conda (conda-meta/history exists), venv (pyvenv.cfg),
// plain prefix (bin/python3 or bin/python, and a lib/pythonX.Y or lib64/pythonX.Y directory).
// Errors: not_found when `prefix` does not exist; invalid_argument when it is not a directory, or
// "DIR is not a Python environment (no conda-meta/history, pyvenv.cfg or bin/python3)".
Result<snapshot::EnvironmentKind> detect_environment_kind(const std::filesystem::path& prefix);

// The prefix's Python version without running Python, from the first source that has it: the
// pyvenv.cfg version ("3.11.7"); the conda record conda-meta/python-X.Y.Z-BUILD.json; the
// development header include/pythonX.Y/patchlevel.h (PY_VERSION, as written, e.g. "3.11.2");
// the highest lib/pythonX.Y directory ("3.11"). Empty if none.
std::string python_version_of(const std::filesystem::path& prefix);

// The prefix-relative site-packages directories that exist, sorted: lib/pythonX.Y[t]/site-packages
// and lib/pythonX.Y[t]/dist-packages (and lib64/...) for every version present, and Debian's
// lib/python3/dist-packages. (/usr/local/lib/pythonX.Y/dist-packages, which Debian's
// /usr/bin/python3 also searches, is not under /usr's lib and is not returned.)
std::vector<std::string> site_packages_dirs(const std::filesystem::path& prefix);

// The base prefix of a venv: pyvenv.cfg `home` with symlinks resolved (relative to the venv when
// relative), then its parent when it ends in bin ("/usr/bin" -> "/usr"). Errors: not_found (or
// permission_denied) naming pyvenv.cfg and the home path when home cannot be resolved;
// invalid_argument when it is not a directory.
Result<std::filesystem::path> base_prefix_of(const std::filesystem::path& venv_prefix,
                                             const PyvenvConfig& config);

// Prefix-relative paths (regular files and symlinks, never directories), sorted and unique, of the
// part of a base interpreter's prefix that a venv needs:
// - the interpreter: bin/python3, bin/python3.X and bin/python when they resolve to the same file
//   (the interpreter is bin/python3, else bin/python, else the highest bin/python3.X);
// - the standard library lib/pythonX.Y (and lib64/pythonX.Y) with lib-dynload and __pycache__,
//   without its site-packages / dist-packages unless `with_site_packages`, which also adds
//   Debian's lib/python3/dist-packages;
// - the shared libraries the interpreter and the extension modules (*.so) in those trees need,
//   transitively (DT_NEEDED, looked up in DT_RUNPATH/DT_RPATH with $ORIGIN, then the prefix's
//   lib/<multiarch>, lib64 and lib), when they resolve inside the prefix, except glibc's own (see
//   is_platform_library in agent/elf_needed.hpp), which belong to the platform.
// Every symlink listed is followed and the in-prefix links and file it resolves to are listed too,
// so nothing listed dangles inside the prefix (libz.so.1 brings libz.so.1.2.13).
// Reads only. Warnings (unlistable directories, unreadable or malformed ELF files) go to
// `diagnostics`, naming the file. Errors: not_found when base_prefix does not exist, when no
// interpreter is found in base_prefix/bin, or when its lib/pythonX.Y is missing. Thread-safe.
Result<std::vector<std::string>> base_interpreter_paths(const std::filesystem::path& base_prefix,
                                                        bool with_site_packages,
                                                        Diagnostics& diagnostics);

}  // namespace envd::agent
