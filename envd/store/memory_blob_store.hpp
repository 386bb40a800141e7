// MemoryBlobStore: a BlobStore held in a mutex-protected map, for tests and fakes. Same contract
// as FsBlobStore (both pass tests/envd/store/blob_store_conformance.hpp), nothing on disk.
#pragma once

#include <memory>

#include "envd/store/blob_store.hpp"

namespace envd::store {

namespace detail {
struct MemoryBlobState;  // the map and its mutex, shared with writers and readers
}

// Thread-safe, as BlobStore requires. Writers and readers keep the store's state alive, so they
// may outlive the store object. Using a writer after commit() gives failed_precondition.
class MemoryBlobStore : public BlobStore {
 public:
  MemoryBlobStore();
  ~MemoryBlobStore() override;
  MemoryBlobStore(const MemoryBlobStore&) = delete;
  MemoryBlobStore& operator=(const MemoryBlobStore&) = delete;

  bool contains(const oci::Digest& digest) const override;
  Result<std::uint64_t> size(const oci::Digest& digest) const override;
  Result<std::unique_ptr<BlobWriter>> begin_write() override;
  Result<std::unique_ptr<BlobReader>> open(const oci::Digest& digest) const override;
  Result<void> remove(const oci::Digest& digest) override;
  Result<std::vector<oci::Digest>> list() const override;

 private:
  std::shared_ptr<detail::MemoryBlobState> m_state;
};

}  // namespace envd::store
