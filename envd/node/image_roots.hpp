// Internal to the node (envd_node_roots: used by rootfs assembly and the sandbox): where an envd
// image's files belong, from the snapshot document the builder puts in the image at
// /.envd/snapshot.json (schemas/snapshot.schema.json), and the small record of it kept beside an
// assembled rootfs so that a launch need not read the snapshot.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "envd/util/error.hpp"

namespace envd::node::detail {

inline constexpr std::string_view k_snapshot_in_image = ".envd/snapshot.json";

struct ImageEnvironment {
  std::string prefix;    // normalised absolute path
  std::string kind;      // conda | prefix | venv
  bool partial = false;  // only the part of a base interpreter a venv needs (e.g. of /usr)
};

// The absolute paths an envd image's content belongs at.
struct ImageRoots {
  std::vector<ImageEnvironment> environments;  // in snapshot order
  std::vector<std::string> sources;            // source tree roots
};

// Reads environments[].{prefix,kind,partial} and sources[].root from a snapshot document
// (schemas/snapshot.schema.json) without building its file lists: the document of a 55k-file
// environment is ~10 MB, which nlohmann parses in ~150 ms; the lists are skipped in a few ms and
// the rest parsed. The file itself must be a regular file, not a symlink (an image's content is
// not trusted to point elsewhere on the host). Errors: invalid_argument naming the file (not JSON,
// a missing field, a path that is not a normalised absolute path, not a regular file); not_found /
// io reading it.
Result<ImageRoots> read_image_roots(const std::filesystem::path& snapshot_file);

// ---- the roots record ---------------------------------------------------------------------------
// Reading the roots from a 10 MB snapshot costs ~10 ms per launch; assembly (rootfs_assembler)
// writes them once to a small JSON document beside the rootfs, ROOTFS.roots.json:
//   {"media_type": k_roots_record_media_type, "environments": [{"prefix", "kind", "partial"}],
//    "sources": [{"root"}]}
// (the snapshot's own field names, without its file lists). It appears by atomic rename with the
// assembled environment itself (DIR/envs/<hex>/rootfs.roots.json). Environments assembled before
// it existed have none.

inline constexpr std::string_view k_roots_record_media_type =
    "application/vnd.envd.image-roots.v1+json";

// ROOTFS.roots.json: where the record of the rootfs at `rootfs` is (`rootfs` without a trailing
// '/').
std::filesystem::path roots_record_path(const std::filesystem::path& rootfs);

// The record's text for `roots`.
std::string roots_record_text(const ImageRoots& roots);

// Reads a record, checked as read_image_roots checks a snapshot. Errors: not_found (no record),
// invalid_argument naming the file (not JSON, another media_type, a bad field or path), io.
Result<ImageRoots> read_roots_record(const std::filesystem::path& file);

// For an assembled rootfs: when it holds an envd image (ROOTFS/.envd/snapshot.json), writes its
// record (not synced: the caller commits the directory holding both) and returns true; false when
// it holds no snapshot, or one that read_image_roots refuses (logged as a warning: a launch reads
// the snapshot and reports the problem then). Errors: io writing the record.
Result<bool> write_roots_record(const std::filesystem::path& rootfs);

// The same from the snapshot document `snapshot` (not necessarily inside a rootfs: an overlay
// environment's is in one of its layers) into the record file `record`.
Result<bool> write_roots_record(const std::filesystem::path& snapshot,
                                const std::filesystem::path& record);

// The roots of the envd image assembled at `rootfs`: from its record, else (none: assembled by an
// older envd; or one that cannot be used, which is logged as a warning) from its snapshot.
// Errors: those of read_image_roots.
Result<ImageRoots> load_image_roots(const std::filesystem::path& rootfs);

// True for "/" or "/a/b": no empty, "." or ".." component, no trailing '/', no NUL.
bool is_normal_absolute(std::string_view path);

// Splits "/a/b" into {"a", "b"}; "/" gives {}.
std::vector<std::string> split_path(std::string_view path);

}  // namespace envd::node::detail
