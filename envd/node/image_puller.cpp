// ImagePuller: reference -> manifest (platform chosen from an index) -> verified config -> layers
// fetched in parallel, each teed into a resumable ingest file and a streaming unpacker -> rootfs
// assembled by hardlinks, or recorded as an overlay of the layers -> image recorded. Per-digest
// locks make concurrent pulls share work. Where manifests and blobs come from: image_origin.hpp.
#include "envd/node/image_puller.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "envd/node/image_origin.hpp"
#include "envd/node/rootfs_assembler.hpp"
#include "envd/util/atomic_file.hpp"
#include "envd/util/log.hpp"

namespace envd::node {
namespace {

using detail::Origin;

// Deferred commits older than this are settled by the next pull: by then the kernel has written
// their data back (dirty pages expire after 30 s by default), so the syncfs() costs little.
constexpr std::chrono::seconds k_settle_age{60};

// Feeds each downloaded chunk to the ingest writer and to the unpacker, and counts progress.
class TeeWriter final : public store::BlobWriter {
 public:
  TeeWriter(store::BlobWriter& ingest, registry::BlobSink& unpacker, PullProgress* progress)
      : m_ingest(ingest), m_unpacker(unpacker), m_progress(progress) {}
  Result<void> write(std::string_view data) override {
    ENVD_TRY_VOID(m_ingest.write(data));
    ENVD_TRY_VOID(m_unpacker.write(data));
    if (m_progress != nullptr) m_progress->bytes_fetched += data.size();
    return {};
  }
  std::uint64_t written() const override { return m_ingest.written(); }
  Result<void> commit(const oci::Digest& expected,
                      std::optional<std::uint64_t> expected_size) override {
    return m_ingest.commit(expected, expected_size);
  }

 private:
  store::BlobWriter& m_ingest;
  registry::BlobSink& m_unpacker;
  PullProgress* m_progress;
};

// Errors after which the partial bytes are still good to resume from.
bool keeps_partial(const Error& e) {
  return e.code() == ErrorCode::unavailable || e.code() == ErrorCode::cancelled;
}

}  // namespace

std::string host_architecture() {
#if defined(__x86_64__)
  return "amd64";
#elif defined(__aarch64__)
  return "arm64";
#elif defined(__i386__)
  return "386";
#elif defined(__arm__)
  return "arm";
#elif defined(__powerpc64__)
  return "ppc64le";
#elif defined(__s390x__)
  return "s390x";
#elif defined(__riscv)
  return "riscv64";
#else
  return "unknown";
#endif
}

struct ImagePuller::Impl {
  NodeStore& store;
  PullerOptions options;
  std::mutex clients_mutex;
  std::map<std::string, std::unique_ptr<registry::RegistryClient>> clients;

  Impl(NodeStore& s, PullerOptions o) : store(s), options(std::move(o)) {}

  Result<std::unique_ptr<Origin>> origin_for(const registry::Reference& ref) {
    if (ref.is_local()) {
      if (!options.local_source)
        return Error(ErrorCode::failed_precondition,
                     ref.str() + " names the local store, and no local store is available");
      ENVD_TRY(auto source, options.local_source(ref));
      return detail::local_origin(std::move(source));
    }
    std::lock_guard guard(clients_mutex);
    auto& client = clients[ref.host];
    if (!client) {
      ENVD_TRY(client, registry::RegistryClient::create(ref.host, options.client));
    }
    return detail::registry_origin(*client, ref.repository);
  }

  // A blob already in the store must also have the size its descriptor says (same digest, so a
  // different size means the descriptor lies).
  Result<bool> have_blob(const oci::Descriptor& blob) {
    auto& blobs = store.blobs();
    if (!blobs.contains(blob.digest)) return false;
    ENVD_TRY(auto size, blobs.size(blob.digest));
    if (size != blob.size)
      return Error(ErrorCode::digest_mismatch,
                   "blob " + blob.digest.str() + " has " + std::to_string(size) +
                       " bytes, its descriptor says " + std::to_string(blob.size) + " bytes");
    return true;
  }

  // Makes a (small) blob present in the store: one download however many callers want it.
  Result<std::uint64_t> fetch_blob(Origin& origin, const oci::Descriptor& blob) {
    ENVD_TRY(bool present, have_blob(blob));
    if (present) return std::uint64_t{0};
    ENVD_TRY(auto lock, store.lock(LockKind::blob, blob.digest));
    ENVD_TRY(present, have_blob(blob));
    if (present) return std::uint64_t{0};
    auto& blobs = store.blobs();
    ENVD_TRY(auto writer, blobs.begin_write());
    ENVD_TRY(auto fetched, origin.fetch(blob, *writer));
    return fetched.bytes_fetched;
  }

  struct LayerOutcome {
    bool fetched = false;
    std::uint64_t bytes = 0;
  };

  // Download and unpack at once: the bytes go to the resumable ingest file and the unpacker.
  // Bytes an interrupted run left are replayed into a fresh unpacker first, then the download
  // continues with Range from there.
  Result<LayerOutcome> fetch_and_unpack(Origin& origin, const LayerRecord& layer,
                                        LayerCompression compression, const std::string& what,
                                        NodeStore::Durability durability, PullProgress* progress) {
    auto& blobs = store.blobs();
    for (int attempt = 0;; ++attempt) {
      ENVD_TRY(auto staging, store.make_staging("layer"));
      // Our caller's context names the image and the layer; the unpacker adds the entry.
      ENVD_TRY(auto unpacker, LayerUnpacker::start(staging.path(), compression, layer.diff_id,
                                                   options.limits, "unpack"));
      auto writer = blobs.resume_write(layer.blob.digest,
                                       [&](std::string_view d) { return unpacker->write(d); });
      bool restart = false;
      if (!writer) {
        if (writer.error().code() == ErrorCode::io || attempt > 0) return writer.error();
        restart = true;  // the kept bytes were refused: start over from nothing
      } else if ((*writer)->written() > layer.blob.size) {
        restart = true;
      }
      if (restart) {
        writer = Error(ErrorCode::internal, "");
        unpacker.reset();
        ENVD_TRY_VOID(blobs.discard_resumable(layer.blob.digest));
        log::warn("node", "discarded unusable partial download", {{"layer", what}});
        continue;
      }
      if ((*writer)->written() > 0) {
        log::info("node", "resuming download",
                  {{"layer", what}, {"offset", std::to_string((*writer)->written())}});
        if (progress != nullptr) progress->bytes_fetched += (*writer)->written();
      }
      TeeWriter tee(**writer, *unpacker, progress);
      auto fetched = origin.fetch(layer.blob, tee);
      (*writer).reset();  // closes (keeps or has removed) the ingest file
      if (!fetched) {
        if (!keeps_partial(fetched.error())) (void)blobs.discard_resumable(layer.blob.digest);
        return fetched.error();
      }
      ENVD_TRY(auto stats, unpacker->finish());
      ENVD_TRY_VOID(store.record_layer(layer.diff_id, stats.bytes, stats.entries, stats.whiteouts));
      ENVD_TRY_VOID(store.commit_staging(staging, store.layer_dir(layer.diff_id), durability));
      return LayerOutcome{true, fetched->bytes_fetched};
    }
  }

  Result<LayerOutcome> pull_layer(Origin& origin, const LayerRecord& layer, const std::string& what,
                                  NodeStore::Durability durability, PullProgress* progress) {
    ENVD_TRY(auto layer_lock, store.lock(LockKind::layer, layer.diff_id));
    if (store.has_layer(layer.diff_id)) return LayerOutcome{};
    ENVD_TRY(auto compression, layer_compression(layer.blob.media_type));
    auto& blobs = store.blobs();
    std::optional<FileLock> blob_lock;
    ENVD_TRY(bool present, have_blob(layer.blob));
    if (!present) {
      ENVD_TRY(blob_lock, store.lock(LockKind::blob, layer.blob.digest));
      ENVD_TRY(present, have_blob(layer.blob));
      if (!present) {
        if (progress != nullptr) progress->bytes_to_fetch += layer.blob.size;
        return fetch_and_unpack(origin, layer, compression, what, durability, progress);
      }
    }
    // The blob is here (an earlier pull kept it): unpack from disk.
    ENVD_TRY(auto staging, store.make_staging("layer"));
    ENVD_TRY(auto stats, unpack_layer_file(*blobs.path_of(layer.blob.digest), staging.path(),
                                           compression, layer.diff_id, options.limits, "unpack"));
    ENVD_TRY_VOID(store.record_layer(layer.diff_id, stats.bytes, stats.entries, stats.whiteouts));
    ENVD_TRY_VOID(store.commit_staging(staging, store.layer_dir(layer.diff_id), durability));
    return LayerOutcome{};
  }

  // Every layer, options.client.parallel_transfers at a time; the first failure stops new ones.
  // With `assembly`, a thread merges each layer into it as soon as it and those below it are in
  // place, so assembling overlaps downloading and unpacking the layers above.
  Result<LayerOutcome> pull_layers(Origin& origin, const std::vector<LayerRecord>& layers,
                                   const std::string& image, NodeStore::Durability durability,
                                   PullProgress* progress, std::size_t& fetched_count,
                                   RootfsAssembly* assembly) {
    std::atomic<std::size_t> next{0};
    std::mutex mutex;
    std::condition_variable layer_done;
    std::vector<bool> done(layers.size(), false);
    std::optional<Error> failure;
    LayerOutcome total;
    auto fail = [&](Error e) {  // mutex held
      if (!failure) failure = std::move(e);
      layer_done.notify_all();
    };
    auto worker = [&] {
      for (;;) {
        {
          std::lock_guard guard(mutex);
          if (failure) return;
        }
        std::size_t i = next++;
        if (i >= layers.size()) return;
        const auto& layer = layers[i];
        std::string label = "layer " + std::to_string(i + 1) + "/" + std::to_string(layers.size()) +
                            " " + layer.blob.digest.str();
        auto r = pull_layer(origin, layer, label + " of " + image, durability, progress);
        std::lock_guard guard(mutex);
        if (!r) return fail(r.error().with_context(label));
        if (progress != nullptr) ++progress->layers_done;
        if (r->fetched) ++fetched_count;
        total.bytes += r->bytes;
        done[i] = true;
        layer_done.notify_all();
      }
    };
    auto assembler = [&] {
      for (std::size_t i = 0; i < layers.size(); ++i) {
        {
          std::unique_lock lock(mutex);
          layer_done.wait(lock, [&] { return done[i] || failure.has_value(); });
          if (failure) return;
        }
        auto r = assembly->add_layer(store.layer_dir(layers[i].diff_id));
        if (!r) {
          std::lock_guard guard(mutex);
          return fail(r.error().with_context("assemble environment"));
        }
      }
    };
    std::size_t n = std::clamp<std::size_t>(options.client.parallel_transfers, 1, layers.size());
    std::vector<std::thread> threads;
    if (assembly != nullptr) threads.emplace_back(assembler);
    for (std::size_t i = 1; i < n; ++i) threads.emplace_back(worker);
    worker();
    for (auto& t : threads) t.join();
    if (failure) return *failure;
    return total;
  }

  // Pulls the layers an image lacks and assembles its environment while they arrive, unless the
  // environment is there (another pull made it first).
  Result<LayerOutcome> pull_and_assemble(Origin& origin, const oci::Digest& manifest,
                                         const std::vector<LayerRecord>& layers,
                                         const std::string& config_json, const std::string& image,
                                         PullProgress* progress, std::size_t& fetched_count) {
    ENVD_TRY(auto lock, store.lock(LockKind::env, manifest));
    if (store.has_env(manifest)) return LayerOutcome{};
    // What this pull may create is committed without waiting for the disk, under a record that a
    // restart before the next settle turns into their removal (deferred_sync.hpp). Records of
    // earlier pulls old enough for the kernel to have written their data back are settled first:
    // a cheap syncfs() then.
    (void)store.settle_deferred_sync(k_settle_age);
    std::vector<std::filesystem::path> creates;
    for (const auto& l : layers)
      if (!store.has_layer(l.diff_id)) creates.push_back(store.layer_dir(l.diff_id));
    creates.push_back(store.env_dir(manifest));
    ENVD_TRY(auto record, store.begin_deferred_sync(creates));
    auto durability =
        record.active() ? NodeStore::Durability::deferred : NodeStore::Durability::durable;

    ENVD_TRY(auto staging, store.make_staging("env"));
    const std::filesystem::path rootfs = staging.path() / "rootfs";
    // An overlay needs nothing assembled, but whether the layers allow one is only known once they
    // are unpacked: a tree is assembled after them when they do not.
    const bool overlay = options.assembly == Assembly::automatic && layers.size() >= 2 &&
                         overlay_usable(store).has_value();
    std::optional<RootfsAssembly> assembly;
    if (!overlay) {
      ENVD_TRY(auto started, RootfsAssembly::start(rootfs));
      assembly.emplace(std::move(started));
    }
    ENVD_TRY(auto got, pull_layers(origin, layers, image, durability, progress, fetched_count,
                                   assembly ? &*assembly : nullptr));
    std::vector<oci::Digest> diff_ids;
    for (const auto& l : layers) diff_ids.push_back(l.diff_id);
    bool fits = false;
    if (overlay) {
      ENVD_TRY(bool allowed, overlay_fits(store, diff_ids));
      fits = allowed;
    }
    if (fits) {
      ENVD_TRY_VOID(write_overlay_env(store, staging.path(), diff_ids));
    } else {
      std::vector<std::filesystem::path> dirs;
      for (const auto& d : diff_ids) dirs.push_back(store.layer_dir(d));
      auto stats = assembly ? assembly->finish() : assemble_rootfs(dirs, rootfs);
      if (!stats) return stats.error().with_context("assemble environment");
    }
    ENVD_TRY_VOID(write_file_atomic(staging.path() / "image.json", config_json));
    if (durability == NodeStore::Durability::durable)
      ENVD_TRY_VOID(fsync_directory(staging.path()));
    ENVD_TRY_VOID(store.commit_staging(staging, store.env_dir(manifest), durability));
    record.finish();
    return got;
  }

  Result<PulledImage> to_pulled(const ImageRecord& rec, const std::string& reference) {
    ENVD_TRY(auto config, oci::parse_config(rec.config_json));
    ENVD_TRY(auto kind, ensure_rootfs(store, rec.manifest_digest, options.assembly));
    return PulledImage{reference,
                       rec.manifest_digest,
                       std::move(config),
                       store.env_dir(rec.manifest_digest),
                       store.rootfs_dir(rec.manifest_digest),
                       kind,
                       rec.layers,
                       0,
                       0,
                       0.0};
  }

  Result<PulledImage> pull(const registry::Reference& ref, const std::string& canonical,
                           PullProgress* progress) {
    auto started = std::chrono::steady_clock::now();
    ENVD_TRY(auto origin, origin_for(ref));
    ENVD_TRY(auto pulls, store.lock_pulls_shared());
    ENVD_TRY(auto resolved,
             detail::resolve_manifest(*origin, ref, options.os, options.architecture, true));
    const auto& manifest = resolved.manifest;
    const auto& info = resolved.info;
    if (!info.config)
      return Error(ErrorCode::invalid_argument,
                   "manifest " + manifest.digest.str() + " has no config");
    std::uint64_t bytes = resolved.bytes;
    std::size_t fetched_count = 0;

    ENVD_TRY_VOID(store.blobs().put(manifest.digest, manifest.bytes));
    ENVD_TRY(auto config_bytes, fetch_blob(*origin, *info.config));
    bytes += config_bytes;
    auto config_json = store.blobs().read_all(info.config->digest);
    if (!config_json)
      return config_json.error().with_context("config " + info.config->digest.str());
    auto config = oci::parse_config(*config_json);
    if (!config) return config.error().with_context("config " + info.config->digest.str());
    if (config->diff_ids.size() != info.layers.size())
      return Error(ErrorCode::invalid_argument, "config " + info.config->digest.str() + " lists " +
                                                    std::to_string(config->diff_ids.size()) +
                                                    " diff_ids for " +
                                                    std::to_string(info.layers.size()) + " layers");
    std::vector<LayerRecord> layers;
    for (std::size_t i = 0; i < info.layers.size(); ++i)
      layers.push_back(LayerRecord{info.layers[i], config->diff_ids[i]});
    if (progress != nullptr) progress->layers_total = layers.size();

    if (!store.has_env(manifest.digest)) {
      ENVD_TRY(auto got, pull_and_assemble(*origin, manifest.digest, layers, *config_json,
                                           canonical, progress, fetched_count));
      bytes += got.bytes;
    } else if (progress != nullptr) {
      progress->layers_done = layers.size();
    }
    ImageRecord record{.manifest_digest = manifest.digest,
                       .manifest_media_type = info.media_type,
                       .manifest_size = manifest.bytes.size(),
                       .config = *info.config,
                       .config_json = *config_json,
                       .layers = layers,
                       .references = {},
                       .pulled_at = 0,
                       .last_used = 0,
                       .size_bytes = 0,
                       .in_use = false};
    ENVD_TRY_VOID(store.record_image(record, canonical));
    ENVD_TRY(auto kind, ensure_rootfs(store, manifest.digest, options.assembly));
    PulledImage out{canonical,
                    manifest.digest,
                    std::move(*config),
                    store.env_dir(manifest.digest),
                    store.rootfs_dir(manifest.digest),
                    kind,
                    std::move(layers),
                    fetched_count,
                    bytes,
                    0.0};
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    log::info("node", "pulled image",
              {{"image", canonical},
               {"manifest", manifest.digest.str()},
               {"layers_fetched", std::to_string(fetched_count)},
               {"bytes_fetched", std::to_string(bytes)}});
    return out;
  }
};

ImagePuller::ImagePuller(std::unique_ptr<Impl> impl) : m_impl(std::move(impl)) {}
ImagePuller::~ImagePuller() = default;

Result<std::unique_ptr<ImagePuller>> ImagePuller::create(NodeStore& store, PullerOptions options) {
  if (options.architecture.empty()) options.architecture = host_architecture();
  if (options.os.empty()) options.os = "linux";
  return std::unique_ptr<ImagePuller>(
      new ImagePuller(std::make_unique<Impl>(store, std::move(options))));
}

NodeStore& ImagePuller::store() {
  return m_impl->store;
}

namespace {
// [HOST/]REPOSITORY:TAG, with "latest" written out when neither tag nor digest was given.
std::string canonical_reference(registry::Reference ref) {
  if (ref.tag.empty() && !ref.digest) ref.tag = "latest";
  return ref.str();
}
}  // namespace

Result<PulledImage> ImagePuller::pull(const std::string& reference, PullProgress* progress) {
  auto ref = registry::parse_reference(reference);
  if (!ref) return ref.error();
  std::string canonical = canonical_reference(*ref);
  auto pulled = m_impl->pull(*ref, canonical, progress);
  if (!pulled) return pulled.error().with_context("pull " + canonical);
  return pulled;
}

Result<PulledImage> ImagePuller::ensure(const std::string& reference, PullProgress* progress) {
  auto ref = registry::parse_reference(reference);
  if (!ref) return ref.error();
  std::string canonical = canonical_reference(*ref);
  auto known = m_impl->store.lookup_reference(canonical);
  if (known && *known && m_impl->store.has_env(**known)) {
    auto rec = m_impl->store.find_image(**known);
    if (rec && *rec) {
      (void)m_impl->store.touch(**known);
      auto out = m_impl->to_pulled(**rec, canonical);
      if (out) return out;
    }
  }
  return pull(reference, progress);
}

Result<oci::Digest> ImagePuller::resolve(const std::string& reference) {
  auto ref = registry::parse_reference(reference);
  if (!ref) return ref.error();
  auto run = [&]() -> Result<oci::Digest> {
    ENVD_TRY(auto origin, m_impl->origin_for(*ref));
    ENVD_TRY(auto resolved, detail::resolve_manifest(*origin, *ref, m_impl->options.os,
                                                     m_impl->options.architecture, false));
    return resolved.manifest.digest;
  };
  auto out = run();
  if (!out) return out.error().with_context("resolve " + ref->str());
  return out;
}

Result<ImageLease> ImagePuller::pin(const oci::Digest& manifest) {
  return m_impl->store.pin(manifest);
}

Result<GcResult> ImagePuller::gc(const GcOptions& options) {
  return m_impl->store.gc(options);
}

}  // namespace envd::node
