// Snapshot JSON pieces shared inside the snapshot library (snapshot_patch.cpp): not a public API.
#pragma once

#include <string>
#include <vector>

#include "envd/snapshot/snapshot.hpp"
#include "envd/snapshot/snapshot_patch.hpp"
#include "envd/util/json_detail.hpp"

namespace envd::snapshot {

// How far hard links (FileEntry::link) are checked: each file's own fields only, or also what
// the link names under the file's root. A patch's fragment holds only the changed files, so
// their links may name files it does not hold: it is checked per file, and the patched result
// in full.
enum class LinkCheck { per_file, full };

// parse() of an already parsed JSON value.
Result<Snapshot> parse_value(const nlohmann::json& j, LinkCheck links = LinkCheck::full);

// to_json() with the hard links checked per file only (a patch's fragment).
Result<std::string> fragment_to_json(const Snapshot& snapshot);

// A file's own link fields: none, or a regular file linking to a safe relative path other than
// its own. Errors: invalid_argument naming `where` (the link's JSON location) and the path.
Result<void> check_link_fields(const FileEntry& file, const std::string& where);

// The links of one root's files (see FileEntry::link): each names a regular file of the same
// root (an environment's packages and unowned files, or a source tree's files) that sorts before
// it, has no link itself, and has the same digest, size and mode. `where` is the JSON location
// of the environment or source tree. Errors: invalid_argument naming the link's location and
// both paths. Linear in the number of files, with a binary search per list for each link.
Result<void> check_links(const Environment& environment, const std::string& where);
Result<void> check_links(const SourceTree& source, const std::string& where);

// The digest of each package, unowned file and source file: the SHA-256 of its canonical JSON,
// keyed by where it is (the keys below). Sorted by key. Errors: as to_json's.
Result<std::vector<ItemIndex::Item>> item_digests(const Snapshot& snapshot);

// Keys: "<prefix>\0p\0<name>\0<manager>" for a package of the environment at <prefix>,
// "<prefix>\0u\0<path>" for an unowned file, "<root>\0s\0<path>" for a file of a source tree.
std::string package_key(std::string_view prefix, std::string_view name, PackageManager manager);
std::string unowned_key(std::string_view prefix, std::string_view path);
std::string source_key(std::string_view root, std::string_view path);

}  // namespace envd::snapshot
