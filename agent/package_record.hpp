// What a package manager's metadata says a package owns: the scanners' (conda, pip) output, before
// the prefix scan matches it against the files on disk and hashes them.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "envd/oci/digest.hpp"
#include "envd/snapshot/snapshot.hpp"

namespace envd::agent {

struct PackageRecord {
  // name, version, manager, build, channel, subdir, installer, requested, direct_url,
  // editable_root; `files` and `modified` are left empty (filled by the prefix scan).
  snapshot::Package meta;
  // Prefix-relative, normalised ('/'-separated, no "." or ".."), files the record claims,
  // including the record's own metadata files (e.g. the dist-info directory's files).
  std::vector<std::string> paths;
  // Prefix-relative path -> digest the package recorded for it (conda sha256_in_prefix or sha256;
  // pip RECORD sha256). A file whose content differs is reported as modified.
  std::map<std::string, oci::Digest> expected;
  // Prefix-relative path of the metadata that declared this package (conda-meta/x.json,
  // .../foo-1.0.dist-info): named in warnings.
  std::string record_path;
};

}  // namespace envd::agent
