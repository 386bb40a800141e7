// Content-addressed blob store interface. A blob is visible under a digest only after its bytes
// were verified to hash to that digest, and were made durable. Implementations: FsBlobStore (disk),
// MemoryBlobStore (tests); both pass tests/envd/store/blob_store_conformance.hpp.
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

namespace envd::store {

// An ingest in progress. Not thread-safe; one writer per upload. Destroying an uncommitted
// writer discards what it wrote.
class BlobWriter {
 public:
  virtual ~BlobWriter() = default;
  virtual Result<void> write(std::string_view data) = 0;
  virtual std::uint64_t written() const = 0;
  // Verifies the bytes written hash to `expected` (and have `expected_size` bytes when given),
  // then makes the blob visible. Committing content that is already present succeeds.
  // Errors: digest_mismatch / invalid_argument (size) with nothing made visible; io.
  // The writer cannot be used after commit, whatever the outcome: later calls fail with
  // failed_precondition.
  virtual Result<void> commit(const oci::Digest& expected,
                              std::optional<std::uint64_t> expected_size = std::nullopt) = 0;
};

// A group commit: blobs verified one at a time as they are added, then made durable and visible
// together by commit(), so that a store pays for durability once per group (one journal commit,
// one directory sync) instead of once per blob. Not thread-safe; one per ingesting thread, but
// groups of one store (and of several processes sharing it) may commit the same digests at once.
// Destroying a group without commit() discards the blobs it has not shown yet.
class BlobCommitGroup {
 public:
  virtual ~BlobCommitGroup() = default;
  // Takes `writer` (from the same store's begin_write()) and verifies its bytes as
  // BlobWriter::commit does, with the same errors: digest_mismatch / invalid_argument (size) with
  // nothing of this blob ever made visible; io. A failure leaves the blobs added before it in the
  // group. The blob is visible after commit() at the latest; a store may show it earlier (content
  // already present, or a store without a cheaper group path), but never before it is durable.
  virtual Result<void> add(std::unique_ptr<BlobWriter> writer, const oci::Digest& expected,
                           std::optional<std::uint64_t> expected_size = std::nullopt) = 0;
  // Makes every blob added since the last commit() durable, then visible; the group is then empty
  // and can take more. Errors: io, after which none of those blobs may be reported stored (some
  // may be visible, each verified and durable: the store's contract holds either way).
  virtual Result<void> commit() = 0;
};

// Sequential reader of one blob.
class BlobReader {
 public:
  virtual ~BlobReader() = default;
  // Reads up to `size` bytes; 0 at the end. Errors: io.
  virtual Result<std::size_t> read(char* buffer, std::size_t size) = 0;
  virtual std::uint64_t size() const = 0;
};

// Thread-safe: any number of readers and writers at once, including two writers of one digest.
class BlobStore {
 public:
  virtual ~BlobStore() = default;

  virtual bool contains(const oci::Digest& digest) const = 0;
  // Errors: not_found.
  virtual Result<std::uint64_t> size(const oci::Digest& digest) const = 0;
  // Errors: io.
  virtual Result<std::unique_ptr<BlobWriter>> begin_write() = 0;
  // Errors: not_found, io.
  virtual Result<std::unique_ptr<BlobReader>> open(const oci::Digest& digest) const = 0;
  // A group commit for many blobs at once (see BlobCommitGroup). This default commits each blob
  // as it is added, which suits stores whose commit is cheap (memory).
  virtual std::unique_ptr<BlobCommitGroup> begin_group();
  // Removing an absent blob succeeds. Errors: io.
  virtual Result<void> remove(const oci::Digest& digest) = 0;
  // Every visible digest, in no particular order. Errors: io.
  virtual Result<std::vector<oci::Digest>> list() const = 0;
  // Where the blob's bytes live on disk, for stores that have one (sendfile, hardlinks).
  virtual std::optional<std::filesystem::path> path_of(const oci::Digest& /*digest*/) const {
    return std::nullopt;
  }

  // Conveniences over the primitives above. put(data) returns the digest without writing when
  // the store already holds that content.
  Result<void> put(const oci::Digest& digest, std::string_view data);
  Result<oci::Digest> put(std::string_view data);
  Result<std::string> read_all(const oci::Digest& digest) const;
};

}  // namespace envd::store
