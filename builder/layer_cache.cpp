// SQLite table layer_cache(key, compression) -> (media type, digest, size, diff_id, ...).
#include "builder/layer_cache.hpp"

#include <sqlite3.h>

#include <mutex>

namespace envd::builder {

struct LayerCache::Db {
  sqlite3* handle = nullptr;
  std::filesystem::path path;
  std::mutex mutex;
  ~Db() { sqlite3_close(handle); }
};

namespace {

Error db_error(sqlite3* db, const std::filesystem::path& path, std::string_view what) {
  return Error(ErrorCode::io, "layer cache " + path.string() + ": " + std::string(what) + ": " +
                                  (db != nullptr ? sqlite3_errmsg(db) : "out of memory"));
}

std::string text(sqlite3_stmt* stmt, int col) {
  const auto* p = sqlite3_column_text(stmt, col);
  return p != nullptr ? reinterpret_cast<const char*>(p) : "";
}

}  // namespace

LayerCache::~LayerCache() = default;

Result<std::unique_ptr<LayerCache>> LayerCache::open(const std::filesystem::path& db_path) {
  std::error_code ec;
  std::filesystem::create_directories(db_path.parent_path(), ec);
  auto cache = std::unique_ptr<LayerCache>(new LayerCache());
  cache->m_db = std::make_unique<Db>();
  cache->m_db->path = db_path;
  sqlite3*& db = cache->m_db->handle;
  if (sqlite3_open_v2(db_path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK)
    return db_error(db, db_path, "open");
  sqlite3_busy_timeout(db, 10000);
  // synchronous=NORMAL: in WAL mode a commit then does not wait for an fsync of the log (only
  // checkpoints sync). A crash can lose the last entries, never corrupt the database, and a lost
  // entry only means that layer is built again: not worth an fsync per built layer.
  // https://www.sqlite.org/pragma.html#pragma_synchronous
  const char* schema =
      "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
      "CREATE TABLE IF NOT EXISTS layer_cache (key TEXT NOT NULL, compression TEXT NOT NULL,"
      " media_type TEXT NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL,"
      " diff_id TEXT NOT NULL, uncompressed_size INTEGER NOT NULL, files INTEGER NOT NULL,"
      " PRIMARY KEY (key, compression))";
  if (sqlite3_exec(db, schema, nullptr, nullptr, nullptr) != SQLITE_OK)
    return db_error(db, db_path, "create schema");
  return cache;
}

Result<std::optional<BuiltLayer>> LayerCache::find(const oci::Digest& key,
                                                   Compression compression) {
  std::lock_guard lock(m_db->mutex);
  sqlite3* db = m_db->handle;
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db,
                         "SELECT media_type, digest, size, diff_id, uncompressed_size, files"
                         " FROM layer_cache WHERE key = ? AND compression = ?",
                         -1, &stmt, nullptr) != SQLITE_OK)
    return db_error(db, m_db->path, "read");
  auto k = key.str();
  auto c = std::string(media_type_for(compression));
  sqlite3_bind_text(stmt, 1, k.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(stmt, 2, c.c_str(), -1, SQLITE_TRANSIENT);
  std::optional<BuiltLayer> out;
  int rc = sqlite3_step(stmt);
  if (rc == SQLITE_ROW) {
    auto digest = oci::Digest::parse(text(stmt, 1));
    auto diff_id = oci::Digest::parse(text(stmt, 3));
    if (digest && diff_id) {
      BuiltLayer layer{oci::Descriptor{text(stmt, 0),
                                       *digest,
                                       static_cast<std::uint64_t>(sqlite3_column_int64(stmt, 2)),
                                       {}},
                       *diff_id, static_cast<std::uint64_t>(sqlite3_column_int64(stmt, 4)),
                       static_cast<std::uint64_t>(sqlite3_column_int64(stmt, 5))};
      out = std::move(layer);
    }
  }
  sqlite3_finalize(stmt);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return db_error(db, m_db->path, "read");
  return out;
}

Result<void> LayerCache::put(const oci::Digest& key, Compression compression,
                             const BuiltLayer& layer) {
  std::lock_guard lock(m_db->mutex);
  sqlite3* db = m_db->handle;
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(
          db,
          "INSERT OR REPLACE INTO layer_cache (key, compression, media_type, digest,"
          " size, diff_id, uncompressed_size, files) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
          -1, &stmt, nullptr) != SQLITE_OK)
    return db_error(db, m_db->path, "write");
  std::string values[] = {key.str(), std::string(media_type_for(compression)),
                          layer.blob.media_type, layer.blob.digest.str(), layer.diff_id.str()};
  sqlite3_bind_text(stmt, 1, values[0].c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(stmt, 2, values[1].c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(stmt, 3, values[2].c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(stmt, 4, values[3].c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(stmt, 5, static_cast<sqlite3_int64>(layer.blob.size));
  sqlite3_bind_text(stmt, 6, values[4].c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(stmt, 7, static_cast<sqlite3_int64>(layer.uncompressed_size));
  sqlite3_bind_int64(stmt, 8, static_cast<sqlite3_int64>(layer.files));
  int rc = sqlite3_step(stmt);
  sqlite3_finalize(stmt);
  if (rc != SQLITE_DONE) return db_error(db, m_db->path, "write");
  return {};
}

}  // namespace envd::builder
