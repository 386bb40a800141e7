// NodeStore's internals, shared by its two source files: node_store.cpp (layout, locks, staging,
// records) and node_store_gc.cpp (disk usage and the quota garbage collector). Not for other users.
#pragma once

#include <sqlite3.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "envd/node/node_store.hpp"
#include "envd/util/log.hpp"
#include "envd/util/sqlite_statement.hpp"

namespace envd::node {
namespace store_internal {

// Opens (creating) `path` and flock()s it with `op`. Lock files may be unlinked by their holder
// (gc, staging cleanup), so after locking we check the name still points at our inode; if not we
// locked a dead file and start over. Returns an unheld FileLock when LOCK_NB was given and the
// lock is taken by someone else.
Result<FileLock> acquire_lock(const std::filesystem::path& path, int op);
// Removes a tree that may hold read-only directories (layers keep their modes): on failure, make
// every directory writable and try again. Symlinks are removed, never followed.
Result<void> remove_tree(const std::filesystem::path& path);
// The names in `dir` (none when it cannot be read).
std::vector<std::string> list_names(const std::filesystem::path& dir);
// A digest from a 64-hex file name, or nullopt for anything else.
std::optional<oci::Digest> digest_of_name(std::string_view hex);
// The layer list of an image row, as layers_to_json wrote it.
Result<std::vector<LayerRecord>> layers_from_json(std::string_view text);

using Stmt = SqliteStatement;

}  // namespace store_internal

struct NodeStore::Impl {
  std::filesystem::path dir;
  NodeStoreOptions options;
  std::unique_ptr<store::FsBlobStore> blobs;
  std::mutex db_mutex;
  sqlite3* db = nullptr;

  ~Impl() {
    if (db != nullptr) sqlite3_close(db);
  }
  std::filesystem::path staging() const { return dir / "staging"; }
  std::filesystem::path locks() const { return dir / "locks"; }
  std::filesystem::path use_lock_path(const oci::Digest& d) const {
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
    auto names = store_internal::list_names(staging());
    std::set<std::string> all(names.begin(), names.end());
    for (const auto& name : names) {
      if (name.ends_with(".lock")) {
        ENVD_TRY(auto lock, store_internal::acquire_lock(staging() / name, LOCK_EX | LOCK_NB));
        if (!lock.held()) continue;
        std::string base = name.substr(0, name.size() - 5);
        ENVD_TRY_VOID(store_internal::remove_tree(staging() / base));
        ::unlink((staging() / name).c_str());
        log::info("node", "removed abandoned staging", {{"path", (staging() / base).string()}});
      } else if (!all.contains(name + ".lock") &&
                 !std::filesystem::exists(staging() / (name + ".lock"))) {
        ENVD_TRY_VOID(store_internal::remove_tree(staging() / name));
        log::info("node", "removed abandoned staging", {{"path", (staging() / name).string()}});
      }
    }
    return {};
  }
  Result<ImageRecord> read_image_row(store_internal::Stmt& q) {
    ENVD_TRY(auto manifest, oci::Digest::parse(q.text(0)));
    ENVD_TRY(auto config, oci::Digest::parse(q.text(3)));
    ENVD_TRY(auto layers, store_internal::layers_from_json(q.text(7)));
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
    store_internal::Stmt lq(db, "SELECT diff_id, bytes FROM layers");
    while (lq.step() == SQLITE_ROW) layer_bytes[lq.text(0)] = lq.int64(1);
    for (auto& img : images) {
      store_internal::Stmt rq(db,
                              "SELECT reference FROM refs WHERE manifest = ?1 ORDER BY reference");
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
  Result<void> retire(const std::filesystem::path& final_path);
  Result<std::vector<ImageRecord>> images_where(const char* sql, std::string_view arg) {
    std::lock_guard guard(db_mutex);
    store_internal::Stmt q(db, sql);
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

}  // namespace envd::node
