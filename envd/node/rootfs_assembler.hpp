// Assembling an image's root filesystem from its unpacked layers without copying file data:
// files are hardlinked from the layer directories, whiteouts applied, nothing followed outside.
// Spec: https://github.com/opencontainers/image-spec/blob/v1.1.0/layer.md#whiteouts
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "envd/node/safe_dir.hpp"  // remove_tree_at, also for callers removing a rootfs
#include "envd/util/error.hpp"

namespace envd::node {

struct AssembleStats {
  std::uint64_t files = 0;        // hardlinked
  std::uint64_t directories = 0;  // created
  std::uint64_t symlinks = 0;
  std::uint64_t removed = 0;  // entries removed by whiteouts and opaque directories
};

// Builds `dest` (a staging directory that must not exist yet; created) from `layers`, unpacked
// layer directories as LayerUnpacker writes them, lowest first. Later layers win, as overlayfs
// shows them: a file or symlink replaces what was at its path, a directory merges with a
// directory and replaces a non-directory (also a lower layer's symlink: never followed),
// ".wh.NAME" removes NAME from lower layers (not from its own layer), ".wh..wh..opq" hides the
// lower layers' content of its directory. Files and symlinks are hardlinked from the layer
// (linkat without AT_SYMLINK_FOLLOW: no data copied, mode and mtime shared with the layer, so
// the layers must stay read-only); directories are created, and get the mode and mtime of the
// highest layer holding them once every layer is merged. Every step is relative to directory
// fds opened with O_NOFOLLOW. Errors: invalid_argument naming the layer and entry (a whiteout
// naming "" or ".."), already_exists (dest), not_found (a layer), io (e.g. EMLINK, EXDEV when
// layers and dest are on different file systems). On error `dest` holds partial content: the
// caller removes the staging directory. Thread-safe for distinct `dest`s.
Result<AssembleStats> assemble_rootfs(const std::vector<std::filesystem::path>& layers,
                                      const std::filesystem::path& dest);

}  // namespace envd::node
