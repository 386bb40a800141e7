// NodeStore's disk usage and its garbage collector: least recently used images evicted under a
// byte quota, never one in use or within its grace period; then whatever no image names.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "envd/node/node_store_internal.hpp"
#include "envd/node/overlay_mount.hpp"
#include "envd/util/atomic_file.hpp"

namespace envd::node {
namespace fs = std::filesystem;
using namespace store_internal;

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
      detach_mount(rootfs_dir(img.manifest_digest));  // an overlay this process mounted
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
    detach_mount(rootfs_dir(*d));
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
