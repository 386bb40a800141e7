#include "builder/snapshot_store.hpp"

#include "envd/util/atomic_file.hpp"

namespace envd::builder {

std::filesystem::path SnapshotStore::file_of(const oci::Digest& digest) const {
  return m_dir / (std::string(digest.hex()) + ".json");
}

void SnapshotStore::keep(Entry entry) {
  std::erase_if(m_parsed, [&](const Entry& e) { return e.digest == entry.digest; });
  m_parsed.push_front(std::move(entry));
  while (m_parsed.size() > m_kept) m_parsed.pop_back();
}

Result<SnapshotStore::Found> SnapshotStore::get(const oci::Digest& digest) {
  {
    std::lock_guard lock(m_mutex);
    for (auto it = m_parsed.begin(); it != m_parsed.end(); ++it)
      if (it->digest == digest) {
        m_parsed.splice(m_parsed.begin(), m_parsed, it);
        return it->found;
      }
  }
  auto text = read_file(file_of(digest));
  if (!text && text.error().code() == ErrorCode::not_found)
    return Error(ErrorCode::not_found,
                 "snapshot " + digest.str() +
                     " was never submitted (POST /envd/v1/NAMESPACE/NAME/snapshots first)");
  if (!text) return text.error();
  auto snap = snapshot::parse(*text);
  if (!snap)
    return Error(ErrorCode::internal,
                 "stored snapshot " + digest.str() + ": " + snap.error().message());
  Found found{std::make_shared<const snapshot::Snapshot>(std::move(*snap)), false};
  std::lock_guard lock(m_mutex);
  keep({digest, found});
  return found;
}

Result<void> SnapshotStore::put(const oci::Digest& digest, std::string_view document, Ptr parsed) {
  std::error_code ec;
  std::filesystem::create_directories(m_dir, ec);
  if (ec) return Error::from_errno("create " + m_dir.string(), ec.value());
  const auto file = file_of(digest);
  if (!std::filesystem::exists(file, ec)) ENVD_TRY_VOID(write_file_atomic(file, document));
  std::lock_guard lock(m_mutex);
  keep({digest, {std::move(parsed), true}});
  return {};
}

}  // namespace envd::builder
