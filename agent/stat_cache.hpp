// Stat cache: for each scanned root, relative path + StatKey -> digest, persisted in SQLite under
// $ENVD_HOME, so that a re-snapshot hashes only files whose stat changed.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/file_walker.hpp"
#include "envd/oci/digest.hpp"
#include "envd/util/error.hpp"

namespace envd::agent {

// One root's entries, sorted by relative path, packed in one buffer: loading ~50k entries is one
// SQLite row and no allocation per entry. Immutable, so lookups are safe from many threads.
class StatCacheRoot {
 public:
  struct Entry {
    std::string path;  // root-relative
    StatKey key;
    oci::Digest digest;
  };
  // Parses a packed buffer; a damaged one yields an empty root (it only costs re-hashing).
  static StatCacheRoot unpack(std::string blob);
  // Entries must be sorted by path.
  static std::string pack(const std::vector<Entry>& entries);

  std::optional<oci::Digest> lookup(std::string_view path, const StatKey& key) const;
  std::size_t size() const { return m_slots.size(); }

 private:
  struct Slot {
    std::uint32_t path_offset;
    std::uint32_t path_size;
    StatKey key;
    std::array<std::uint8_t, 32> digest;
  };
  std::string m_blob;
  std::vector<Slot> m_slots;
};

// Not thread-safe: the hasher calls it from one thread. Several processes may share one
// database: SQLite serialises their writes (WAL, busy timeout); the last writer of a root wins,
// which is safe because every entry was verified when it was written.
class StatCache {
 public:
  // Opens or creates `db_path` (parent directories are created). Errors: io naming the file.
  static Result<std::unique_ptr<StatCache>> open(const std::filesystem::path& db_path);
  // A cache that remembers nothing across runs.
  static std::unique_ptr<StatCache> in_memory();
  ~StatCache();

  // The entries last saved for `root` (absolute), loaded on first use. Errors: io.
  Result<const StatCacheRoot*> root(const std::string& root);
  // Replaces what is kept for `root` (entries sorted by path); written by the next save().
  void replace(const std::string& root, const std::vector<StatCacheRoot::Entry>& entries);
  // Writes the roots replaced since the last save, in one transaction. Errors: io.
  Result<void> save();

 private:
  StatCache() = default;
  struct Db;
  std::unique_ptr<Db> m_db;
  std::map<std::string, std::unique_ptr<StatCacheRoot>> m_roots;
  std::map<std::string, std::string> m_pending;  // root -> packed entries to write
};

}  // namespace envd::agent
