// SQLite persistence of the stat cache: one row per root holding its entries packed and sorted, so
// ~50k entries are read or written in milliseconds (a row per file costs hundreds to write).
// Writes may run on a background thread (start_save) while the snapshot goes on.
#include "agent/stat_cache.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <cstring>
#include <limits>

namespace envd::agent {
namespace {

// Packed format, little-endian as written by this machine (the cache never leaves it):
//   "envdsc1\0" u64 count, then per entry: u32 path size, path bytes, u64 dev, u64 ino,
//   u64 size, i64 mtime_ns, i64 ctime_ns, 32 digest bytes.
constexpr std::string_view k_magic{"envdsc1\0", 8};

template <class T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

template <class T>
bool get(std::string_view& in, T& v) {
  if (in.size() < sizeof v) return false;
  std::memcpy(&v, in.data(), sizeof v);
  in.remove_prefix(sizeof v);
  return true;
}

std::uint8_t hex_value(char c) {
  return static_cast<std::uint8_t>(c <= '9' ? c - '0' : c - 'a' + 10);
}

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

constexpr std::size_t k_entry_fixed_size = 4 + 5 * 8 + 32;  // all but the path bytes

}  // namespace

std::filesystem::path stat_cache_path(const std::filesystem::path& state_dir) {
  return state_dir / "stat-cache.sqlite";
}

StatCacheRoot::Packer::Packer(std::size_t count, std::size_t path_bytes) {
  m_out.reserve(k_magic.size() + 8 + count * k_entry_fixed_size + path_bytes);
  m_out.append(k_magic);
  put<std::uint64_t>(m_out, 0);  // the count, written by finish()
}

void StatCacheRoot::Packer::add(std::string_view path, const StatKey& key,
                                const oci::Digest& digest) {
  put<std::uint32_t>(m_out, static_cast<std::uint32_t>(path.size()));
  m_out.append(path);
  put(m_out, key.dev);
  put(m_out, key.ino);
  put(m_out, key.size);
  put(m_out, key.mtime_ns);
  put(m_out, key.ctime_ns);
  auto hex = digest.hex();
  char raw[32];
  for (std::size_t i = 0; i < 32; ++i)
    raw[i] = static_cast<char>((hex_value(hex[2 * i]) << 4) | hex_value(hex[2 * i + 1]));
  m_out.append(raw, sizeof raw);
  ++m_count;
}

std::string StatCacheRoot::Packer::finish() && {
  std::memcpy(m_out.data() + k_magic.size(), &m_count, sizeof m_count);
  return std::move(m_out);
}

std::string StatCacheRoot::pack(const std::vector<Entry>& entries) {
  std::size_t path_bytes = 0;
  for (const auto& e : entries) path_bytes += e.path.size();
  Packer packer(entries.size(), path_bytes);
  for (const auto& e : entries) packer.add(e.path, e.key, e.digest);
  return std::move(packer).finish();
}

StatCacheRoot StatCacheRoot::unpack(std::string blob) {
  StatCacheRoot root;
  root.m_blob = std::move(blob);
  std::string_view in(root.m_blob);
  std::uint64_t count = 0;
  if (in.substr(0, k_magic.size()) != k_magic) return StatCacheRoot{};
  in.remove_prefix(k_magic.size());
  if (!get(in, count) || count > in.size() / k_entry_fixed_size ||
      root.m_blob.size() > std::numeric_limits<std::uint32_t>::max())
    return StatCacheRoot{};
  root.m_offsets.reserve(count);
  for (std::uint64_t i = 0; i < count; ++i) {
    auto offset = static_cast<std::uint32_t>(in.data() - root.m_blob.data());
    std::uint32_t path_size = 0;
    if (!get(in, path_size) || in.size() < path_size + k_entry_fixed_size - 4)
      return StatCacheRoot{};
    in.remove_prefix(path_size + k_entry_fixed_size - 4);
    root.m_offsets.push_back(offset);
  }
  return root;
}

std::string_view StatCacheRoot::path_at(std::uint32_t offset) const {
  std::uint32_t size = 0;
  std::memcpy(&size, m_blob.data() + offset, sizeof size);
  return std::string_view(m_blob.data() + offset + sizeof size, size);
}

std::optional<StatCacheRoot::Found> StatCacheRoot::find(std::string_view path) const {
  auto it = std::lower_bound(m_offsets.begin(), m_offsets.end(), path,
                             [&](std::uint32_t at, std::string_view p) { return path_at(at) < p; });
  if (it == m_offsets.end() || path_at(*it) != path) return std::nullopt;
  std::string_view in(m_blob);
  in.remove_prefix(*it + 4 + path.size());
  StatKey key;
  std::array<std::uint8_t, 32> digest{};
  // unpack() checked that every entry is complete.
  (void)(get(in, key.dev) && get(in, key.ino) && get(in, key.size) && get(in, key.mtime_ns) &&
         get(in, key.ctime_ns) && get(in, digest));
  return Found{key, oci::Digest::from_bytes(digest)};
}

std::optional<oci::Digest> StatCacheRoot::lookup(std::string_view path, const StatKey& key) const {
  auto found = find(path);
  if (!found || !(found->key == key)) return std::nullopt;
  return found->digest;
}

struct StatCache::Db {
  sqlite3* handle = nullptr;
  std::filesystem::path path;
  ~Db() { sqlite3_close(handle); }
};

StatCache::~StatCache() {
  join_writer();
}

void StatCache::join_writer() {
  if (m_writer.joinable()) m_writer.join();
  m_writing.clear();
}

std::unique_ptr<StatCache> StatCache::in_memory() {
  return std::unique_ptr<StatCache>(new StatCache());
}

Result<std::unique_ptr<StatCache>> StatCache::open(const std::filesystem::path& db_path) {
  std::error_code ec;
  std::filesystem::create_directories(db_path.parent_path(), ec);
  if (ec)
    return Error(ErrorCode::io, "create " + db_path.parent_path().string() + ": " + ec.message());
  auto cache = std::unique_ptr<StatCache>(new StatCache());
  cache->m_db = std::make_unique<Db>();
  cache->m_db->path = db_path;
  sqlite3*& db = cache->m_db->handle;
  if (sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
      SQLITE_OK)
    return sqlite_error(db, db_path, "open");
  sqlite3_busy_timeout(db, 10000);
  ENVD_TRY_VOID(exec(db, db_path, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"));
  ENVD_TRY_VOID(exec(
      db, db_path, "CREATE TABLE IF NOT EXISTS stat_roots (root TEXT PRIMARY KEY, entries BLOB)"));
  return cache;
}

Result<const StatCacheRoot*> StatCache::root(const std::string& root) {
  if (auto it = m_roots.find(root); it != m_roots.end()) return it->second.get();
  auto entry = std::make_unique<StatCacheRoot>();
  if (auto it = m_pending.find(root); it != m_pending.end()) {
    *entry = StatCacheRoot::unpack(it->second);  // replaced and not yet saved
    auto* raw = entry.get();
    m_roots[root] = std::move(entry);
    return raw;
  }
  if (m_db) {
    join_writer();  // the database is the writer's until then; and the root may be in its write
    sqlite3* db = m_db->handle;
    // The row id and size first, then the blob straight into our buffer (sqlite3_blob_read):
    // reading the column would first assemble a second copy of its megabytes inside SQLite.
    // One read transaction: another process may replace the row in between.
    ENVD_TRY_VOID(exec(db, m_db->path, "BEGIN"));
    auto loaded = read_root(root);
    (void)exec(db, m_db->path, "COMMIT");
    if (!loaded) return loaded.error();
    *entry = std::move(*loaded);
  }
  auto* raw = entry.get();
  m_roots[root] = std::move(entry);
  return raw;
}

Result<StatCacheRoot> StatCache::read_root(const std::string& root) {
  sqlite3* db = m_db->handle;
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db, "SELECT rowid, length(entries) FROM stat_roots WHERE root = ?", -1,
                         &stmt, nullptr) != SQLITE_OK)
    return sqlite_error(db, m_db->path, "read");
  sqlite3_bind_text(stmt, 1, root.c_str(), static_cast<int>(root.size()), SQLITE_STATIC);
  int rc = sqlite3_step(stmt);
  sqlite3_int64 rowid = rc == SQLITE_ROW ? sqlite3_column_int64(stmt, 0) : 0;
  int size = rc == SQLITE_ROW ? sqlite3_column_int(stmt, 1) : 0;
  sqlite3_finalize(stmt);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return sqlite_error(db, m_db->path, "read");
  if (rc != SQLITE_ROW || size <= 0) return StatCacheRoot{};
  sqlite3_blob* blob = nullptr;
  std::string bytes(static_cast<std::size_t>(size), '\0');
  bool ok = sqlite3_blob_open(db, "main", "stat_roots", "entries", rowid, 0, &blob) == SQLITE_OK &&
            sqlite3_blob_read(blob, bytes.data(), size, 0) == SQLITE_OK;
  sqlite3_blob_close(blob);
  if (!ok) return sqlite_error(db, m_db->path, "read");
  return StatCacheRoot::unpack(std::move(bytes));
}

void StatCache::replace(const std::string& root, const std::vector<StatCacheRoot::Entry>& entries) {
  replace_packed(root, StatCacheRoot::pack(entries));
}

void StatCache::replace_packed(const std::string& root, std::string packed) {
  // Unpacked again only if root() asks for it: a snapshot replaces each root once, after its last
  // lookup, so this usually saves a copy of the whole buffer.
  m_roots.erase(root);
  m_pending[root] = std::move(packed);
}

void StatCache::start_save() {
  if (!m_db || m_pending.empty()) return;
  join_writer();
  if (m_writer_error) return;  // save() reports it; what is pending then waits for save()
  m_writing = std::move(m_pending);
  m_pending.clear();
  m_writer = std::thread([this] {
    if (auto r = write(m_writing); !r) m_writer_error = r.error();
  });
}

Result<void> StatCache::save() {
  join_writer();
  if (m_writer_error) {
    Error e = std::move(*m_writer_error);
    m_writer_error.reset();
    return e;
  }
  if (!m_db) {  // in memory: what was replaced is all there is
    for (auto& [root, blob] : m_pending)
      m_roots[root] = std::make_unique<StatCacheRoot>(StatCacheRoot::unpack(std::move(blob)));
    m_pending.clear();
    return {};
  }
  if (m_pending.empty()) return {};
  ENVD_TRY_VOID(write(m_pending));
  m_pending.clear();
  return {};
}

Result<void> StatCache::write(const std::map<std::string, std::string>& roots) {
  sqlite3* db = m_db->handle;
  const auto& path = m_db->path;
  ENVD_TRY_VOID(exec(db, path, "BEGIN IMMEDIATE"));
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db, "INSERT OR REPLACE INTO stat_roots (root, entries) VALUES (?, ?)", -1,
                         &stmt, nullptr) != SQLITE_OK) {
    auto e = sqlite_error(db, path, "write");
    (void)exec(db, path, "ROLLBACK");
    return e;
  }
  for (const auto& [root, blob] : roots) {
    sqlite3_bind_text(stmt, 1, root.c_str(), static_cast<int>(root.size()), SQLITE_STATIC);
    sqlite3_bind_blob(stmt, 2, blob.data(), static_cast<int>(blob.size()), SQLITE_STATIC);
    if (sqlite3_step(stmt) != SQLITE_DONE) {
      auto err = sqlite_error(db, path, "write");
      sqlite3_finalize(stmt);
      (void)exec(db, path, "ROLLBACK");
      return err;
    }
    sqlite3_reset(stmt);
  }
  sqlite3_finalize(stmt);
  return exec(db, path, "COMMIT");
}

}  // namespace envd::agent
