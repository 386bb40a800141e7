// NodeStore: data dir layout, flock-based locks and staging, SQLite state (images, references,
// layers) and leases. Disk usage and the garbage collector are in node_store_gc.cpp.
#include "envd/node/node_store.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <mutex>
#include <set>
#include <utility>

#include "envd/node/node_store_internal.hpp"
#include "envd/util/atomic_file.hpp"
#include "envd/util/json_detail.hpp"
#include "envd/util/log.hpp"
#include "envd/util/unique_fd.hpp"

namespace envd::node {
namespace fs = std::filesystem;
using namespace store_internal;
namespace {

constexpr int k_busy_timeout_ms = 60000;

constexpr const char* k_schema = R"sql(
CREATE TABLE IF NOT EXISTS images(
  manifest TEXT PRIMARY KEY,
  media_type TEXT NOT NULL,
  manifest_size INTEGER NOT NULL,
  config_digest TEXT NOT NULL,
  config_media_type TEXT NOT NULL,
  config_size INTEGER NOT NULL,
  config_json TEXT NOT NULL,
  layers TEXT NOT NULL,
  pulled_at INTEGER NOT NULL,
  last_used INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS refs(
  reference TEXT PRIMARY KEY,
  manifest TEXT NOT NULL,
  updated INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS layers(
  diff_id TEXT PRIMARY KEY,
  bytes INTEGER NOT NULL,
  entries INTEGER NOT NULL,
  whiteouts INTEGER
) WITHOUT ROWID;
)sql";
// Stores made before layers had a whiteouts column get it (NULL: unknown).
constexpr const char* k_add_whiteouts = "ALTER TABLE layers ADD COLUMN whiteouts INTEGER";

int flock_retry(int fd, int op) {
  for (;;) {
    int rc = ::flock(fd, op);
    if (rc == 0 || errno != EINTR) return rc;
  }
}

std::string layers_to_json(const std::vector<LayerRecord>& layers) {
  nlohmann::json arr = nlohmann::json::array();
  for (const auto& l : layers)
    arr.push_back({{"mediaType", l.blob.media_type},
                   {"digest", l.blob.digest.str()},
                   {"size", l.blob.size},
                   {"diffId", l.diff_id.str()}});
  return arr.dump();
}

}  // namespace

namespace store_internal {

Result<FileLock> acquire_lock(const fs::path& path, int op) {
  for (int attempt = 0; attempt < 64; ++attempt) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) return Error::from_errno("open lock file " + path.string(), errno);
    FileLock lock(fd);
    if (flock_retry(fd, op) != 0) {
      if (errno == EWOULDBLOCK) return FileLock();
      return Error::from_errno("lock " + path.string(), errno);
    }
    struct stat held {
    }, named{};
    if (::fstat(fd, &held) != 0) return Error::from_errno("stat lock " + path.string(), errno);
    if (::stat(path.c_str(), &named) == 0 && named.st_ino == held.st_ino &&
        named.st_dev == held.st_dev)
      return lock;
  }
  return Error(ErrorCode::io, "lock " + path.string() + ": removed repeatedly");
}

Result<void> remove_tree(const fs::path& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
  if (!ec) return {};
  for (auto it = fs::recursive_directory_iterator(path, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (it->is_directory(ec) && !it->is_symlink(ec)) ::chmod(it->path().c_str(), 0700);
  }
  ::chmod(path.c_str(), 0700);
  ec.clear();
  fs::remove_all(path, ec);
  if (ec) return Error::from_errno("remove " + path.string(), ec.value());
  return {};
}

std::vector<std::string> list_names(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec))
    out.push_back(it->path().filename().string());
  return out;
}

std::optional<oci::Digest> digest_of_name(std::string_view hex) {
  auto d = oci::Digest::parse("sha256:" + std::string(hex));
  if (!d) return std::nullopt;
  return *d;
}

Result<std::vector<LayerRecord>> layers_from_json(std::string_view text) {
  ENVD_TRY(auto arr, json::parse(text, "layer list in state"));
  std::vector<LayerRecord> out;
  try {
    for (const auto& j : arr) {
      ENVD_TRY(auto digest, oci::Digest::parse(j.at("digest").get<std::string>()));
      ENVD_TRY(auto diff_id, oci::Digest::parse(j.at("diffId").get<std::string>()));
      LayerRecord r{
          oci::Descriptor{
              j.at("mediaType").get<std::string>(), digest, j.at("size").get<std::uint64_t>(), {}},
          diff_id};
      out.push_back(std::move(r));
    }
  } catch (const nlohmann::json::exception& e) {
    return Error(ErrorCode::io, std::string("layer list in state: ") + e.what());
  }
  return out;
}

}  // namespace store_internal

// ---- FileLock, StagingDir ----

FileLock::~FileLock() {
  if (m_fd >= 0) ::close(m_fd);
}
FileLock::FileLock(FileLock&& other) noexcept : m_fd(std::exchange(other.m_fd, -1)) {}
FileLock& FileLock::operator=(FileLock&& other) noexcept {
  if (this != &other) {
    if (m_fd >= 0) ::close(m_fd);
    m_fd = std::exchange(other.m_fd, -1);
  }
  return *this;
}

StagingDir::StagingDir(fs::path path, fs::path lock_path, FileLock lock)
    : m_path(std::move(path)), m_lock_path(std::move(lock_path)), m_lock(std::move(lock)) {}

StagingDir::~StagingDir() {
  cleanup();
}

StagingDir& StagingDir::operator=(StagingDir&& other) noexcept {
  if (this != &other) {
    cleanup();
    m_path = std::move(other.m_path);
    m_lock_path = std::move(other.m_lock_path);
    m_lock = std::move(other.m_lock);
    m_committed = other.m_committed;
    other.m_path.clear();
  }
  return *this;
}

void StagingDir::cleanup() {
  if (m_path.empty() || !m_lock.held()) return;
  if (!m_committed) {
    if (auto r = remove_tree(m_path); !r)
      log::warn("node", "could not remove staging", {{"error", r.error().message()}});
  }
  ::unlink(m_lock_path.c_str());  // while still holding it: see acquire_lock
  m_lock = FileLock();
  m_path.clear();
}

// ---- NodeStore ----

NodeStore::NodeStore(std::unique_ptr<Impl> impl) : m_impl(std::move(impl)) {}
NodeStore::~NodeStore() = default;

Result<std::unique_ptr<NodeStore>> NodeStore::open(const fs::path& dir, NodeStoreOptions options) {
  auto impl = std::make_unique<Impl>();
  std::error_code ec;
  impl->dir = fs::absolute(dir, ec).lexically_normal();
  if (ec) return Error::from_errno("resolve data dir " + dir.string(), ec.value());
  if (!options.now) {
    options.now = [] {
      return std::chrono::duration_cast<std::chrono::seconds>(
                 std::chrono::system_clock::now().time_since_epoch())
          .count();
    };
  }
  impl->options = std::move(options);
  const std::string what = "open node data dir " + impl->dir.string();
  for (const char* sub : {"layers", "envs", "staging", "locks"}) {
    fs::create_directories(impl->dir / sub, ec);
    if (ec) return Error::from_errno(what + ": create " + sub, ec.value());
  }
  auto blobs = store::FsBlobStore::create(impl->dir);
  if (!blobs) return blobs.error().with_context(what);
  impl->blobs = std::move(*blobs);
  if (auto r = impl->clean_staging(); !r) return r.error().with_context(what);
  if (!impl->options.boot_id) impl->options.boot_id = current_boot_id();
  if (!impl->options.boot_id->empty()) {
    Impl& im = *impl;
    auto recovered = recover_deferred_sync(im.dir, *im.options.boot_id,
                                           [&im](const fs::path& p) { return im.retire(p); });
    if (!recovered) return recovered.error().with_context(what);
  }

  fs::path db_path = impl->dir / "state.sqlite";
  if (sqlite3_open_v2(db_path.c_str(), &impl->db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                      nullptr) != SQLITE_OK) {
    return Error(ErrorCode::io, what + ": open " + db_path.string() + ": " +
                                    (impl->db ? sqlite3_errmsg(impl->db) : "out of memory"));
  }
  // Several processes share the file: wait for each other's transactions rather than fail.
  sqlite3_busy_timeout(impl->db, k_busy_timeout_ms);
  // No checkpoint when the connection closes: by default the last connection to close copies the
  // WAL into the database and fsyncs both, which a one-shot `envd node run` would pay on every
  // call (tens to hundreds of ms on a busy disk). The WAL stays and is checkpointed when it grows
  // past SQLite's auto-checkpoint size; durability is that of synchronous=NORMAL either way.
  // https://www.sqlite.org/c3ref/c_dbconfig_defensive.html#sqlitedbconfignockptonclose
  sqlite3_db_config(impl->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr);
  ENVD_TRY_VOID(impl->exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;", what));
  ENVD_TRY_VOID(impl->exec(k_schema, what));
  if (!Stmt(impl->db, "SELECT whiteouts FROM layers LIMIT 0").ok()) {
    auto added = impl->exec(k_add_whiteouts, what);
    // Another process may have added it meanwhile.
    if (!added && added.error().message().find("duplicate column") == std::string::npos)
      return added.error();
  }
  return std::unique_ptr<NodeStore>(new NodeStore(std::move(impl)));
}

const fs::path& NodeStore::dir() const {
  return m_impl->dir;
}
store::FsBlobStore& NodeStore::blobs() {
  return *m_impl->blobs;
}
std::int64_t NodeStore::now() const {
  return m_impl->options.now();
}

fs::path NodeStore::layer_dir(const oci::Digest& diff_id) const {
  return m_impl->dir / "layers" / std::string(diff_id.hex());
}
fs::path NodeStore::env_dir(const oci::Digest& manifest) const {
  return m_impl->dir / "envs" / std::string(manifest.hex());
}
fs::path NodeStore::rootfs_dir(const oci::Digest& manifest) const {
  return env_dir(manifest) / "rootfs";
}
bool NodeStore::has_layer(const oci::Digest& diff_id) const {
  struct stat st {};
  return ::lstat(layer_dir(diff_id).c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool NodeStore::has_env(const oci::Digest& manifest) const {
  struct stat st {};
  return ::lstat(env_dir(manifest).c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

Result<StagingDir> NodeStore::make_staging(std::string_view purpose) {
  for (int attempt = 0; attempt < 16; ++attempt) {
    std::string name = std::string(purpose) + "-" + random_name();
    fs::path path = m_impl->staging() / name;
    fs::path lock_path = m_impl->staging() / (name + ".lock");
    ENVD_TRY(auto lock, acquire_lock(lock_path, LOCK_EX));
    if (::mkdir(path.c_str(), 0755) != 0) {
      if (errno == EEXIST) continue;
      auto e = Error::from_errno("create staging " + path.string(), errno);
      ::unlink(lock_path.c_str());
      return e;
    }
    return StagingDir(path, lock_path, std::move(lock));
  }
  return Error(ErrorCode::io, "create staging in " + m_impl->staging().string() + ": no free name");
}

Result<void> NodeStore::commit_staging(StagingDir& staging, const fs::path& final_path,
                                       Durability durability) {
  // The tree's data must be on disk before its name says it is complete: one syncfs() flushes
  // the whole file system (cheaper than an fsync per file of a layer with thousands of them).
  // Deferred: a record already names `final_path`, and a restart before the next settle removes it.
  if (durability == Durability::durable) {
    int fd = ::open(staging.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return Error::from_errno("open " + staging.path().string(), errno);
    UniqueFd dir_fd(fd);
    if (::syncfs(fd) != 0) return Error::from_errno("syncfs " + staging.path().string(), errno);
  }
  // rename(2) of a directory onto an existing non-empty directory fails: the other owner won.
  if (::rename(staging.path().c_str(), final_path.c_str()) != 0) {
    if (errno == ENOTEMPTY || errno == EEXIST) return {};  // ~StagingDir removes ours
    return Error::from_errno("rename " + staging.path().string() + " to " + final_path.string(),
                             errno);
  }
  staging.mark_committed();
  if (durability == Durability::deferred) return {};
  return fsync_directory(final_path.parent_path());
}

Result<DeferredSyncRecord> NodeStore::begin_deferred_sync(
    const std::vector<fs::path>& final_paths) {
  const std::string& boot = *m_impl->options.boot_id;
  if (boot.empty()) return DeferredSyncRecord();
  std::vector<std::string> entries;
  for (const auto& p : final_paths) entries.push_back(p.lexically_relative(m_impl->dir).string());
  return node::begin_deferred_sync(m_impl->dir, boot, entries);
}

Result<std::size_t> NodeStore::settle_deferred_sync(std::chrono::seconds min_age) {
  const std::string& boot = *m_impl->options.boot_id;
  if (boot.empty()) return std::size_t{0};
  return node::settle_deferred_sync(m_impl->dir, boot, min_age);
}

Result<FileLock> NodeStore::lock(LockKind kind, const oci::Digest& digest) {
  const char* prefix = kind == LockKind::blob    ? "blob-"
                       : kind == LockKind::layer ? "layer-"
                                                 : "env-";
  return acquire_lock(m_impl->locks() / (prefix + std::string(digest.hex()) + ".lock"), LOCK_EX);
}

Result<FileLock> NodeStore::lock_pulls_shared() {
  return acquire_lock(m_impl->locks() / "pulls.lock", LOCK_SH);
}

Result<void> NodeStore::record_layer(const oci::Digest& diff_id, std::uint64_t bytes,
                                     std::uint64_t entries, std::uint64_t whiteouts) {
  std::lock_guard guard(m_impl->db_mutex);
  Stmt q(m_impl->db,
         "INSERT OR REPLACE INTO layers(diff_id, bytes, entries, whiteouts) "
         "VALUES(?1, ?2, ?3, ?4)");
  q.bind(1, diff_id.view())
      .bind(2, static_cast<std::int64_t>(bytes))
      .bind(3, static_cast<std::int64_t>(entries))
      .bind(4, static_cast<std::int64_t>(whiteouts));
  return q.run("record layer " + diff_id.str());
}

Result<std::optional<std::uint64_t>> NodeStore::layer_whiteouts(const oci::Digest& diff_id) {
  std::lock_guard guard(m_impl->db_mutex);
  Stmt q(m_impl->db, "SELECT whiteouts FROM layers WHERE diff_id = ?1");
  q.bind(1, diff_id.view());
  int rc = q.step();
  if (rc == SQLITE_DONE) return std::optional<std::uint64_t>();
  if (rc != SQLITE_ROW)
    return Error(ErrorCode::io, "read layer " + diff_id.str() + ": " + sqlite3_errmsg(m_impl->db));
  if (q.is_null(0)) return std::optional<std::uint64_t>();
  return std::optional<std::uint64_t>(static_cast<std::uint64_t>(q.int64(0)));
}

Result<void> NodeStore::record_image(const ImageRecord& image, const std::string& reference) {
  const std::string what = "record image " + image.manifest_digest.str();
  std::int64_t now = m_impl->options.now();
  std::lock_guard guard(m_impl->db_mutex);
  ENVD_TRY_VOID(m_impl->exec("BEGIN IMMEDIATE", what));
  auto body = [&]() -> Result<void> {
    Stmt q(m_impl->db,
           "INSERT INTO images(manifest, media_type, manifest_size, config_digest, "
           "config_media_type, config_size, config_json, layers, pulled_at, last_used) "
           "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9) ON CONFLICT(manifest) DO UPDATE SET "
           "pulled_at = ?9, last_used = ?9");
    q.bind(1, image.manifest_digest.view())
        .bind(2, image.manifest_media_type)
        .bind(3, static_cast<std::int64_t>(image.manifest_size))
        .bind(4, image.config.digest.view())
        .bind(5, image.config.media_type)
        .bind(6, static_cast<std::int64_t>(image.config.size))
        .bind(7, image.config_json)
        .bind(8, layers_to_json(image.layers))
        .bind(9, now);
    ENVD_TRY_VOID(q.run(what));
    if (!reference.empty()) {
      Stmt r(m_impl->db,
             "INSERT OR REPLACE INTO refs(reference, manifest, updated) "
             "VALUES(?1, ?2, ?3)");
      r.bind(1, reference).bind(2, image.manifest_digest.view()).bind(3, now);
      ENVD_TRY_VOID(r.run(what));
    }
    return m_impl->exec("COMMIT", what);
  };
  auto r = body();
  if (!r) {
    (void)m_impl->exec("ROLLBACK", what);
    return r;
  }
  // The end of a pull: fold the WAL into the database now (the pull pays the fsyncs once) and
  // empty it, so that the next opener (a one-shot `envd node run`) finds no WAL frames to read
  // back (see open(): no checkpoint on close). Best effort, without waiting: another process may
  // be reading; the WAL is then folded in by a later checkpoint.
  sqlite3_busy_timeout(m_impl->db, 0);
  (void)m_impl->exec("PRAGMA wal_checkpoint(TRUNCATE)", what);
  sqlite3_busy_timeout(m_impl->db, k_busy_timeout_ms);
  return r;
}

Result<std::optional<ImageRecord>> NodeStore::find_image(const oci::Digest& manifest) {
  ENVD_TRY(auto found,
           m_impl->images_where("SELECT manifest, media_type, manifest_size, config_digest, "
                                "config_media_type, config_size, config_json, layers, pulled_at, "
                                "last_used FROM images WHERE manifest = ?1",
                                manifest.view()));
  if (found.empty()) return std::optional<ImageRecord>();
  found[0].in_use = in_use(manifest);
  return std::optional<ImageRecord>(std::move(found[0]));
}

Result<std::optional<oci::Digest>> NodeStore::lookup_reference(const std::string& reference) {
  std::lock_guard guard(m_impl->db_mutex);
  Stmt q(m_impl->db, "SELECT manifest FROM refs WHERE reference = ?1");
  q.bind(1, reference);
  int rc = q.step();
  if (rc == SQLITE_DONE) return std::optional<oci::Digest>();
  if (rc != SQLITE_ROW)
    return Error(ErrorCode::io, "look up " + reference + ": " + sqlite3_errmsg(m_impl->db));
  ENVD_TRY(auto d, oci::Digest::parse(q.text(0)));
  return std::optional<oci::Digest>(d);
}

Result<std::vector<ImageRecord>> NodeStore::list_images() {
  ENVD_TRY(auto all,
           m_impl->images_where("SELECT manifest, media_type, manifest_size, config_digest, "
                                "config_media_type, config_size, config_json, layers, pulled_at, "
                                "last_used FROM images ORDER BY last_used DESC, manifest",
                                {}));
  for (auto& img : all) img.in_use = in_use(img.manifest_digest);
  return all;
}

Result<void> NodeStore::touch(const oci::Digest& manifest) {
  std::lock_guard guard(m_impl->db_mutex);
  // An UPDATE that matches no row writes no page: the common repeated run costs no WAL frame.
  Stmt q(m_impl->db,
         "UPDATE images SET last_used = ?1 WHERE manifest = ?2 AND "
         "(last_used < ?1 - ?3 OR last_used > ?1)");
  q.bind(1, m_impl->options.now()).bind(2, manifest.view()).bind(3, k_touch_resolution);
  return q.run("touch image " + manifest.str());
}

Result<ImageLease> NodeStore::pin(const oci::Digest& manifest) {
  ENVD_TRY(auto lock, acquire_lock(m_impl->use_lock_path(manifest), LOCK_SH));
  ENVD_TRY_VOID(touch(manifest));
  return ImageLease(manifest, std::move(lock));
}

bool NodeStore::in_use(const oci::Digest& manifest) {
  fs::path path = m_impl->use_lock_path(manifest);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return false;  // nobody ever pinned it (or gc removed an unheld lock)
  FileLock probe(fd);
  return flock_retry(fd, LOCK_EX | LOCK_NB) != 0;
}

}  // namespace envd::node
