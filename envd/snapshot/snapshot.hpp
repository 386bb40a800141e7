// The snapshot model (DESIGN.md §4): what an environment and source tree contain, every file by
// digest, grouped by owning package. Serialised as application/vnd.envd.snapshot.v1+json, schema
// in schemas/snapshot.schema.json.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "envd/oci/digest.hpp"
#include "envd/util/error.hpp"

namespace envd::snapshot {

inline constexpr std::string_view k_media_type = "application/vnd.envd.snapshot.v1+json";

enum class FileType { regular, symlink };

// One file under a root (an environment prefix or a source tree).
struct FileEntry {
  std::string path;  // relative, '/'-separated, normalised, never "..": see is_safe_relative_path
  FileType type = FileType::regular;
  std::optional<oci::Digest> digest;  // regular files only
  std::uint64_t size = 0;             // regular: bytes; symlink: 0
  std::uint32_t mode = 0;             // permission bits (07777)
  std::string target;                 // symlink target, as stored (may point anywhere)
  // Regular files only: when this file is a hard link of other regular files listed under the
  // same root (same device and inode), the root-relative path of the group's first member in
  // byte order; empty for that first member and for a file with no such link. A linked file's
  // digest, size and mode equal its first member's.
  std::string link;

  friend bool operator==(const FileEntry&, const FileEntry&) = default;
};

enum class PackageManager { conda, pip };

struct Package {
  std::string name;
  std::string version;
  PackageManager manager = PackageManager::pip;
  std::string build;       // conda build string; empty for pip
  std::string channel;     // conda channel (credentials redacted); empty for pip
  std::string subdir;      // conda subdir, e.g. linux-64 or noarch
  std::string installer;   // conda: "conda"; pip: INSTALLER file content ("pip", "uv", ...)
  bool requested = false;  // pip REQUESTED present / conda requested_spec set
  std::string direct_url;  // pip direct_url.json url (credentials redacted), if any
  std::optional<std::string> editable_root;  // absolute source dir of an editable install
  std::vector<FileEntry> files;              // prefix-relative, sorted by path
  std::vector<std::string> modified;         // files whose content differs from the record, sorted

  friend bool operator==(const Package&, const Package&) = default;
};

enum class EnvironmentKind { conda, prefix, venv };

std::string_view to_string(EnvironmentKind kind);
std::string_view to_string(PackageManager manager);

struct Environment {
  EnvironmentKind kind = EnvironmentKind::prefix;
  std::string name;                        // conda env name / venv dir name / prefix basename
  std::string prefix;                      // absolute path on the laptop (kept in the image)
  std::string python_version;              // "3.11.7"; empty if no interpreter was found
  std::optional<std::string> base_prefix;  // venv: the base interpreter's prefix
  bool system_site_packages = false;       // venv: include-system-site-packages
  bool partial = false;                    // only what a venv needs (base interpreter)
  std::vector<Package> packages;           // sorted by (name, manager)
  std::vector<FileEntry> unowned;          // files owned by no package, sorted by path

  friend bool operator==(const Environment&, const Environment&) = default;
};

enum class SourceRole { src, editable };
std::string_view to_string(SourceRole role);

struct SourceTree {
  std::string root;  // absolute
  SourceRole role = SourceRole::src;
  std::optional<std::string> git_commit;  // hex; absent outside git or on an unborn branch
  bool dirty = false;                     // tracked changes or untracked files vs HEAD
  std::map<std::string, std::uint64_t>
      ignored;                   // rule origin (".gitignore", ".envdignore", ...) -> entries
  std::vector<FileEntry> files;  // sorted by path

  friend bool operator==(const SourceTree&, const SourceTree&) = default;
};

struct Platform {
  std::string os;    // "linux"
  std::string arch;  // OCI arch name: amd64, arm64, ...
  std::string libc;  // "glibc 2.36", "musl", ...

  friend bool operator==(const Platform&, const Platform&) = default;
};

struct Snapshot {
  Platform platform;
  std::vector<Environment> environments;  // in the order given (first is the primary)
  std::vector<SourceTree> sources;        // sorted by root
  // Volatile: excluded from the digest.
  std::string created;  // RFC 3339 UTC
  std::string host;
  std::string envd_version;

  friend bool operator==(const Snapshot&, const Snapshot&) = default;
};

// Whole document, canonical JSON (sorted keys, no whitespace). Errors: invalid_argument naming
// the JSON location when the snapshot is one parse() would reject: a string (e.g. a file name)
// that is not valid UTF-8, a regular file without digest, an unsafe or unsorted path, a bad mode,
// a bad hard link.
Result<std::string> to_json(const Snapshot& snapshot);

// to_json with the volatile fields (created, host, envd_version) written as "": the document an
// image holds, a function of the snapshot digest alone.
Result<std::string> to_json_without_volatile(const Snapshot& snapshot);

// Digest of the canonical JSON without the volatile fields: the builder's build key. The same
// environment gives the same digest on any run and any machine.
Result<oci::Digest> digest_of(const Snapshot& snapshot);

// Parses and validates a document: media type, absolute roots, safe relative paths, valid
// digests, regular files with digests and symlinks with targets, hard links naming a file of
// their own root (see FileEntry::link). Errors: invalid_argument naming the JSON location of the
// first problem.
Result<Snapshot> parse(std::string_view json);

// The order of an environment's packages: by ASCII-lowercased name, then manager (conda first),
// then name. A total order, as (name, manager) is unique within an environment.
bool package_before(const Package& a, const Package& b);

// True for "a/b/c": not empty, not absolute, no "", "." or ".." component, no NUL.
bool is_safe_relative_path(std::string_view path);

// Totals over every environment and source tree.
struct Totals {
  std::uint64_t files = 0;
  std::uint64_t bytes = 0;
  std::uint64_t packages = 0;
};
Totals totals(const Snapshot& snapshot);

}  // namespace envd::snapshot
