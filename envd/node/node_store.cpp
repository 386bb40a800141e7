// NodeStore: data dir layout, flock-based locks and staging, SQLite state (images, references,
// layers), leases and the quota garbage collector.
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

#include "envd/util/atomic_file.hpp"
#include "envd/util/json_detail.hpp"
#include "envd/util/log.hpp"
#include "envd/util/unique_fd.hpp"

namespace envd::node {
namespace fs = std::filesystem;
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
  entries INTEGER NOT NULL
) WITHOUT ROWID;
)sql";

int flock_retry(int fd, int op) {
  for (;;) {
    int rc = ::flock(fd, op);
    if (rc == 0 || errno != EINTR) return rc;
  }
}

// Opens (creating) `path` and flock()s it with `op`. Lock files may be unlinked by their holder
// (gc, staging cleanup), so after locking we check the name still points at our inode; if not we
// locked a dead file and start over. Returns an unheld FileLock when LOCK_NB was given and the
// lock is taken by someone else.
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

// Removes a tree that may hold read-only directories (layers keep their modes): on failure, make
// every directory writable and try again. Symlinks are removed, never followed.
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

// A digest from a 64-hex file name, or nullopt for anything else.
std::optional<oci::Digest> digest_of_name(std::string_view hex) {
  auto d = oci::Digest::parse("sha256:" + std::string(hex));
  if (!d) return std::nullopt;
  return *d;
}

class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : m_db(db) {
    m_rc = sqlite3_prepare_v2(db, sql, -1, &m_stmt, nullptr);
  }
  ~Stmt() { sqlite3_finalize(m_stmt); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  Stmt& bind(int i, std::string_view text) {
    if (m_rc == SQLITE_OK)
      m_rc = sqlite3_bind_text(m_stmt, i, text.data(), static_cast<int>(text.size()),
                               SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& bind(int i, std::int64_t v) {
    if (m_rc == SQLITE_OK) m_rc = sqlite3_bind_int64(m_stmt, i, v);
    return *this;
  }
  int step() { return m_rc == SQLITE_OK ? sqlite3_step(m_stmt) : m_rc; }
  Result<void> run(std::string_view what) {
    int rc = step();
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
      return Error(ErrorCode::io, std::string(what) + ": " + sqlite3_errmsg(m_db));
    return {};
  }
  std::string text(int col) const {
    const auto* p = sqlite3_column_text(m_stmt, col);
    return p != nullptr ? std::string(reinterpret_cast<const char*>(p),
                                      static_cast<std::size_t>(sqlite3_column_bytes(m_stmt, col)))
                        : std::string();
  }
  std::int64_t int64(int col) const { return sqlite3_column_int64(m_stmt, col); }

 private:
  sqlite3* m_db;
  sqlite3_stmt* m_stmt = nullptr;
  int m_rc;
};

std::string layers_to_json(const std::vector<LayerRecord>& layers) {
  nlohmann::json arr = nlohmann::json::array();
  for (const auto& l : layers)
    arr.push_back({{"mediaType", l.blob.media_type},
                   {"digest", l.blob.digest.str()},
                   {"size", l.blob.size},
                   {"diffId", l.diff_id.str()}});
  return arr.dump();
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

}  // namespace

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

struct NodeStore::Impl {
  fs::path dir;
  NodeStoreOptions options;
  std::unique_ptr<store::FsBlobStore> blobs;
  std::mutex db_mutex;
  sqlite3* db = nullptr;

  ~Impl() {
    if (db != nullptr) sqlite3_close(db);
  }
  fs::path staging() const { return dir / "staging"; }
  fs::path locks() const { return dir / "locks"; }
  fs::path use_lock_path(const oci::Digest& d) const {
    return locks() / ("use-" + std::string(d.hex()) + ".lock");
  }
  Result<void> exec(const char* sql, std::string_view what) {
    char* err = nullptr;
    if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err != nullptr ? err : "unknown error";
      sqlite3_free(err);
      return Error(ErrorCode::io, std::string(what) + ": " + msg);
    }
    return {};
  }
  // Staging left by owners that died: each owner holds <name>.lock; a directory whose lock file
  // we can take (or that has none) is abandoned.
  Result<void> clean_staging() {
    auto names = list_names(staging());
    std::set<std::string> all(names.begin(), names.end());
    for (const auto& name : names) {
      if (name.ends_with(".lock")) {
        ENVD_TRY(auto lock, acquire_lock(staging() / name, LOCK_EX | LOCK_NB));
        if (!lock.held()) continue;
        std::string base = name.substr(0, name.size() - 5);
        ENVD_TRY_VOID(remove_tree(staging() / base));
        ::unlink((staging() / name).c_str());
        log::info("node", "removed abandoned staging", {{"path", (staging() / base).string()}});
      } else if (!all.contains(name + ".lock") && !fs::exists(staging() / (name + ".lock"))) {
        ENVD_TRY_VOID(remove_tree(staging() / name));
        log::info("node", "removed abandoned staging", {{"path", (staging() / name).string()}});
      }
    }
    return {};
  }
  Result<ImageRecord> read_image_row(Stmt& q) {
    ENVD_TRY(auto manifest, oci::Digest::parse(q.text(0)));
    ENVD_TRY(auto config, oci::Digest::parse(q.text(3)));
    ENVD_TRY(auto layers, layers_from_json(q.text(7)));
    return ImageRecord{
        .manifest_digest = manifest,
        .manifest_media_type = q.text(1),
        .manifest_size = static_cast<std::uint64_t>(q.int64(2)),
        .config = oci::Descriptor{q.text(4), config, static_cast<std::uint64_t>(q.int64(5)), {}},
        .config_json = q.text(6),
        .layers = std::move(layers),
        .references = {},
        .pulled_at = q.int64(8),
        .last_used = q.int64(9),
    };
  }
  // References and sizes of `images` (db_mutex held).
  void complete(std::vector<ImageRecord>& images) {
    std::map<std::string, std::int64_t> layer_bytes;
    Stmt lq(db, "SELECT diff_id, bytes FROM layers");
    while (lq.step() == SQLITE_ROW) layer_bytes[lq.text(0)] = lq.int64(1);
    for (auto& img : images) {
      Stmt rq(db, "SELECT reference FROM refs WHERE manifest = ?1 ORDER BY reference");
      rq.bind(1, img.manifest_digest.view());
      while (rq.step() == SQLITE_ROW) img.references.push_back(rq.text(0));
      img.size_bytes = img.manifest_size + img.config.size;
      for (const auto& l : img.layers) {
        img.size_bytes += l.blob.size;
        if (auto it = layer_bytes.find(l.diff_id.str()); it != layer_bytes.end())
          img.size_bytes += static_cast<std::uint64_t>(it->second);
      }
    }
  }
  Result<void> retire(const fs::path& final_path);
  Result<std::vector<ImageRecord>> images_where(const char* sql, std::string_view arg) {
    std::lock_guard guard(db_mutex);
    Stmt q(db, sql);
    if (!arg.empty()) q.bind(1, arg);
    std::vector<ImageRecord> out;
    int rc;
    while ((rc = q.step()) == SQLITE_ROW) {
      ENVD_TRY(auto r, read_image_row(q));
      out.push_back(std::move(r));
    }
    if (rc != SQLITE_DONE)
      return Error(ErrorCode::io, "read images from state: " + std::string(sqlite3_errmsg(db)));
    complete(out);
    return out;
  }
};

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
                                     std::uint64_t entries) {
  std::lock_guard guard(m_impl->db_mutex);
  Stmt q(m_impl->db, "INSERT OR REPLACE INTO layers(diff_id, bytes, entries) VALUES(?1, ?2, ?3)");
  q.bind(1, diff_id.view())
      .bind(2, static_cast<std::int64_t>(bytes))
      .bind(3, static_cast<std::int64_t>(entries));
  return q.run("record layer " + diff_id.str());
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

Result<std::uint64_t> NodeStore::usage() {
  std::uint64_t total = 0;
  ENVD_TRY(auto digests, m_impl->blobs->list());
  for (const auto& d : digests) total += m_impl->blobs->size(d).value_or(0);
  ENVD_TRY(auto partial, m_impl->blobs->list_resumable());
  for (const auto& d : partial) {
    std::error_code ec;
    auto n = fs::file_size(m_impl->dir / "resume" / std::string(d.hex()), ec);
    if (!ec) total += n;
  }
  std::lock_guard guard(m_impl->db_mutex);
  Stmt q(m_impl->db, "SELECT diff_id, bytes FROM layers");
  while (q.step() == SQLITE_ROW) {
    auto d = oci::Digest::parse(q.text(0));
    if (d && has_layer(*d)) total += static_cast<std::uint64_t>(q.int64(1));
  }
  return total;
}

// Moves a final directory (env or layer) into staging, so it disappears from its name at once,
// then removes it.
Result<void> NodeStore::Impl::retire(const fs::path& final_path) {
  std::string name = "retired-" + random_name();
  fs::path lock_path = staging() / (name + ".lock");
  ENVD_TRY(auto lock, acquire_lock(lock_path, LOCK_EX));
  StagingDir retired(staging() / name, lock_path, std::move(lock));
  if (::rename(final_path.c_str(), retired.path().c_str()) != 0 && errno != ENOENT)
    return Error::from_errno("move " + final_path.string() + " out of the way", errno);
  return {};  // ~StagingDir removes the tree
}

Result<GcResult> NodeStore::gc(const GcOptions& options) {
  Impl& impl = *m_impl;
  const std::string what = "gc " + impl.dir.string();
  auto fail = [&](const Error& e) { return e.with_context(what); };
  ENVD_TRY(auto no_pulls, acquire_lock(impl.locks() / "pulls.lock", LOCK_EX));
  GcResult result;
  auto before = usage();
  if (!before) return fail(before.error());
  result.bytes_before = *before;
  auto listed = list_images();
  if (!listed) return fail(listed.error());
  std::vector<ImageRecord> images = std::move(*listed);

  std::map<std::string, std::uint64_t> layer_bytes;
  {
    std::lock_guard guard(impl.db_mutex);
    Stmt q(impl.db, "SELECT diff_id, bytes FROM layers");
    while (q.step() == SQLITE_ROW) layer_bytes[q.text(0)] = static_cast<std::uint64_t>(q.int64(1));
  }
  std::vector<bool> kept(images.size(), true);
  // Bytes the kept images need: distinct blobs plus distinct unpacked layers.
  auto needed = [&] {
    std::set<oci::Digest> blobs;
    std::set<oci::Digest> layers;
    std::uint64_t total = 0;
    for (std::size_t i = 0; i < images.size(); ++i) {
      if (!kept[i]) continue;
      const auto& img = images[i];
      if (blobs.insert(img.manifest_digest).second) total += img.manifest_size;
      if (blobs.insert(img.config.digest).second) total += img.config.size;
      for (const auto& l : img.layers) {
        if (blobs.insert(l.blob.digest).second && impl.blobs->contains(l.blob.digest))
          total += l.blob.size;
        if (layers.insert(l.diff_id).second) total += layer_bytes[l.diff_id.str()];
      }
    }
    return total;
  };

  std::vector<FileLock> evicting;  // use locks held exclusively: nobody can pin these now
  if (options.quota) {
    std::int64_t now = impl.options.now();
    for (std::size_t n = images.size(); n-- > 0;) {  // least recently used first
      if (needed() <= *options.quota) break;
      const auto& img = images[n];
      if (img.in_use) {
        result.kept_in_use.push_back(img.manifest_digest);
        continue;
      }
      if (now - std::max(img.pulled_at, img.last_used) < options.grace.count()) {
        result.kept_in_grace.push_back(img.manifest_digest);
        continue;
      }
      auto lock = acquire_lock(impl.use_lock_path(img.manifest_digest), LOCK_EX | LOCK_NB);
      if (!lock) return fail(lock.error());
      if (!lock->held()) {  // pinned since we listed
        result.kept_in_use.push_back(img.manifest_digest);
        continue;
      }
      evicting.push_back(std::move(*lock));
      kept[n] = false;
    }
    result.quota_met = needed() <= *options.quota;
  }

  std::set<oci::Digest> keep_blobs;
  std::set<oci::Digest> keep_layers;
  std::set<oci::Digest> keep_envs;
  for (std::size_t i = 0; i < images.size(); ++i) {
    const auto& img = images[i];
    if (!kept[i]) {
      ENVD_TRY_VOID(impl.retire(env_dir(img.manifest_digest)));
      std::lock_guard guard(impl.db_mutex);
      Stmt d1(impl.db, "DELETE FROM images WHERE manifest = ?1");
      d1.bind(1, img.manifest_digest.view());
      Stmt d2(impl.db, "DELETE FROM refs WHERE manifest = ?1");
      d2.bind(1, img.manifest_digest.view());
      if (auto r = d1.run(what); !r) return r.error();
      if (auto r = d2.run(what); !r) return r.error();
      result.images_evicted.push_back(img.manifest_digest);
      log::info("node", "evicted image", {{"manifest", img.manifest_digest.str()}});
      continue;
    }
    keep_envs.insert(img.manifest_digest);
    keep_blobs.insert(img.manifest_digest);
    keep_blobs.insert(img.config.digest);
    for (const auto& l : img.layers) {
      keep_blobs.insert(l.blob.digest);
      keep_layers.insert(l.diff_id);
    }
  }
  result.envs_removed = result.images_evicted.size();
  // Environments no image record names (a pull that died after assembly): unless leased.
  for (const auto& name : list_names(impl.dir / "envs")) {
    auto d = digest_of_name(name);
    if (!d || keep_envs.contains(*d)) continue;
    auto lock = acquire_lock(impl.use_lock_path(*d), LOCK_EX | LOCK_NB);
    if (!lock) return fail(lock.error());
    if (!lock->held()) continue;
    ENVD_TRY_VOID(impl.retire(env_dir(*d)));
    ++result.envs_removed;
  }
  for (const auto& name : list_names(impl.dir / "layers")) {
    auto d = digest_of_name(name);
    if (!d || keep_layers.contains(*d)) continue;
    ENVD_TRY_VOID(impl.retire(layer_dir(*d)));
    ++result.layers_removed;
  }
  {
    std::lock_guard guard(impl.db_mutex);
    std::vector<std::string> gone;
    Stmt q(impl.db, "SELECT diff_id FROM layers");
    while (q.step() == SQLITE_ROW) {
      auto d = oci::Digest::parse(q.text(0));
      if (!d || !keep_layers.contains(*d)) gone.push_back(q.text(0));
    }
    for (const auto& g : gone) {
      Stmt d(impl.db, "DELETE FROM layers WHERE diff_id = ?1");
      d.bind(1, g);
      if (auto r = d.run(what); !r) return r.error();
    }
  }
  auto blobs = impl.blobs->list();
  if (!blobs) return fail(blobs.error());
  for (const auto& d : *blobs) {
    if (keep_blobs.contains(d)) continue;
    if (auto r = impl.blobs->remove(d); !r) return fail(r.error());
    ++result.blobs_removed;
  }
  // Partial downloads are worth keeping for a resume, unless space is asked for.
  if (options.quota && result.bytes_before > *options.quota) {
    auto partial = impl.blobs->list_resumable();
    if (!partial) return fail(partial.error());
    for (const auto& d : *partial)
      if (auto r = impl.blobs->discard_resumable(d); !r) return fail(r.error());
  }
  // Lock files nobody holds (they are recreated on demand; see acquire_lock).
  for (const auto& name : list_names(impl.locks())) {
    if (name == "pulls.lock") continue;
    auto lock = acquire_lock(impl.locks() / name, LOCK_EX | LOCK_NB);
    if (lock && lock->held()) ::unlink((impl.locks() / name).c_str());
  }
  auto after = usage();
  if (!after) return fail(after.error());
  result.bytes_after = *after;
  if (options.quota) result.quota_met = result.bytes_after <= *options.quota;
  log::info("node", "gc done",
            {{"bytes_before", std::to_string(result.bytes_before)},
             {"bytes_after", std::to_string(result.bytes_after)},
             {"images_evicted", std::to_string(result.images_evicted.size())},
             {"layers_removed", std::to_string(result.layers_removed)},
             {"blobs_removed", std::to_string(result.blobs_removed)}});
  return result;
}

}  // namespace envd::node
