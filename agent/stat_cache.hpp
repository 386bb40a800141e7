// Stat cache: for each scanned root, relative path + StatKey -> digest, persisted in SQLite under
// $ENVD_HOME, so that a re-snapshot hashes only files whose stat changed.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
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
  // Builds a packed buffer entry by entry, in path order, with no copy of the entries first.
  class Packer {
   public:
    // `count` and `path_bytes` (the paths' total length) size the buffer once; they are hints.
    Packer(std::size_t count, std::size_t path_bytes);
    void add(std::string_view path, const StatKey& key, const oci::Digest& digest);
    std::string finish() &&;

   private:
    std::string m_out;
    std::uint64_t m_count = 0;
  };
  // A cached entry, whatever the file's stat is now.
  struct Found {
    StatKey key;
    oci::Digest digest;
  };

  // Parses a packed buffer; a damaged one yields an empty root (it only costs re-hashing).
  static StatCacheRoot unpack(std::string blob);
  // Entries must be sorted by path.
  static std::string pack(const std::vector<Entry>& entries);

  // The digest cached for `path` if it was cached under exactly `key`.
  std::optional<oci::Digest> lookup(std::string_view path, const StatKey& key) const;
  // The entry cached for `path`, if any.
  std::optional<Found> find(std::string_view path) const;
  std::size_t size() const { return m_offsets.size(); }

 private:
  std::string_view path_at(std::uint32_t offset) const;
  std::string m_blob;
  // Where each entry starts in m_blob (its path size): 4 bytes per entry rather than a parsed
  // copy of every entry, which would be more fresh memory to fill than the lookups save.
  std::vector<std::uint32_t> m_offsets;
};

// The stat cache's database under a state directory ($ENVD_HOME).
std::filesystem::path stat_cache_path(const std::filesystem::path& state_dir);

// Not thread-safe: one thread calls it (it may write in the background itself, see start_save).
// Several processes may share one database: SQLite serialises their writes (WAL, busy timeout);
// the last writer of a root wins, which is safe because every entry was verified when written.
class StatCache {
 public:
  // Opens or creates `db_path` (parent directories are created). Errors: io naming the file.
  static Result<std::unique_ptr<StatCache>> open(const std::filesystem::path& db_path);
  // A cache that remembers nothing across runs.
  static std::unique_ptr<StatCache> in_memory();
  ~StatCache();

  // The entries last saved or replaced for `root` (absolute), loaded on first use. Valid until
  // the next replace() of that root. Errors: io.
  Result<const StatCacheRoot*> root(const std::string& root);
  // Replaces what is kept for `root` (entries sorted by path); written by the next save().
  void replace(const std::string& root, const std::vector<StatCacheRoot::Entry>& entries);
  // The same with the entries already packed (StatCacheRoot::Packer).
  void replace_packed(const std::string& root, std::string packed);
  // Starts writing the roots replaced so far on a background thread and returns at once, so the
  // caller can go on meanwhile; the other members wait for it where they need the database.
  void start_save();
  // Writes the roots replaced since the last save, in one transaction, after waiting for a write
  // start_save() began. Errors: io, also for that background write.
  Result<void> save();

 private:
  StatCache() = default;
  Result<StatCacheRoot> read_root(const std::string& root);
  Result<void> write(const std::map<std::string, std::string>& roots);
  void join_writer();
  struct Db;
  std::unique_ptr<Db> m_db;
  std::map<std::string, std::unique_ptr<StatCacheRoot>> m_roots;
  std::map<std::string, std::string> m_pending;  // root -> packed entries to write
  // The background write: only its thread touches m_writing and the database until joined.
  std::thread m_writer;
  std::map<std::string, std::string> m_writing;
  std::optional<Error> m_writer_error;
};

}  // namespace envd::agent
