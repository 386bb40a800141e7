// Turns a snapshot into a reproducible OCI image: plans layers, reuses cached ones, builds the
// rest in parallel, writes config and manifest, and tags the result in the registry index.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "builder/layer_cache.hpp"
#include "builder/layer_plan.hpp"
#include "builder/layer_writer.hpp"
#include "builder/registry_index.hpp"
#include "envd/oci/image.hpp"
#include "envd/snapshot/snapshot.hpp"
#include "envd/store/blob_store.hpp"

namespace envd::builder {

struct BuildOptions {
  std::string repository;  // NAMESPACE/NAME
  std::string tag = "latest";
  Compression compression = Compression::zstd;
  PlanOptions plan;
  unsigned threads = 0;  // 0: one per core
  std::string envd_version;
  // snapshot::digest_of(snapshot), when the caller has it already (`envd push` computes it for
  // the push): saves serialising the whole snapshot once more. It must be that digest: it names
  // the image (immutable tag, label) and keys the snapshot document's layer.
  std::optional<oci::Digest> snapshot_digest;
};

// Live counters for a progress display or the build API's progress stream.
struct BuildProgress {
  std::atomic<std::uint64_t> layers_total{0};
  std::atomic<std::uint64_t> layers_done{0};
  std::atomic<std::uint64_t> layers_reused{0};
  std::atomic<std::uint64_t> bytes_written{0};  // compressed bytes of new layers
  // Called after the counters above changed, from whichever build thread changed them (so it
  // must be thread-safe); lets a follower wait on a condition variable instead of polling.
  std::function<void()> on_change;

  void changed() {
    if (on_change) on_change();
  }
};

struct BuildResult {
  oci::Digest manifest_digest;
  oci::Digest snapshot_digest;
  std::uint64_t manifest_size = 0;
  std::size_t layers = 0;
  std::size_t layers_reused = 0;
  std::uint64_t bytes_written = 0;
  std::vector<std::string> tags;  // the requested tag and the immutable "sha256-<snapshot hex>"
  double seconds = 0;
};

// The layer cache key of the layer holding the snapshot document (/.envd/snapshot.json) of the
// snapshot with this digest. Pure.
oci::Digest snapshot_layer_key(const oci::Digest& snapshot_digest);

// The immutable tag of a snapshot's image.
std::string snapshot_tag(const oci::Digest& snapshot_digest);

// Thread-safe. Concurrent builds of the same snapshot into the same repository share one build.
class ImageBuilder {
 public:
  ImageBuilder(store::BlobStore& blobs, RegistryIndex& index, LayerCache& cache)
      : m_blobs(blobs), m_index(index), m_cache(cache) {}

  // Builds `snapshot`, reading file content through `content` (each file verified against its
  // digest). Errors: invalid_argument (repository or tag), the content source's errors naming the
  // file (not_found, digest_mismatch), io.
  Result<BuildResult> build(const snapshot::Snapshot& snapshot, ContentSource& content,
                            const BuildOptions& options, BuildProgress* progress = nullptr);

  // Starts building the layer of the snapshot document (/.envd/snapshot.json) of `snapshot`,
  // whose digest is `digest`, on a thread of its own, unless that layer is cached or under way,
  // and returns at once. The builder API calls it as soon as a snapshot arrives: serialising and
  // compressing ~10 MB of JSON is the longest step of a rebuild after a small change, and so it
  // overlaps with storing the snapshot. A build of the snapshot with the same compression takes
  // this layer (waiting for it) instead of building its own. A failure is left to that build,
  // which tries again.
  void prepare_document_layer(std::shared_ptr<const snapshot::Snapshot> snapshot,
                              const oci::Digest& digest, Compression compression);

 private:
  // The cached layer for `key`, when its blob is still in the store.
  Result<std::optional<BuiltLayer>> find_cached(const oci::Digest& key, Compression compression);
  using LayerJob = std::shared_future<Result<BuiltLayer>>;
  // The job building the layer holding the snapshot document at /.envd/snapshot.json, which
  // caches it under `key`: the one under way for `key` and `compression`, else a new one. A new
  // job holds `snapshot` until it ends (a caller passing a non-owning pointer must wait for it).
  LayerJob document_layer_job(std::shared_ptr<const snapshot::Snapshot> snapshot,
                              const oci::Digest& key, Compression compression);
  Result<BuildResult> build_once(const snapshot::Snapshot& snapshot, const oci::Digest& digest,
                                 ContentSource& content, const BuildOptions& options,
                                 BuildProgress& progress);

  store::BlobStore& m_blobs;
  RegistryIndex& m_index;
  LayerCache& m_cache;
  std::mutex m_mutex;
  std::map<std::string, std::shared_future<Result<BuildResult>>> m_in_flight;
  std::mutex m_jobs_mutex;
  // Document layer jobs under way, by layer key and compression (finished ones are dropped at the
  // next lookup). Declared last, so destroying the builder first waits for the jobs.
  std::map<std::string, LayerJob> m_document_jobs;
};

// The image config's Env for a snapshot: PATH with the primary environment's bin first, and
// VIRTUAL_ENV or CONDA_PREFIX/CONDA_DEFAULT_ENV. Pure.
std::vector<std::string> image_env(const snapshot::Snapshot& snapshot);

}  // namespace envd::builder
