// Where a layer's file content comes from: files on this machine or blobs in the store, in both
// cases verified against the snapshot's digest while streaming, so nothing unverified enters a
// layer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "envd/oci/digest.hpp"
#include "envd/snapshot/snapshot.hpp"
#include "envd/store/blob_store.hpp"
#include "envd/util/error.hpp"
#include "envd/util/stat_key.hpp"

namespace envd::builder {

// One file in a layer. `path` is the absolute path inside the image without the leading '/'
// ("root/.pyenv/versions/3.11.7/bin/python3"), '/'-separated, normalised (no empty, "." or ".."
// components, no trailing '/'). write_layer takes entries sorted by path (byte order), unique.
struct LayerEntry {
  std::string path;
  snapshot::FileType type = snapshot::FileType::regular;
  std::uint32_t mode = 0644;          // permission bits; setuid/setgid/sticky are dropped in layers
  std::uint64_t size = 0;             // regular: bytes
  std::optional<oci::Digest> digest;  // regular: the content digest (from the snapshot); required
  std::string target;                 // symlink: the target, as stored
  std::string
      source;  // absolute path on this machine to read from; empty: the blob store by digest
  // Regular: the image path (same form as `path`) of the first file of this file's hard link
  // group (snapshot::FileEntry::link under the root's image prefix); empty when not linked. The
  // group's first file has no link either: a file is in a group when it has a link or another
  // entry's link names it. See write_layer for what a layer makes of it.
  std::string link;

  friend bool operator==(const LayerEntry&, const LayerEntry&) = default;
};

// Receives content in chunks; a failure stops the stream and is returned by ContentSource::read.
using ContentSink = std::function<Result<void>(std::string_view)>;

// Where file content comes from. Every implementation verifies the bytes against entry.digest and
// entry.size while streaming and fails with digest_mismatch naming the file.
class ContentSource {
 public:
  virtual ~ContentSource() = default;

  // Streams the whole content of the regular file `entry` to `sink` in chunks of bounded size.
  // The chunks already delivered when a mismatch is found cannot be taken back: callers discard
  // what they built on failure. Errors: invalid_argument (not a regular entry, no digest),
  // digest_mismatch (bytes or size differ from entry.digest / entry.size), not_found,
  // permission_denied, io; and whatever `sink` returned.
  virtual Result<void> read(const LayerEntry& entry, const ContentSink& sink) = 0;

  // The first up to `n` bytes of the regular file `entry` (fewer if the file is shorter); not
  // verified (a header alone cannot be). Used for the .pyc headers. Errors: as read().
  virtual Result<std::string> head(const LayerEntry& entry, std::size_t n) = 0;
};

// True when whoever computed entry.digest read it from the file at entry.source while that file
// had exactly `stat` (so its content now is what was hashed, as far as stat can tell: the trust
// a warm snapshot already places in its stat cache). Must be thread-safe; false when unsure.
using ContentVouch = std::function<bool(const LayerEntry& entry, const StatKey& stat)>;

// Reads entry.source (absolute) from disk with O_NOFOLLOW: a source that became a symlink or a
// non-regular file since the snapshot fails with failed_precondition. Thread-safe (as `vouch`).
class FileContentSource final : public ContentSource {
 public:
  FileContentSource() = default;
  // With a vouch: a file it vouches for by its stat when opened is streamed with its size
  // counted but its content not hashed again, and fstat-ed again after the read; a stat that
  // changed meanwhile fails with digest_mismatch. Other files are verified as usual.
  explicit FileContentSource(ContentVouch vouch) : m_vouch(std::move(vouch)) {}

  // Also invalid_argument when entry.source is empty or relative.
  Result<void> read(const LayerEntry& entry, const ContentSink& sink) override;
  Result<std::string> head(const LayerEntry& entry, std::size_t n) override;

 private:
  ContentVouch m_vouch;
};

// Reads the blob named entry.digest from a store (not_found naming the file when absent), and
// verifies it again: a blob on disk may have rotted since it was committed. Thread-safe, as
// BlobStore is; the store must outlive this object.
class BlobContentSource final : public ContentSource {
 public:
  explicit BlobContentSource(const store::BlobStore& store) : m_store(store) {}

  Result<void> read(const LayerEntry& entry, const ContentSink& sink) override;
  Result<std::string> head(const LayerEntry& entry, std::size_t n) override;

 private:
  const store::BlobStore& m_store;
};

// The usual mix when building: entry.source when set (files read on this machine), else the blob
// store (files uploaded by an agent). Thread-safe; the store must outlive this object.
class MixedContentSource final : public ContentSource {
 public:
  explicit MixedContentSource(const store::BlobStore& store) : m_blobs(store) {}

  Result<void> read(const LayerEntry& entry, const ContentSink& sink) override;
  Result<std::string> head(const LayerEntry& entry, std::size_t n) override;

 private:
  FileContentSource m_files;
  BlobContentSource m_blobs;
};

// Serves one buffer held in memory (the image builder's snapshot document), so content the process
// has just produced reaches a layer without a round trip through the blob store. The buffer is
// hashed once, here; it cannot change afterwards, so read() compares the entry's digest and size
// with that one hash instead of hashing every read again. Entries naming other content fail with
// not_found. Thread-safe; `data` must outlive this object.
class MemoryContentSource final : public ContentSource {
 public:
  explicit MemoryContentSource(std::string_view data)
      : m_data(data), m_digest(oci::sha256_of(data)) {}

  // The entry a layer needs for this content (type regular, `mode`, size and digest set).
  LayerEntry entry(std::string path, std::uint32_t mode) const;

  Result<void> read(const LayerEntry& entry, const ContentSink& sink) override;
  Result<std::string> head(const LayerEntry& entry, std::size_t n) override;

 private:
  Result<void> check(const LayerEntry& entry) const;

  std::string_view m_data;
  oci::Digest m_digest;
};

// "layer file <path>" or "layer file <path> (from <source>)": how errors name a file.
std::string describe(const LayerEntry& entry);

}  // namespace envd::builder
