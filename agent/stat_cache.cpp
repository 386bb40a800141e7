// SQLite persistence of the stat cache. The whole table is read at open: one sequential scan of
// ~50k rows costs a few tens of milliseconds, far less than one query per file.
#include "agent/stat_cache.hpp"

#include <sqlite3.h>

namespace envd::agent {

struct StatCache::Db {
  sqlite3* handle = nullptr;
  std::filesystem::path path;
  ~Db() { sqlite3_close(handle); }
};

namespace {

Error sqlite_error(sqlite3* db, const std::filesystem::path& path, std::string_view what) {
  return Error(ErrorCode::io, "stat cache " + path.string() + ": " + std::string(what) + ": " +
                                  (db != nullptr ? sqlite3_errmsg(db) : "out of memory"));
}

Result<void> exec(sqlite3* db, const std::filesystem::path& path, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err != nullptr ? err : "unknown error";
    sqlite3_free(err);
    return Error(ErrorCode::io, "stat cache " + path.string() + ": " + msg);
  }
  return {};
}

}  // namespace

StatCache::~StatCache() = default;

std::unique_ptr<StatCache> StatCache::in_memory() { return std::unique_ptr<StatCache>(new StatCache()); }

Result<std::unique_ptr<StatCache>> StatCache::open(const std::filesystem::path& db_path) {
  std::error_code ec;
  std::filesystem::create_directories(db_path.parent_path(), ec);
  if (ec) return Error(ErrorCode::io, "create " + db_path.parent_path().string() + ": " + ec.message());
  auto cache = std::unique_ptr<StatCache>(new StatCache());
  cache->m_db = std::make_unique<Db>();
  cache->m_db->path = db_path;
  sqlite3*& db = cache->m_db->handle;
  if (sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
      SQLITE_OK)
    return sqlite_error(db, db_path, "open");
  sqlite3_busy_timeout(db, 10000);
  ENVD_TRY_VOID(exec(db, db_path, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"));
  ENVD_TRY_VOID(exec(db, db_path,
                     "CREATE TABLE IF NOT EXISTS stat_cache ("
                     " path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER,"
                     " mtime_ns INTEGER, ctime_ns INTEGER, digest TEXT) WITHOUT ROWID;"));
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db, "SELECT path, dev, ino, size, mtime_ns, ctime_ns, digest FROM stat_cache",
                         -1, &stmt, nullptr) != SQLITE_OK)
    return sqlite_error(db, db_path, "read");
  int rc;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    auto text = [&](int col) {
      const auto* p = sqlite3_column_text(stmt, col);
      return std::string(p != nullptr ? reinterpret_cast<const char*>(p) : "");
    };
    auto digest = oci::Digest::parse(text(6));
    if (!digest) continue;  // a damaged row only costs a re-hash
    StatKey key{static_cast<std::uint64_t>(sqlite3_column_int64(stmt, 1)),
                static_cast<std::uint64_t>(sqlite3_column_int64(stmt, 2)),
                static_cast<std::uint64_t>(sqlite3_column_int64(stmt, 3)),
                sqlite3_column_int64(stmt, 4), sqlite3_column_int64(stmt, 5)};
    cache->m_entries.emplace(text(0), Entry{key, *digest});
  }
  sqlite3_finalize(stmt);
  if (rc != SQLITE_DONE) return sqlite_error(db, db_path, "read");
  return cache;
}

std::optional<oci::Digest> StatCache::lookup(const std::string& abs_path, const StatKey& key) const {
  auto it = m_entries.find(abs_path);
  if (it == m_entries.end() || !(it->second.key == key)) return std::nullopt;
  return it->second.digest;
}

void StatCache::record(const std::string& abs_path, const StatKey& key, const oci::Digest& digest) {
  auto [it, inserted] = m_entries.insert_or_assign(abs_path, Entry{key, digest});
  (void)it;
  (void)inserted;
  m_dirty.push_back(abs_path);
}

Result<void> StatCache::save() {
  if (!m_db || m_dirty.empty()) {
    m_dirty.clear();
    return {};
  }
  sqlite3* db = m_db->handle;
  const auto& path = m_db->path;
  ENVD_TRY_VOID(exec(db, path, "BEGIN IMMEDIATE"));
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db,
                         "INSERT OR REPLACE INTO stat_cache (path, dev, ino, size, mtime_ns,"
                         " ctime_ns, digest) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         -1, &stmt, nullptr) != SQLITE_OK) {
    auto e = sqlite_error(db, path, "write");
    (void)exec(db, path, "ROLLBACK");
    return e;
  }
  for (const auto& p : m_dirty) {
    const Entry& e = m_entries.at(p);
    sqlite3_bind_text(stmt, 1, p.c_str(), static_cast<int>(p.size()), SQLITE_STATIC);
    sqlite3_bind_int64(stmt, 2, static_cast<sqlite3_int64>(e.key.dev));
    sqlite3_bind_int64(stmt, 3, static_cast<sqlite3_int64>(e.key.ino));
    sqlite3_bind_int64(stmt, 4, static_cast<sqlite3_int64>(e.key.size));
    sqlite3_bind_int64(stmt, 5, e.key.mtime_ns);
    sqlite3_bind_int64(stmt, 6, e.key.ctime_ns);
    sqlite3_bind_text(stmt, 7, e.digest.str().c_str(), -1, SQLITE_TRANSIENT);
    if (sqlite3_step(stmt) != SQLITE_DONE) {
      auto err = sqlite_error(db, path, "write");
      sqlite3_finalize(stmt);
      (void)exec(db, path, "ROLLBACK");
      return err;
    }
    sqlite3_reset(stmt);
  }
  sqlite3_finalize(stmt);
  ENVD_TRY_VOID(exec(db, path, "COMMIT"));
  m_dirty.clear();
  return {};
}

}  // namespace envd::agent
