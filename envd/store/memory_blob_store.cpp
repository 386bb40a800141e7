// MemoryBlobStore: blobs as shared immutable strings in a map guarded by one mutex; writers
// buffer and hash, and publish under the lock only after verification.
#include "envd/store/memory_blob_store.hpp"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>

namespace envd::store {

struct detail::MemoryBlobState {
  mutable std::mutex mutex;
  std::unordered_map<oci::Digest, std::shared_ptr<const std::string>> blobs;
};

namespace {

using State = detail::MemoryBlobState;

class MemoryBlobWriter : public BlobWriter {
 public:
  explicit MemoryBlobWriter(std::shared_ptr<State> state) : m_state(std::move(state)) {}

  Result<void> write(std::string_view data) override {
    if (m_done) return Error(ErrorCode::failed_precondition, "write to a finished blob writer");
    m_data.append(data);
    m_hash.update(data);
    return {};
  }

  std::uint64_t written() const override { return m_data.size(); }

  Result<void> commit(const oci::Digest& expected,
                      std::optional<std::uint64_t> expected_size) override {
    if (m_done) return Error(ErrorCode::failed_precondition, "commit of a finished blob writer");
    m_done = true;
    if (expected_size && *expected_size != m_data.size()) {
      return Error(ErrorCode::invalid_argument, "size mismatch for " + expected.str() +
                                                    ": expected " + std::to_string(*expected_size) +
                                                    " bytes, got " + std::to_string(m_data.size()));
    }
    oci::Digest actual = m_hash.finish();
    if (actual != expected) {
      return Error(ErrorCode::digest_mismatch,
                   "digest mismatch: expected " + expected.str() + ", got " + actual.str());
    }
    auto blob = std::make_shared<const std::string>(std::move(m_data));
    std::lock_guard lock(m_state->mutex);
    // Content already present is identical by construction; keep the first copy.
    m_state->blobs.try_emplace(expected, std::move(blob));
    return {};
  }

 private:
  std::shared_ptr<State> m_state;
  std::string m_data;
  oci::Sha256 m_hash;
  bool m_done = false;
};

class MemoryBlobReader : public BlobReader {
 public:
  explicit MemoryBlobReader(std::shared_ptr<const std::string> blob) : m_blob(std::move(blob)) {}

  Result<std::size_t> read(char* buffer, std::size_t size) override {
    std::size_t n = std::min(size, m_blob->size() - m_offset);
    if (n > 0) std::memcpy(buffer, m_blob->data() + m_offset, n);
    m_offset += n;
    return n;
  }

  std::uint64_t size() const override { return m_blob->size(); }

 private:
  std::shared_ptr<const std::string> m_blob;
  std::size_t m_offset = 0;
};

}  // namespace

MemoryBlobStore::MemoryBlobStore() : m_state(std::make_shared<State>()) {}
MemoryBlobStore::~MemoryBlobStore() = default;

bool MemoryBlobStore::contains(const oci::Digest& digest) const {
  std::lock_guard lock(m_state->mutex);
  return m_state->blobs.contains(digest);
}

Result<std::uint64_t> MemoryBlobStore::size(const oci::Digest& digest) const {
  std::lock_guard lock(m_state->mutex);
  auto it = m_state->blobs.find(digest);
  if (it == m_state->blobs.end()) return Error(ErrorCode::not_found, "blob " + digest.str());
  return std::uint64_t{it->second->size()};
}

Result<std::unique_ptr<BlobWriter>> MemoryBlobStore::begin_write() {
  return std::unique_ptr<BlobWriter>(std::make_unique<MemoryBlobWriter>(m_state));
}

Result<std::unique_ptr<BlobReader>> MemoryBlobStore::open(const oci::Digest& digest) const {
  std::lock_guard lock(m_state->mutex);
  auto it = m_state->blobs.find(digest);
  if (it == m_state->blobs.end()) return Error(ErrorCode::not_found, "blob " + digest.str());
  return std::unique_ptr<BlobReader>(std::make_unique<MemoryBlobReader>(it->second));
}

Result<void> MemoryBlobStore::remove(const oci::Digest& digest) {
  std::lock_guard lock(m_state->mutex);
  m_state->blobs.erase(digest);
  return {};
}

Result<std::vector<oci::Digest>> MemoryBlobStore::list() const {
  std::lock_guard lock(m_state->mutex);
  std::vector<oci::Digest> out;
  out.reserve(m_state->blobs.size());
  for (const auto& [digest, blob] : m_state->blobs) out.push_back(digest);
  return out;
}

}  // namespace envd::store
