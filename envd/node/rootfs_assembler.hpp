// Assembling an image's root filesystem from its unpacked layers without copying file data:
// files are hardlinked from the layer directories, whiteouts applied, nothing followed outside.
// Spec: https://github.com/opencontainers/image-spec/blob/v1.1.0/layer.md#whiteouts
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
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
// fds opened with O_NOFOLLOW. When the result is an envd image (/.envd/snapshot.json), the roots
// record is written beside it, DEST.roots.json (image_roots.hpp: a launch then reads that, not the
// ~10 MB snapshot), so `dest` belongs in a staging directory that is renamed into place whole.
// Errors: invalid_argument naming the layer and entry (a whiteout naming "" or ".."),
// already_exists (dest), not_found (a layer), io (e.g. EMLINK, EXDEV when layers and dest are on
// different file systems; writing the record). On error `dest` (and its record) may hold partial
// content: the caller removes the staging directory. Thread-safe for distinct `dest`s.
Result<AssembleStats> assemble_rootfs(const std::vector<std::filesystem::path>& layers,
                                      const std::filesystem::path& dest);

// The same, a layer at a time, so that assembly overlaps the download and unpack of the layers
// above: start(dest), add_layer() for each layer, lowest first, as it becomes available, then
// finish() (directory modes and mtimes, the roots record). Errors and partial content as above.
// Move-only; one thread at a time.
class RootfsAssembly {
 public:
  static Result<RootfsAssembly> start(const std::filesystem::path& dest);
  RootfsAssembly(RootfsAssembly&&) noexcept;
  RootfsAssembly& operator=(RootfsAssembly&&) noexcept;
  ~RootfsAssembly();
  Result<void> add_layer(const std::filesystem::path& layer);
  Result<AssembleStats> finish();

 private:
  struct State;
  explicit RootfsAssembly(std::unique_ptr<State> state);
  std::unique_ptr<State> m_state;
};

}  // namespace envd::node
