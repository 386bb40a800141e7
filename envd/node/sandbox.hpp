// Running a command inside an assembled environment so that it sees the image's files at their
// original absolute paths: a bubblewrap mount namespace, or (isolation none) a relocated copy.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "envd/util/error.hpp"

namespace envd::node {

enum class Isolation {
  automatic,  // bubblewrap when it works here, else none
  bwrap,      // bubblewrap, or fail
  none,       // no namespace: files must be relocated to where they can be reached
};

// Parses "auto" | "bwrap" | "none". Errors: invalid_argument naming the text.
Result<Isolation> parse_isolation(std::string_view text);

// "auto" | "bwrap" | "none".
std::string_view to_string(Isolation isolation);

struct RunSpec {
  std::filesystem::path rootfs;        // assembled image root (read only: shared hardlinks)
  std::vector<std::string> command;    // argv; command[0] resolved with the image's PATH
  std::vector<std::string> image_env;  // the image config's Env, KEY=VALUE
  std::vector<std::string> extra_env;  // overrides (worker config), KEY=VALUE
  std::string working_dir;             // the image's WorkingDir ("" = /)
  Isolation isolation = Isolation::automatic;
  // For isolation none: where relocated environments are written (per image, reused; created by
  // plan_launch, must not hold anything else). Keep it short: binaries can only take a new path
  // no longer than the old one. Unused with bwrap.
  std::filesystem::path relocation_dir;
};

// What to exec: argv (bwrap ... -- CMD, or CMD itself), the full environment, the directory.
struct LaunchPlan {
  std::vector<std::string> argv;
  // What execve gets, and with bwrap what the command gets too, except that the dynamic loader's
  // variables (LD_*) are passed as --setenv in argv so that they do not apply to bwrap itself.
  std::vector<std::string> env;
  std::filesystem::path cwd;  // with bwrap "/" (the command's directory is in argv as --chdir)
  Isolation isolation = Isolation::bwrap;  // what was chosen (never automatic)
  std::vector<std::string> notes;          // e.g. "relocated /opt/env to /data/..": say so
};

// Plans how to run spec.command. The environment is the image's Env with extra_env on top (PATH
// defaulting to the usual one, HOME to the user's home directory); the directory is WorkingDir.
//
// Images built by envd (with /.envd/snapshot.json; where their files belong is read from the
// roots record written at assembly, ROOTFS.roots.json, else from the snapshot) keep the host's root
// (its /etc, /proc, /dev, /tmp, data directories, network) and get the image's environment prefixes
// and source roots mounted read only at their absolute paths; a partial environment (a venv's base
// interpreter, e.g. part of /usr) only where the host lacks or differs from the image's files.
// Nothing is ever created on the host to make a mount point. Other images (e.g. busybox) get the
// image root as /, read only, with fresh /proc, /dev and /tmp. No pid or network namespace in
// either case: workers keep the host's network, and signals reach them through process.hpp.
//
// isolation automatic picks bwrap when `bwrap` (found on PATH) can make a namespace here (probed
// once per process and bwrap path), else none. none relocates (see RunSpec::relocation_dir) and
// rewrites Env values, WorkingDir and arguments naming the old roots, with a note saying so.
//
// Errors: invalid_argument (no command, malformed Env entry, bad snapshot), not_found (rootfs,
// command not on the image's PATH, WorkingDir missing), failed_precondition (bwrap asked for but
// unusable, naming why; a foreign image without bwrap; relocation impossible, naming the file),
// io. Thread-safe.
Result<LaunchPlan> plan_launch(const RunSpec& spec);

}  // namespace envd::node
