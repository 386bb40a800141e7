// Internal to envd_node_sandbox: isolation none, where an image's environments cannot be mounted
// at their original paths, so they are copied elsewhere with the old paths rewritten to the new
// ones: freely in text files and shebangs, in binaries only where conda's same-length rule fits.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "envd/node/image_roots.hpp"
#include "envd/util/error.hpp"

namespace envd::node::detail {

using PathMoves = std::vector<std::pair<std::string, std::string>>;  // old root -> new root

// `text` with every occurrence of an old root that ends at a path boundary (the end, '/', or a
// character that cannot continue a file name) replaced by its new root; the longest old root wins
// where several match.
std::string rewrite_paths(std::string_view text, const PathMoves& moves);

// conda's binary rule: each NUL-terminated string holding an old root is rewritten and padded
// with NULs to its old length, so offsets in the file do not move. Errors: failed_precondition
// naming `what` (the file) and both roots when a rewritten string would be longer.
Result<std::string> rewrite_binary(std::string_view content, const PathMoves& moves,
                                   std::string_view what);

struct Relocation {
  PathMoves moves;                 // what moved where (longest old root first)
  std::vector<std::string> notes;  // e.g. "relocated /opt/env to /data/reloc/e0"
};

// Copies the image's environments to relocation_dir/e<i> (i: the environment's index in the
// snapshot; short names leave binaries the most room) and its source trees to relocation_dir/s<j>,
// rewriting old roots to new ones in the environments' files and symlink targets (sources are
// copied as they are). Modes and mtimes are kept. A partial environment (a venv's base, e.g. /usr)
// that exists on the host is used from the host, with a note counting the entries that differ.
// Reuse: a complete relocation carries a marker written last, and appears by renaming a staging
// directory beside relocation_dir, so a crash or a concurrent relocation never leaves a half one
// in use. Errors: invalid_argument (relocation_dir empty), failed_precondition (a binary that
// cannot take its new path; relocation_dir holds something else), io.
Result<Relocation> relocate_image(const std::filesystem::path& rootfs, const ImageRoots& roots,
                                  const std::filesystem::path& relocation_dir);

}  // namespace envd::node::detail
