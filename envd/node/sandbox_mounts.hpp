// Internal to envd_node_sandbox (sandbox.cpp, relocation.cpp): the bubblewrap mounts that show an
// envd image's environments and sources at their absolute paths over the host's root without
// creating anything on the host, and how a partial environment differs from the host's.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "envd/node/image_roots.hpp"
#include "envd/util/error.hpp"

namespace envd::node::detail {

// Paths (absolute, as in the image) of a partial environment's entries that the host lacks or has
// otherwise: missing on the host (a missing directory is listed once, not its content), another
// type, another symlink target, another size, or the same size and other bytes (compared byte for
// byte with the image's file; verdicts are cached per process by both files' identity, so a
// second launch costs one lstat per entry). Entries below `skip` (other roots) are left out.
// Errors: io naming the file that could not be read.
Result<std::vector<std::string>> partial_differences(const std::filesystem::path& rootfs,
                                                     const std::string& prefix,
                                                     const std::vector<std::string>& skip);

struct MountPlan {
  std::vector<std::string> args;  // bwrap options, in order
  // Sandbox path -> host path of the image content mounted there (for command lookup).
  std::vector<std::pair<std::string, std::string>> image_mounts;
  std::size_t mounts = 0;    // bind and tmpfs mounts (symlinks are not mounts)
  std::size_t symlinks = 0;  // --symlink operations
  std::vector<std::string> notes;
};

// bwrap options that show the host's root (one recursive read-write bind of /, or, when an image
// path must be created at the top level, each top-level entry bound read-write on bwrap's tmpfs
// root, symlinks recreated; either way /dev with devices, all else nodev) and the image's
// environments and source roots at their absolute paths, read only. Nothing is ever created on the
// host: where an image path is missing on the host, the deepest host directory above it is
// "grafted" (a tmpfs with the host's entries bound or linked back) and the image's topmost missing
// directory bound there. A partial environment shows only its entries that differ from the host's
// (partial_differences). Grafts of directories with more than a few dozen entries link the host's
// entries as symlinks into a read-write bind of that directory under /.envd-host instead of one
// bind each (bwrap's bind cost grows with the mount count: 1300 binds take ~1.3 s, 1300 symlinks
// ~60 ms). Errors: invalid_argument (an image root missing from the rootfs is skipped with a note,
// not an error), io.
Result<MountPlan> plan_host_mounts(const std::filesystem::path& rootfs, const ImageRoots& roots);

// The host path holding what the sandbox shows at `sandbox_path` under `plan`.
std::string host_path_of(const MountPlan& plan, const std::string& sandbox_path);

}  // namespace envd::node::detail
