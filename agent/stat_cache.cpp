// SQLite persistence of the stat cache: one row per root holding its entries packed and sorted.
// Reading or writing ~50k entries is then one row (milliseconds), where a row per file costs
// hundreds of milliseconds to write and an allocation per entry to read.
#include "agent/stat_cache.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <cstring>

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

}  // namespace

std::string StatCacheRoot::pack(const std::vector<Entry>& entries) {
  std::string out(k_magic);
  put<std::uint64_t>(out, entries.size());
  for (const auto& e : entries) {
    put<std::uint32_t>(out, static_cast<std::uint32_t>(e.path.size()));
    out += e.path;
    put(out, e.key.dev);
    put(out, e.key.ino);
    put(out, e.key.size);
    put(out, e.key.mtime_ns);
    put(out, e.key.ctime_ns);
    auto hex = e.digest.hex();
    for (std::size_t i = 0; i < 64; i += 2)
      out += static_cast<char>((hex_value(hex[i]) << 4) | hex_value(hex[i + 1]));
  }
  return out;
}

StatCacheRoot StatCacheRoot::unpack(std::string blob) {
  StatCacheRoot root;
  root.m_blob = std::move(blob);
  std::string_view in(root.m_blob);
  std::uint64_t count = 0;
  if (in.substr(0, k_magic.size()) != k_magic) return StatCacheRoot{};
  in.remove_prefix(k_magic.size());
  if (!get(in, count) || count > in.size()) return StatCacheRoot{};
  root.m_slots.reserve(count);
  for (std::uint64_t i = 0; i < count; ++i) {
    Slot s{};
    if (!get(in, s.path_size) || in.size() < s.path_size) return StatCacheRoot{};
    s.path_offset = static_cast<std::uint32_t>(in.data() - root.m_blob.data());
    in.remove_prefix(s.path_size);
    if (!get(in, s.key.dev) || !get(in, s.key.ino) || !get(in, s.key.size) ||
        !get(in, s.key.mtime_ns) || !get(in, s.key.ctime_ns) || !get(in, s.digest))
      return StatCacheRoot{};
    root.m_slots.push_back(s);
  }
  return root;
}

std::optional<oci::Digest> StatCacheRoot::lookup(std::string_view path, const StatKey& key) const {
  auto path_of = [&](const Slot& s) {
    return std::string_view(m_blob.data() + s.path_offset, s.path_size);
  };
  auto it = std::lower_bound(m_slots.begin(), m_slots.end(), path,
                             [&](const Slot& s, std::string_view p) { return path_of(s) < p; });
  if (it == m_slots.end() || path_of(*it) != path || !(it->key == key)) return std::nullopt;
  return oci::Digest::from_bytes(it->digest);
}

struct StatCache::Db {
  sqlite3* handle = nullptr;
  std::filesystem::path path;
  ~Db() { sqlite3_close(handle); }
};

StatCache::~StatCache() = default;

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
  if (m_db) {
    sqlite3* db = m_db->handle;
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db, "SELECT entries FROM stat_roots WHERE root = ?", -1, &stmt,
                           nullptr) != SQLITE_OK)
      return sqlite_error(db, m_db->path, "read");
    sqlite3_bind_text(stmt, 1, root.c_str(), static_cast<int>(root.size()), SQLITE_STATIC);
    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW) {
      const auto* data = static_cast<const char*>(sqlite3_column_blob(stmt, 0));
      std::string blob(data != nullptr ? data : "",
                       static_cast<std::size_t>(sqlite3_column_bytes(stmt, 0)));
      *entry = StatCacheRoot::unpack(std::move(blob));
    }
    sqlite3_finalize(stmt);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return sqlite_error(db, m_db->path, "read");
  }
  auto* raw = entry.get();
  m_roots[root] = std::move(entry);
  return raw;
}

void StatCache::replace(const std::string& root, const std::vector<StatCacheRoot::Entry>& entries) {
  auto packed = StatCacheRoot::pack(entries);
  m_roots[root] = std::make_unique<StatCacheRoot>(StatCacheRoot::unpack(packed));
  m_pending[root] = std::move(packed);
}

Result<void> StatCache::save() {
  if (!m_db || m_pending.empty()) {
    m_pending.clear();
    return {};
  }
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
  for (const auto& [root, blob] : m_pending) {
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
  ENVD_TRY_VOID(exec(db, path, "COMMIT"));
  m_pending.clear();
  return {};
}

}  // namespace envd::agent
