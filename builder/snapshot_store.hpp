// The snapshots submitted to a builder: each document in DIR/snapshots/<hex>.json (as it was
// submitted, or as a patch made it), and the last few parsed, so that a build or a patch right
// after a submission does not parse ~10 MB of JSON again. Thread-safe.
#pragma once

#include <cstddef>
#include <filesystem>
#include <list>
#include <memory>
#include <mutex>
#include <string_view>

#include "envd/oci/digest.hpp"
#include "envd/snapshot/snapshot.hpp"
#include "envd/util/error.hpp"

namespace envd::builder {

class SnapshotStore {
 public:
  using Ptr = std::shared_ptr<const snapshot::Snapshot>;

  explicit SnapshotStore(std::filesystem::path dir, std::size_t kept_parsed = 3)
      : m_dir(std::move(dir)), m_kept(kept_parsed) {}

  struct Found {
    Ptr snapshot;
    // Whether this process checked, when it stored the snapshot, that the blob store held every
    // file it names (the builder deletes no file blobs; what was read back from disk may have
    // lost some while the builder was down).
    bool blobs_checked = false;
  };

  // The snapshot with this digest. Errors: not_found when it was never submitted; io; internal
  // when the stored document no longer parses.
  Result<Found> get(const oci::Digest& digest);

  // Stores `document` (whose parsed form is `parsed`, digest `digest`, and every blob of which
  // the caller found in the blob store) atomically and keeps `parsed` at hand. Storing a digest
  // again replaces nothing on disk.
  Result<void> put(const oci::Digest& digest, std::string_view document, Ptr parsed);

 private:
  std::filesystem::path file_of(const oci::Digest& digest) const;
  struct Entry {
    oci::Digest digest;
    Found found;
  };
  void keep(Entry entry);  // with m_mutex held

  std::filesystem::path m_dir;
  std::size_t m_kept;
  std::mutex m_mutex;
  std::list<Entry> m_parsed;  // most recently used first
};

}  // namespace envd::builder
