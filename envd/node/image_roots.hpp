// Internal to envd_node_sandbox: where an envd image's files belong, from the snapshot document
// the builder puts in the image at /.envd/snapshot.json (schemas/snapshot.schema.json).
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
// the rest parsed. Errors: invalid_argument naming the file (not JSON, a missing field, a path that
// is not a normalised absolute path); not_found / io reading it.
Result<ImageRoots> read_image_roots(const std::filesystem::path& snapshot_file);

// True for "/" or "/a/b": no empty, "." or ".." component, no trailing '/', no NUL.
bool is_normal_absolute(std::string_view path);

// Splits "/a/b" into {"a", "b"}; "/" gives {}.
std::vector<std::string> split_path(std::string_view path);

}  // namespace envd::node::detail
