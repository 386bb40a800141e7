// Building blocks of envd_node_fs: opening directories one component at a time without following
// symlinks, listing and removing trees through directory fds. Shared by the layer unpacker and
// the rootfs assembler (and, through rootfs_assembler.hpp, callers removing a rootfs).
#pragma once

#include <fcntl.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "envd/util/error.hpp"
#include "envd/util/unique_fd.hpp"

namespace envd::node {

// openat() flags for a directory that must not be reached through a symlink.
inline constexpr int k_nofollow_dir_flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;

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

struct DirEntry {
  std::string name;
  unsigned char type;  // DT_*; a DT_UNKNOWN from getdents64 resolved with fstatat
};

// The entries of a directory, "." and ".." left out, read with getdents64 straight from `dirfd`
// (no opendir: one syscall less per directory, no second fd). Reads from the fd's offset, so
// callers pass a directory fd they opened and have not read yet. Errors: io naming `what`.
Result<std::vector<DirEntry>> list_dir(int dirfd, std::string_view what);

// Removes `name` from the directory `dirfd`: a file, a symlink, or a directory with everything
// below it, never following a symlink. A missing `name` is no error. Adds the number of entries
// removed to `*removed` when given. Errors: io naming `name`.
Result<void> remove_tree_at(int dirfd, const std::string& name, std::uint64_t* removed = nullptr);

}  // namespace envd::node
