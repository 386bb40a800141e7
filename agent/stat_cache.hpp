// Stat cache: absolute path + StatKey -> digest, persisted in SQLite under $ENVD_HOME, so that a
// re-snapshot hashes only files whose stat changed.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "agent/file_walker.hpp"
#include "envd/oci/digest.hpp"
#include "envd/util/error.hpp"

namespace envd::agent {

// Loaded whole into memory at open (one query), looked up without locks, written back in one
// transaction by save(). lookup() is safe from many threads at once; record() and save() are not
// (the hasher records from one thread after hashing). Several processes may share one database:
// SQLite serialises their writes (WAL, busy timeout).
class StatCache {
 public:
  // Opens or creates `db_path` (parent directories are created). Errors: io naming the file.
  static Result<std::unique_ptr<StatCache>> open(const std::filesystem::path& db_path);
  // A cache that remembers nothing across runs (no --state, tests).
  static std::unique_ptr<StatCache> in_memory();
  ~StatCache();

  std::optional<oci::Digest> lookup(const std::string& abs_path, const StatKey& key) const;
  void record(const std::string& abs_path, const StatKey& key, const oci::Digest& digest);
  // Writes what record() added since the last save. Errors: io.
  Result<void> save();
  std::size_t size() const { return m_entries.size(); }

 private:
  struct Entry {
    StatKey key;
    oci::Digest digest;
  };
  StatCache() = default;
  struct Db;
  std::unique_ptr<Db> m_db;
  std::unordered_map<std::string, Entry> m_entries;
  std::vector<std::string> m_dirty;
};

}  // namespace envd::agent
