// Snapshot patches (application/vnd.envd.snapshot-patch.v1+json, schema in
// schemas/envd-api/snapshot-patch.schema.json): a snapshot written as the changes from another
// snapshot the builder already holds, so that a push after `pip install` of one package sends
// kilobytes instead of the whole ~10 MB document, and the builder re-reads only what changed.
//
// The sending side keeps an ItemIndex of the snapshot it last pushed (a digest per package,
// unowned file and source file). make_patch compares it with the new snapshot; the builder
// applies the patch to its copy of the base and accepts the result only when it has the digest
// the patch declares, so any disagreement between the two sides shows as an error (and the
// sender falls back to the whole document), never as a different build.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "envd/oci/digest.hpp"
#include "envd/snapshot/snapshot.hpp"
#include "envd/util/error.hpp"

namespace envd::snapshot {

inline constexpr std::string_view k_patch_media_type =
    "application/vnd.envd.snapshot-patch.v1+json";

// A digest of each package, unowned file and source file of one snapshot (the SHA-256 of the
// item's canonical JSON), sorted by a key naming where the item is.
struct ItemIndex {
  struct Item {
    std::string key;
    oci::Digest digest;
  };
  oci::Digest snapshot_digest;
  std::vector<Item> items;  // sorted by key, keys unique

  // The index of `snapshot`, whose digest is `digest`. Errors: as to_json's.
  static Result<ItemIndex> of(const Snapshot& snapshot, const oci::Digest& digest);
  // A JSON text of the index, and back. parse errors: invalid_argument.
  std::string to_text() const;
  static Result<ItemIndex> parse(std::string_view text);

  // The digest of the item at `key`, or null.
  const oci::Digest* find(std::string_view key) const;
};

// The patch document that turns the snapshot `base` indexes into `next` (digest and index in
// `next_index`). Errors: as to_json's.
Result<std::string> make_patch(const ItemIndex& base, const Snapshot& next,
                               const ItemIndex& next_index);

// A parsed patch. `fragment` is a valid snapshot holding the result's platform, volatile fields
// and environments and source trees with all their own fields, but of packages, unowned files
// and source files only those added or changed (so a hard link in it may name a file it does not
// hold: links are checked on the patched result); the removed ones are listed by environment and
// source tree (parallel to the fragment's).
struct Patch {
  struct PackageId {
    std::string name;
    PackageManager manager = PackageManager::pip;
  };
  struct EnvironmentRemovals {
    std::vector<PackageId> packages;
    std::vector<std::string> unowned;  // paths
  };
  oci::Digest base;
  oci::Digest digest;  // of the result
  Snapshot fragment;
  std::vector<EnvironmentRemovals> removed_from_environments;
  std::vector<std::vector<std::string>> removed_from_sources;  // paths
};

// Parses and validates a patch document. Errors: invalid_argument naming the JSON location.
Result<Patch> parse_patch(std::string_view text);

// The snapshot `patch` makes of `base` (whose digest must be patch.base). An environment or
// source tree of the fragment replaces the one of the base at the same prefix or root, keeping
// the base's items the patch neither changes nor removes. Errors: invalid_argument when the
// patch removes what the base lacks, when a hard link of the result names no fitting file (see
// FileEntry::link), or when the result's digest is not patch.digest.
Result<Snapshot> apply_patch(const Snapshot& base, const Patch& patch);

}  // namespace envd::snapshot
