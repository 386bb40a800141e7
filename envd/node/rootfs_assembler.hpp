// Assembling an image's root filesystem from its unpacked layers without copying file data:
// files are hardlinked from the layer directories, whiteouts applied, nothing followed outside.
// Spec: https://github.com/opencontainers/image-spec/blob/v1.1.0/layer.md#whiteouts
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "envd/util/error.hpp"
#include "envd/util/unique_fd.hpp"

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

// ---- Building blocks shared with the layer unpacker ----------------------------------------

// Opens directories below a root directory fd one component at a time, each with
// openat(parent, name, O_DIRECTORY|O_NOFOLLOW): a path never resolves through a symlink, and no
// path string is ever handed to the kernel whole. Keeps the fds of the last directory opened, so
// consecutive paths in one directory cost no syscall. Callers that modify the tree only modify
// entries of the directory open() just returned (deeper cached fds are dropped by that call).
// Not thread-safe; the root fd must outlive the cursor.
class DirCursor {
 public:
  enum class Missing { fail, create };  // create: mkdir with mode 0755 (umask not applied)

  explicit DirCursor(int root_fd) : m_root(root_fd) {}

  // The directory made of the first `n` components of `path` (n == 0: the root). Errors:
  // invalid_argument when a component is a symlink ("parent a/lnk is a symlink") or not a
  // directory; not_found when one is missing and `missing` is fail; io.
  Result<int> open(const std::vector<std::string>& path, std::size_t n, Missing missing);
  // Forgets the cached fds.
  void reset();

 private:
  int m_root;
  std::vector<std::string> m_names;
  std::vector<UniqueFd> m_fds;
};

// Removes `name` from the directory `dirfd`: a file, a symlink, or a directory with everything
// below it, never following a symlink. A missing `name` is no error. Adds the number of entries
// removed to `*removed` when given. Errors: io naming `name`.
Result<void> remove_tree_at(int dirfd, const std::string& name, std::uint64_t* removed = nullptr);

}  // namespace envd::node
