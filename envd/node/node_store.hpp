// NodeStore: the node daemon's data directory (DESIGN.md §7) and its SQLite state: blobs, resumable
// ingest, unpacked layers by diff_id, assembled environments by manifest digest, locks, leases of
// images in use, and the garbage collector that keeps it under a byte quota.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "envd/node/deferred_sync.hpp"
#include "envd/oci/digest.hpp"
#include "envd/oci/image.hpp"
#include "envd/store/fs_blob_store.hpp"
#include "envd/util/error.hpp"

namespace envd::node {

// Layout of the data dir DIR (everything appears by atomic rename only):
//   DIR/blobs/sha256/<hex>     verified blobs: manifests, configs, compressed layers (FsBlobStore)
//   DIR/ingest/                FsBlobStore's temporary writes
//   DIR/resume/<hex>           partial downloads kept across a crash, resumed with Range
//   DIR/layers/<diff_id hex>/  one unpacked layer (LayerUnpacker layout), complete iff present
//   DIR/envs/<manifest hex>/   an assembled environment: rootfs/, image.json (the config) and,
//                              for envd images, rootfs.roots.json (image_roots.hpp; absent in
//                              environments assembled before it existed); complete iff present
//                              under this name
//   DIR/staging/<name>[.lock]  work in progress, each flock()ed by its owner; unowned ones are
//                              removed at open
//   DIR/locks/                 per-digest lock files (one download, one unpack, one assembly)
//   DIR/unsynced/              records of layers and envs committed without syncfs, removed
//                              after a reboot that came first (deferred_sync.hpp)
//   DIR/state.sqlite           images, references, layers (WAL)

// A held flock() on a file under DIR/locks; released when destroyed. Move-only.
class FileLock {
 public:
  FileLock() = default;
  explicit FileLock(int fd) : m_fd(fd) {}
  ~FileLock();
  FileLock(FileLock&& other) noexcept;
  FileLock& operator=(FileLock&& other) noexcept;
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;
  bool held() const { return m_fd >= 0; }

 private:
  int m_fd = -1;
};

// A staging directory owned (flock) by this process; removed when destroyed unless committed.
class StagingDir {
 public:
  StagingDir() = default;
  StagingDir(std::filesystem::path path, std::filesystem::path lock_path, FileLock lock);
  ~StagingDir();
  StagingDir(StagingDir&&) noexcept = default;
  StagingDir& operator=(StagingDir&&) noexcept;
  StagingDir(const StagingDir&) = delete;
  StagingDir& operator=(const StagingDir&) = delete;
  const std::filesystem::path& path() const { return m_path; }
  // After a successful rename: nothing left to remove but the lock file.
  void mark_committed() { m_committed = true; }

 private:
  void cleanup();
  std::filesystem::path m_path;
  std::filesystem::path m_lock_path;
  FileLock m_lock;
  bool m_committed = false;
};

// One layer of an image: its blob (compressed) and the digest of its uncompressed tar.
struct LayerRecord {
  oci::Descriptor blob;
  oci::Digest diff_id;
  friend bool operator==(const LayerRecord&, const LayerRecord&) = default;
};

// An image the store holds (its environment is assembled).
struct ImageRecord {
  oci::Digest manifest_digest;
  std::string manifest_media_type;
  std::uint64_t manifest_size = 0;
  oci::Descriptor config;
  std::string config_json;  // the config blob's bytes, verified against config.digest
  std::vector<LayerRecord> layers;
  std::vector<std::string> references;  // canonical references last pulled as this image
  std::int64_t pulled_at = 0;           // unix seconds
  std::int64_t last_used = 0;           // unix seconds (pull, pin)
  // Bytes on disk attributable to the image: manifest, config and layer blobs plus unpacked
  // layers (layers shared with other images are counted in each).
  std::uint64_t size_bytes = 0;
  bool in_use = false;  // pinned by a lease now (list_images() and find_image() fill this)
};

// Keeps an image from being evicted while held (a shared flock on its use lock, so a process
// that dies releases it). Destroying it, or release(), unpins. Move-only.
class ImageLease {
 public:
  ImageLease() = default;
  ImageLease(oci::Digest manifest, FileLock lock) : m_manifest(manifest), m_lock(std::move(lock)) {}
  const std::optional<oci::Digest>& manifest() const { return m_manifest; }
  bool held() const { return m_lock.held(); }
  void release() { m_lock = FileLock(); }

 private:
  std::optional<oci::Digest> m_manifest;
  FileLock m_lock;
};

struct NodeStoreOptions {
  // Unix seconds now; tests inject a fake clock.
  std::function<std::int64_t()> now;
  // The kernel's boot id (deferred_sync.hpp); nullopt: read it. Tests inject one to simulate a
  // reboot. Empty: unknown, so every commit is durable at once.
  std::optional<std::string> boot_id;
};

struct GcOptions {
  // Evict least-recently-used images until the store's bytes are at most this; nullopt: evict
  // no image, only remove content no image references.
  std::optional<std::uint64_t> quota;
  // Images pulled or used less than this long ago are never evicted.
  std::chrono::seconds grace{600};
};

struct GcResult {
  std::uint64_t bytes_before = 0;
  std::uint64_t bytes_after = 0;
  std::vector<oci::Digest> images_evicted;
  std::vector<oci::Digest> kept_in_use;    // would have been evicted, but leased
  std::vector<oci::Digest> kept_in_grace;  // would have been evicted, but too recent
  std::uint64_t layers_removed = 0;
  std::uint64_t blobs_removed = 0;
  std::uint64_t envs_removed = 0;
  bool quota_met = true;  // bytes_after <= quota (or no quota)
};

enum class LockKind { blob, layer, env };

// Thread-safe, and safe for several processes sharing one data dir (flock, SQLite WAL with a
// busy timeout). Errors name the path or the digest involved.
class NodeStore {
 public:
  // Opens (creating) the data dir, removes staging left by dead owners and stale lock-free ingest,
  // opens the state database. Errors: io / permission_denied naming the path.
  static Result<std::unique_ptr<NodeStore>> open(const std::filesystem::path& dir,
                                                 NodeStoreOptions options = {});
  ~NodeStore();
  NodeStore(const NodeStore&) = delete;
  NodeStore& operator=(const NodeStore&) = delete;

  const std::filesystem::path& dir() const;
  store::FsBlobStore& blobs();
  std::int64_t now() const;

  std::filesystem::path layer_dir(const oci::Digest& diff_id) const;
  std::filesystem::path env_dir(const oci::Digest& manifest) const;
  std::filesystem::path rootfs_dir(const oci::Digest& manifest) const;  // env_dir/rootfs
  bool has_layer(const oci::Digest& diff_id) const;
  bool has_env(const oci::Digest& manifest) const;

  // A fresh empty staging directory (DIR/staging/<purpose>-<random>). Errors: io.
  Result<StagingDir> make_staging(std::string_view purpose);
  // Renames `staging` to `final_path` (a layer or env dir). Durable: after a syncfs() of the
  // tree's data, then an fsync of the parent; deferred: the rename only, for a `final_path` listed
  // in a record of begin_deferred_sync(). When `final_path` already exists (another process won),
  // the staging dir is dropped and this succeeds. Errors: io.
  enum class Durability { durable, deferred };
  Result<void> commit_staging(StagingDir& staging, const std::filesystem::path& final_path,
                              Durability durability = Durability::durable);
  // A record covering `final_paths` (layer and env dirs of this store) for commits without
  // syncfs (deferred_sync.hpp), or an inactive one when the boot id is unknown: then commit
  // durably. Errors: io, invalid_argument (a path that is not a layer or env dir of this store).
  Result<DeferredSyncRecord> begin_deferred_sync(
      const std::vector<std::filesystem::path>& final_paths);
  // Makes deferred commits of this boot at least `min_age` old durable (one syncfs when there are
  // any) and drops their records. Returns how many records were settled. Errors: io.
  Result<std::size_t> settle_deferred_sync(std::chrono::seconds min_age);

  // Exclusive lock serialising the download, unpack or assembly of one digest, across threads
  // and processes. Blocks. Errors: io.
  Result<FileLock> lock(LockKind kind, const oci::Digest& digest);
  // Held shared by each pull for its whole duration and exclusively by gc(), so gc never removes
  // what a pull is still assembling. Blocks. Errors: io.
  Result<FileLock> lock_pulls_shared();

  // Records an unpacked layer's size (for quota accounting) and how many whiteout and opaque
  // markers it holds (a layer without any can be an overlay mount's lower layer). Errors: io.
  Result<void> record_layer(const oci::Digest& diff_id, std::uint64_t bytes, std::uint64_t entries,
                            std::uint64_t whiteouts);
  // The markers recorded for a layer; nullopt when unknown (no record, or one written before
  // they were counted). Errors: io.
  Result<std::optional<std::uint64_t>> layer_whiteouts(const oci::Digest& diff_id);
  // Records (or refreshes) an image whose environment is in place, and points `reference` (a
  // canonical reference text; may be empty) at it. pulled_at and last_used become now().
  // Errors: io.
  Result<void> record_image(const ImageRecord& image, const std::string& reference);
  // The image, or nullopt. Errors: io.
  Result<std::optional<ImageRecord>> find_image(const oci::Digest& manifest);
  // The manifest digest `reference` was last pulled as, or nullopt. Errors: io.
  Result<std::optional<oci::Digest>> lookup_reference(const std::string& reference);
  // Every image, most recently used first. Errors: io.
  Result<std::vector<ImageRecord>> list_images();
  // Sets last_used to now(), unless it is already within k_touch_resolution seconds of it: a
  // one-shot `envd node run` then reads the state without writing it (no journal traffic), and
  // least-recently-used order and the gc grace period (minutes) are unaffected. Errors: io.
  static constexpr std::int64_t k_touch_resolution = 60;
  Result<void> touch(const oci::Digest& manifest);

  // Pins an image: until the lease is destroyed, gc() does not evict it (nor its layers and
  // blobs) and never removes its environment. Sets last_used. Works for a digest not (yet)
  // recorded too. Errors: io.
  Result<ImageLease> pin(const oci::Digest& manifest);
  // Whether any lease (this or another process) holds the image.
  bool in_use(const oci::Digest& manifest);

  // Bytes on disk: blobs plus unpacked layers (environments are hardlinks: not counted).
  Result<std::uint64_t> usage();

  // Garbage collection: evicts least-recently-used images that are neither pinned nor within the
  // grace period until usage() <= quota, then removes environments, layers, blobs, resumable
  // ingest and lock files that no remaining image references. Waits for running pulls to end
  // (lock_pulls_shared) and blocks new ones meanwhile. Errors: io.
  Result<GcResult> gc(const GcOptions& options);

 private:
  struct Impl;
  explicit NodeStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> m_impl;
};

}  // namespace envd::node
