// FsBlobStore: the on-disk content-addressed blob store. Blobs live at root/blobs/sha256/<hex>
// (read-only, fsynced); writes go to root/ingest/<random> and appear only by verified rename.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "envd/store/blob_store.hpp"

namespace envd::store {

// Thread-safe, and safe for several processes sharing one root: ingest files are flock()ed by
// their writer, so only abandoned ones are ever removed. Writers and readers do not refer back to
// the store and may outlive it. Using a writer after commit() gives failed_precondition.
class FsBlobStore : public BlobStore {
 public:
  // Opens (creating if needed) a store at `root` and removes ingest files left by writers that
  // died (crash, kill) before committing. Errors: not_found / permission_denied / io naming the
  // directory that could not be created or cleaned.
  static Result<std::unique_ptr<FsBlobStore>> create(const std::filesystem::path& root);

  bool contains(const oci::Digest& digest) const override;
  Result<std::uint64_t> size(const oci::Digest& digest) const override;
  Result<std::unique_ptr<BlobWriter>> begin_write() override;
  // Each blob added is verified and made read-only; commit() makes them all durable with one
  // syncfs() of the store's filesystem (which also writes back whatever else is dirty there;
  // fsync of each file where syncfs is unavailable), renames them into place, then fsyncs
  // blobs/sha256 once. Each blob pending in a group holds an open file (and its flock) until
  // commit(), so callers bound the group's size. Writers not made by an FsBlobStore are committed
  // on their own as they are added.
  std::unique_ptr<BlobCommitGroup> begin_group() override;
  Result<std::unique_ptr<BlobReader>> open(const oci::Digest& digest) const override;
  Result<void> remove(const oci::Digest& digest) override;
  // Names in blobs/sha256 that are not 64 lowercase hex digits are ignored.
  Result<std::vector<oci::Digest>> list() const override;
  // root/blobs/sha256/<hex>, whether or not the blob is present.
  std::optional<std::filesystem::path> path_of(const oci::Digest& digest) const override;

  // Resumable ingest, for downloads that must survive a crash or kill: a writer for `digest` whose
  // bytes persist in root/resume/<hex>. When that file exists its bytes are hashed again
  // and handed to `replay` (when given) in order, and written() starts after them, so a download
  // continues with Range. The writer holds an exclusive flock on the file for its life (this
  // blocks while another writer, in any process, has the same digest). Destroying it uncommitted
  // keeps the bytes (a write error discards them: their content is then unknown); commit()
  // verifies like begin_write()'s writers and removes the file on a mismatch. Errors: io; the
  // replay's error (the file is kept).
  using Replay = std::function<Result<void>(std::string_view data)>;
  Result<std::unique_ptr<BlobWriter>> resume_write(const oci::Digest& digest,
                                                   const Replay& replay = {});
  // Removes the resumable bytes of `digest` (absent: success). Call without a live writer of it.
  // Errors: io.
  Result<void> discard_resumable(const oci::Digest& digest);
  // Digests that have resumable bytes. Errors: io.
  Result<std::vector<oci::Digest>> list_resumable() const;

  const std::filesystem::path& root() const { return m_root; }

 private:
  explicit FsBlobStore(std::filesystem::path root);

  std::filesystem::path m_root;
  std::filesystem::path m_blobs_dir;
  std::filesystem::path m_ingest_dir;
  std::filesystem::path m_resume_dir;
};

}  // namespace envd::store
