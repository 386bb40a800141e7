// RegistryIndex over SQLite: schema, name validation and the queries the registry server and the
// image builder run. One connection behind a mutex; every write is one transaction.
#include "builder/registry_index.hpp"

#include <sqlite3.h>

#include <chrono>
#include <mutex>
#include <utility>

#include "envd/util/sqlite_statement.hpp"

namespace envd::builder {
namespace {

bool is_lower_alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

// One path component: [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*, checked by hand rather than with
// std::regex (which recurses per character and is slow).
bool is_valid_component(std::string_view c) {
  std::size_t i = 0;
  for (;;) {
    std::size_t start = i;
    while (i < c.size() && is_lower_alnum(c[i])) ++i;
    if (i == start) return false;  // separators must sit between alphanumerics
    if (i == c.size()) return true;
    if (c[i] == '.') {
      ++i;
    } else if (c[i] == '_') {
      ++i;
      if (i < c.size() && c[i] == '_') ++i;
    } else if (c[i] == '-') {
      while (i < c.size() && c[i] == '-') ++i;
    } else {
      return false;
    }
  }
}

std::int64_t now_unix() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

constexpr int k_schema_version = 1;

constexpr const char* k_schema = R"sql(
CREATE TABLE IF NOT EXISTS repositories(
  name TEXT PRIMARY KEY,
  created INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blob_links(
  repo TEXT NOT NULL,
  digest TEXT NOT NULL,
  PRIMARY KEY(repo, digest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS manifests(
  repo TEXT NOT NULL,
  digest TEXT NOT NULL,
  media_type TEXT NOT NULL,
  created INTEGER NOT NULL,
  PRIMARY KEY(repo, digest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tags(
  repo TEXT NOT NULL,
  tag TEXT NOT NULL,
  digest TEXT NOT NULL,
  updated INTEGER NOT NULL,
  PRIMARY KEY(repo, tag)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uploads(
  id TEXT PRIMARY KEY,
  repo TEXT NOT NULL,
  received INTEGER NOT NULL,
  created INTEGER NOT NULL
) WITHOUT ROWID;
)sql";

using Stmt = SqliteStatement;

Result<void> check_repo(std::string_view repo) {
  if (!is_valid_repository(repo))
    return Error(ErrorCode::invalid_argument,
                 "invalid repository name \"" + std::string(repo) + "\"");
  return {};
}

}  // namespace

bool is_valid_repository(std::string_view name) {
  if (name.empty() || name.size() > 255) return false;
  std::size_t start = 0;
  for (;;) {
    std::size_t slash = name.find('/', start);
    if (!is_valid_component(name.substr(start, slash - start))) return false;
    if (slash == std::string_view::npos) return true;
    start = slash + 1;
  }
}

bool is_valid_tag(std::string_view tag) {
  if (tag.empty() || tag.size() > 128) return false;
  auto word = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  };
  if (!word(tag[0])) return false;
  for (char c : tag.substr(1))
    if (!word(c) && c != '.' && c != '-') return false;
  return true;
}

struct RegistryIndex::Db {
  sqlite3* handle = nullptr;
  std::filesystem::path path;
  std::mutex mutex;
  ~Db() { sqlite3_close(handle); }

  Error error(std::string_view what) const {
    return Error(ErrorCode::io, "registry index " + path.string() + ": " + std::string(what) +
                                    ": " + sqlite3_errmsg(handle));
  }
  Result<void> exec(const char* sql) {
    char* msg = nullptr;
    if (sqlite3_exec(handle, sql, nullptr, nullptr, &msg) != SQLITE_OK) {
      std::string text = msg != nullptr ? msg : "unknown error";
      sqlite3_free(msg);
      return Error(ErrorCode::io, "registry index " + path.string() + ": " + text);
    }
    return {};
  }
  // Runs a statement that returns no rows.
  Result<void> run(Stmt& s, std::string_view what) {
    int rc = s.step();
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) return error(what);
    return {};
  }
  // Statements shared by link_blob, put_manifest and commit_image; run inside a transaction.
  Result<void> link(const std::string& repo, const oci::Digest& digest) {
    Stmt s(handle, "INSERT OR IGNORE INTO blob_links(repo, digest) VALUES(?1, ?2)");
    s.bind(1, repo).bind(2, digest.view());
    return run(s, "link blob " + digest.str());
  }
  Result<void> manifest(const std::string& repo, const oci::Digest& digest,
                        const std::string& media_type, const std::optional<std::string>& tag) {
    Stmt m(handle,
           "INSERT INTO manifests(repo, digest, media_type, created) VALUES(?1, ?2, ?3, ?4) "
           "ON CONFLICT(repo, digest) DO UPDATE SET media_type = excluded.media_type");
    m.bind(1, repo).bind(2, digest.view()).bind(3, media_type).bind(4, now_unix());
    ENVD_TRY_VOID(run(m, "put manifest " + digest.str()));
    if (!tag) return {};
    Stmt t(handle,
           "INSERT INTO tags(repo, tag, digest, updated) VALUES(?1, ?2, ?3, ?4) "
           "ON CONFLICT(repo, tag) DO UPDATE SET digest = excluded.digest, updated = "
           "excluded.updated");
    t.bind(1, repo).bind(2, *tag).bind(3, digest.view()).bind(4, now_unix());
    return run(t, "tag " + *tag);
  }

  // Runs `body` inside BEGIN IMMEDIATE ... COMMIT, rolling back on failure.
  template <class F>
  Result<void> transaction(F&& body) {
    ENVD_TRY_VOID(exec("BEGIN IMMEDIATE"));
    Result<void> r = body();
    if (!r) {
      (void)exec("ROLLBACK");
      return r;
    }
    return exec("COMMIT");
  }
  Result<void> ensure_repo(const std::string& repo) {
    Stmt s(handle, "INSERT OR IGNORE INTO repositories(name, created) VALUES(?1, ?2)");
    s.bind(1, repo).bind(2, now_unix());
    return run(s, "add repository");
  }
};

RegistryIndex::RegistryIndex(std::unique_ptr<Db> db) : m_db(std::move(db)) {}
RegistryIndex::~RegistryIndex() = default;

Result<std::unique_ptr<RegistryIndex>> RegistryIndex::open(const std::filesystem::path& path) {
  std::error_code ec;
  if (path.has_parent_path()) {
    std::filesystem::create_directories(path.parent_path(), ec);
    if (ec) return Error::from_errno("create directory " + path.parent_path().string(), ec.value());
  }
  auto db = std::make_unique<Db>();
  db->path = path;
  int rc =
      sqlite3_open_v2(path.c_str(), &db->handle,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    if (db->handle == nullptr) return Error(ErrorCode::io, "open registry index " + path.string());
    return db->error("open");
  }
  sqlite3_busy_timeout(db->handle, 5000);
  ENVD_TRY_VOID(db->exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"));
  {
    Stmt s(db->handle, "PRAGMA user_version");
    if (s.step() != SQLITE_ROW) return db->error("read schema version");
    if (s.int64(0) > k_schema_version)
      return Error(ErrorCode::failed_precondition,
                   "registry index " + path.string() + " has schema version " +
                       std::to_string(s.int64(0)) + ", newer than this envd understands (" +
                       std::to_string(k_schema_version) + ")");
  }
  auto created = db->transaction([&]() -> Result<void> {
    ENVD_TRY_VOID(db->exec(k_schema));
    return db->exec("PRAGMA user_version=1");
  });
  if (!created) return created.error();
  return std::unique_ptr<RegistryIndex>(new RegistryIndex(std::move(db)));
}

Result<void> RegistryIndex::link_blob(const std::string& repo, const oci::Digest& digest) {
  ENVD_TRY_VOID(check_repo(repo));
  std::lock_guard lock(m_db->mutex);
  return m_db->transaction([&]() -> Result<void> {
    ENVD_TRY_VOID(m_db->ensure_repo(repo));
    return m_db->link(repo, digest);
  });
}

Result<bool> RegistryIndex::has_blob(const std::string& repo, const oci::Digest& digest) {
  ENVD_TRY_VOID(check_repo(repo));
  std::lock_guard lock(m_db->mutex);
  Stmt s(m_db->handle, "SELECT 1 FROM blob_links WHERE repo = ?1 AND digest = ?2");
  s.bind(1, repo).bind(2, digest.view());
  int rc = s.step();
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return m_db->error("look up blob");
  return rc == SQLITE_ROW;
}

Result<void> RegistryIndex::put_manifest(const std::string& repo, const oci::Digest& digest,
                                         const std::string& media_type,
                                         const std::optional<std::string>& tag) {
  ENVD_TRY_VOID(check_repo(repo));
  if (tag && !is_valid_tag(*tag))
    return Error(ErrorCode::invalid_argument, "invalid tag \"" + *tag + "\"");
  if (media_type.empty()) return Error(ErrorCode::invalid_argument, "empty manifest media type");
  std::lock_guard lock(m_db->mutex);
  return m_db->transaction([&]() -> Result<void> {
    ENVD_TRY_VOID(m_db->ensure_repo(repo));
    return m_db->manifest(repo, digest, media_type, tag);
  });
}

Result<void> RegistryIndex::commit_image(const std::string& repo,
                                         const std::vector<oci::Digest>& blobs,
                                         const oci::Digest& manifest, const std::string& media_type,
                                         const std::vector<std::string>& tags) {
  ENVD_TRY_VOID(check_repo(repo));
  for (const auto& tag : tags)
    if (!is_valid_tag(tag))
      return Error(ErrorCode::invalid_argument, "invalid tag \"" + tag + "\"");
  if (media_type.empty()) return Error(ErrorCode::invalid_argument, "empty manifest media type");
  std::lock_guard lock(m_db->mutex);
  return m_db->transaction([&]() -> Result<void> {
    ENVD_TRY_VOID(m_db->ensure_repo(repo));
    for (const auto& b : blobs) ENVD_TRY_VOID(m_db->link(repo, b));
    ENVD_TRY_VOID(m_db->manifest(repo, manifest, media_type, std::nullopt));
    for (const auto& tag : tags) ENVD_TRY_VOID(m_db->manifest(repo, manifest, media_type, tag));
    return {};
  });
}

Result<bool> RegistryIndex::has_manifest(const std::string& repo, const oci::Digest& digest) {
  ENVD_TRY_VOID(check_repo(repo));
  std::lock_guard lock(m_db->mutex);
  Stmt s(m_db->handle, "SELECT 1 FROM manifests WHERE repo = ?1 AND digest = ?2");
  s.bind(1, repo).bind(2, digest.view());
  int rc = s.step();
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return m_db->error("look up manifest");
  return rc == SQLITE_ROW;
}

Result<std::optional<ManifestRef>> RegistryIndex::resolve(const std::string& repo,
                                                          const std::string& reference) {
  ENVD_TRY_VOID(check_repo(repo));
  const bool by_digest = reference.find(':') != std::string::npos;
  if (by_digest) {
    auto d = oci::Digest::parse(reference);
    if (!d) return d.error();
  } else if (!is_valid_tag(reference)) {
    return Error(ErrorCode::invalid_argument, "invalid tag \"" + reference + "\"");
  }
  std::lock_guard lock(m_db->mutex);
  Stmt s(m_db->handle,
         by_digest ? "SELECT digest, media_type FROM manifests WHERE repo = ?1 AND digest = ?2"
                   : "SELECT m.digest, m.media_type FROM tags t JOIN manifests m "
                     "ON m.repo = t.repo AND m.digest = t.digest WHERE t.repo = ?1 AND t.tag = ?2");
  s.bind(1, repo).bind(2, reference);
  int rc = s.step();
  if (rc == SQLITE_DONE) return std::optional<ManifestRef>();
  if (rc != SQLITE_ROW) return m_db->error("resolve " + repo + ":" + reference);
  auto digest = oci::Digest::parse(s.text(0));
  if (!digest) return Error(ErrorCode::internal, "corrupt digest in " + m_db->path.string());
  return std::optional<ManifestRef>(ManifestRef{*digest, s.text(1)});
}

Result<std::vector<std::string>> RegistryIndex::tags(const std::string& repo) {
  ENVD_TRY_VOID(check_repo(repo));
  std::lock_guard lock(m_db->mutex);
  Stmt s(m_db->handle, "SELECT tag FROM tags WHERE repo = ?1 ORDER BY tag");
  s.bind(1, repo);
  std::vector<std::string> out;
  int rc;
  while ((rc = s.step()) == SQLITE_ROW) out.push_back(s.text(0));
  if (rc != SQLITE_DONE) return m_db->error("list tags of " + repo);
  return out;
}

Result<bool> RegistryIndex::repository_exists(const std::string& repo) {
  ENVD_TRY_VOID(check_repo(repo));
  std::lock_guard lock(m_db->mutex);
  Stmt s(m_db->handle, "SELECT 1 FROM repositories WHERE name = ?1");
  s.bind(1, repo);
  int rc = s.step();
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return m_db->error("look up repository");
  return rc == SQLITE_ROW;
}

Result<void> RegistryIndex::create_upload(const std::string& id, const std::string& repo) {
  ENVD_TRY_VOID(check_repo(repo));
  std::lock_guard lock(m_db->mutex);
  return m_db->transaction([&]() -> Result<void> {
    ENVD_TRY_VOID(m_db->ensure_repo(repo));
    Stmt s(m_db->handle, "INSERT INTO uploads(id, repo, received, created) VALUES(?1, ?2, 0, ?3)");
    s.bind(1, id).bind(2, repo).bind(3, now_unix());
    return m_db->run(s, "create upload " + id);
  });
}

Result<std::optional<UploadSession>> RegistryIndex::upload(const std::string& id) {
  std::lock_guard lock(m_db->mutex);
  Stmt s(m_db->handle, "SELECT id, repo, received, created FROM uploads WHERE id = ?1");
  s.bind(1, id);
  int rc = s.step();
  if (rc == SQLITE_DONE) return std::optional<UploadSession>();
  if (rc != SQLITE_ROW) return m_db->error("look up upload " + id);
  return std::optional<UploadSession>(
      UploadSession{s.text(0), s.text(1), static_cast<std::uint64_t>(s.int64(2)), s.int64(3)});
}

Result<void> RegistryIndex::set_upload_received(const std::string& id, std::uint64_t received) {
  std::lock_guard lock(m_db->mutex);
  Stmt s(m_db->handle, "UPDATE uploads SET received = ?2 WHERE id = ?1");
  s.bind(1, id).bind(2, static_cast<std::int64_t>(received));
  return m_db->run(s, "update upload " + id);
}

Result<void> RegistryIndex::remove_upload(const std::string& id) {
  std::lock_guard lock(m_db->mutex);
  Stmt s(m_db->handle, "DELETE FROM uploads WHERE id = ?1");
  s.bind(1, id);
  return m_db->run(s, "remove upload " + id);
}

Result<std::vector<UploadSession>> RegistryIndex::uploads_created_before(std::int64_t before) {
  std::lock_guard lock(m_db->mutex);
  Stmt s(m_db->handle, "SELECT id, repo, received, created FROM uploads WHERE created < ?1");
  s.bind(1, before);
  std::vector<UploadSession> out;
  int rc;
  while ((rc = s.step()) == SQLITE_ROW)
    out.push_back({s.text(0), s.text(1), static_cast<std::uint64_t>(s.int64(2)), s.int64(3)});
  if (rc != SQLITE_DONE) return m_db->error("list stale uploads");
  return out;
}

Result<std::uint64_t> RegistryIndex::upload_bytes_total() {
  std::lock_guard lock(m_db->mutex);
  Stmt s(m_db->handle, "SELECT COALESCE(SUM(received), 0) FROM uploads");
  if (s.step() != SQLITE_ROW) return m_db->error("sum upload sizes");
  return static_cast<std::uint64_t>(s.int64(0));
}

}  // namespace envd::builder
