// Turns a snapshot into a reproducible OCI image: plans layers, reuses cached ones, builds the
// rest in parallel, writes config and manifest, and tags the result in the registry index.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
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

 private:
  // The cached layer for `key`, when its blob is still in the store.
  Result<std::optional<BuiltLayer>> find_cached(const oci::Digest& key, Compression compression);
  // Builds and caches the layer holding the snapshot document at /.envd/snapshot.json.
  Result<BuiltLayer> build_document_layer(const snapshot::Snapshot& snapshot,
                                          const oci::Digest& key, Compression compression,
                                          CompressionContexts& contexts);
  Result<BuildResult> build_once(const snapshot::Snapshot& snapshot, const oci::Digest& digest,
                                 ContentSource& content, const BuildOptions& options,
                                 BuildProgress& progress);

  store::BlobStore& m_blobs;
  RegistryIndex& m_index;
  LayerCache& m_cache;
  std::mutex m_mutex;
  std::map<std::string, std::shared_future<Result<BuildResult>>> m_in_flight;
};

// The image config's Env for a snapshot: PATH with the primary environment's bin first, and
// VIRTUAL_ENV or CONDA_PREFIX/CONDA_DEFAULT_ENV. Pure.
std::vector<std::string> image_env(const snapshot::Snapshot& snapshot);

}  // namespace envd::builder
