// Snapshot JSON pieces shared inside the snapshot library (snapshot_patch.cpp): not a public API.
#pragma once

#include <string>
#include <vector>

#include "envd/snapshot/snapshot.hpp"
#include "envd/snapshot/snapshot_patch.hpp"
#include "envd/util/json_detail.hpp"

namespace envd::snapshot {

// parse() of an already parsed JSON value.
Result<Snapshot> parse_value(const nlohmann::json& j);

// The digest of each package, unowned file and source file: the SHA-256 of its canonical JSON,
// keyed by where it is (the keys below). Sorted by key. Errors: as to_json's.
Result<std::vector<ItemIndex::Item>> item_digests(const Snapshot& snapshot);

// Keys: "<prefix>\0p\0<name>\0<manager>" for a package of the environment at <prefix>,
// "<prefix>\0u\0<path>" for an unowned file, "<root>\0s\0<path>" for a file of a source tree.
std::string package_key(std::string_view prefix, std::string_view name, PackageManager manager);
std::string unowned_key(std::string_view prefix, std::string_view path);
std::string source_key(std::string_view root, std::string_view path);

}  // namespace envd::snapshot
