// RegistryIndex: the registry's metadata in SQLite (repositories, which blobs each repository may
// serve, manifests, tags, upload sessions). Blob and manifest bytes live in the BlobStore.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "envd/oci/digest.hpp"
#include "envd/util/error.hpp"

namespace envd::builder {

// A repository name as the distribution spec allows it: path components matching
// [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)* joined by '/', at most 255 characters in all.
// https://github.com/opencontainers/distribution-spec/blob/v1.1.0/spec.md#pulling-manifests
bool is_valid_repository(std::string_view name);

// A tag: [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}.
bool is_valid_tag(std::string_view tag);

// What a tag or digest reference resolves to.
struct ManifestRef {
  oci::Digest digest;
  std::string media_type;
};

// An upload session in progress (bytes live in the server's upload directory).
struct UploadSession {
  std::string id;
  std::string repository;
  std::uint64_t received = 0;  // bytes accepted so far, in order
  std::int64_t created_unix = 0;
};

// One SQLite file (WAL journal, 5 s busy timeout, synchronous=FULL: an acknowledged push survives
// a power cut). Thread-safe: one connection, calls serialised by a mutex. Every call validates
// repository names, tags and references before touching the database (invalid_argument);
// database failures are io errors naming the file.
class RegistryIndex {
 public:
  // Opens or creates the database (and its parent directory). Errors: io, failed_precondition
  // (a database written by a newer schema version).
  static Result<std::unique_ptr<RegistryIndex>> open(const std::filesystem::path& db);
  ~RegistryIndex();
  RegistryIndex(const RegistryIndex&) = delete;
  RegistryIndex& operator=(const RegistryIndex&) = delete;

  // Makes a blob (already committed to the blob store) visible in `repo`, creating the repository.
  // Idempotent.
  Result<void> link_blob(const std::string& repo, const oci::Digest& digest);
  // Whether the blob was linked into `repo`.
  Result<bool> has_blob(const std::string& repo, const oci::Digest& digest);

  // Records a manifest whose bytes are in the blob store under `digest`, and points `tag` at it
  // when given (moving the tag if it pointed elsewhere). Atomic: both or neither.
  Result<void> put_manifest(const std::string& repo, const oci::Digest& digest,
                            const std::string& media_type, const std::optional<std::string>& tag);
  // Whether `digest` was recorded as a manifest of `repo`.
  // Links `blobs` into `repo` and records `manifest` with every tag in `tags`, all in one
  // transaction (one fsync): what the image builder does when a build finishes.
  Result<void> commit_image(const std::string& repo, const std::vector<oci::Digest>& blobs,
                            const oci::Digest& manifest, const std::string& media_type,
                            const std::vector<std::string>& tags);
  Result<bool> has_manifest(const std::string& repo, const oci::Digest& digest);
  // Resolves a tag or a digest ("sha256:...") in `repo`; nullopt when unknown.
  // Errors: invalid_argument for a reference that is neither a valid tag nor a valid digest.
  Result<std::optional<ManifestRef>> resolve(const std::string& repo, const std::string& reference);
  // The repository's tags, sorted by byte order; empty for an unknown repository.
  Result<std::vector<std::string>> tags(const std::string& repo);
  // Whether anything (blob, manifest or upload) was ever recorded under `repo`.
  Result<bool> repository_exists(const std::string& repo);

  // Upload sessions. `id` is chosen by the caller (opaque, [A-Za-z0-9-]{1,64}).
  Result<void> create_upload(const std::string& id, const std::string& repo);
  Result<std::optional<UploadSession>> upload(const std::string& id);
  Result<void> set_upload_received(const std::string& id, std::uint64_t received);
  // Removing an unknown session succeeds.
  Result<void> remove_upload(const std::string& id);
  // Sessions created before `created_before_unix` (to expire abandoned uploads).
  Result<std::vector<UploadSession>> uploads_created_before(std::int64_t created_before_unix);
  // Bytes held by all open sessions together.
  Result<std::uint64_t> upload_bytes_total();

 private:
  struct Db;
  explicit RegistryIndex(std::unique_ptr<Db> db);
  std::unique_ptr<Db> m_db;
};

}  // namespace envd::builder
