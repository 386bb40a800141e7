// Image assembly (see image_builder.hpp). Nothing in the config or manifest depends on the time
// or the machine: the same snapshot gives the same manifest digest everywhere.
#include "builder/image_builder.hpp"

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <system_error>
#include <thread>

namespace envd::builder {
namespace {

constexpr std::string_view k_default_path =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
constexpr std::string_view k_snapshot_path = ".envd/snapshot.json";

std::string working_dir(const snapshot::Snapshot& snap) {
  for (const auto& s : snap.sources)
    if (s.role == snapshot::SourceRole::src) return s.root;
  return "/";
}

// Bump when the snapshot layer's tar changes for the same snapshot (its path, mode, or how the
// document is written), so cached snapshot layers are rebuilt.
constexpr std::string_view k_snapshot_layer_format = "envd-snapshot-layer-v2";

}  // namespace

oci::Digest snapshot_layer_key(const oci::Digest& snapshot_digest) {
  // The stable document is a pure function of the snapshot digest: digest_of hashes the same
  // canonical JSON without exactly the fields stable_document empties. So the key needs the
  // digest only, and a rebuild that finds the layer cached never serialises the document.
  std::string text(k_snapshot_layer_format);
  text += '\n';
  text += snapshot_digest.str();
  return oci::sha256_of(text);
}

std::string snapshot_tag(const oci::Digest& digest) {
  return "sha256-" + std::string(digest.hex());
}

std::vector<std::string> image_env(const snapshot::Snapshot& snap) {
  std::vector<std::string> env;
  const snapshot::Environment* primary = nullptr;
  for (const auto& e : snap.environments) {
    if (!e.partial) {
      primary = &e;
      break;
    }
  }
  if (primary == nullptr && !snap.environments.empty()) primary = &snap.environments.front();
  std::string path(k_default_path);
  if (primary != nullptr) path = primary->prefix + "/bin:" + path;
  env.push_back("PATH=" + path);
  if (primary != nullptr && primary->kind == snapshot::EnvironmentKind::venv) {
    env.push_back("VIRTUAL_ENV=" + primary->prefix);
  } else if (primary != nullptr && primary->kind == snapshot::EnvironmentKind::conda) {
    env.push_back("CONDA_PREFIX=" + primary->prefix);
    env.push_back("CONDA_DEFAULT_ENV=" + primary->name);
  }
  return env;
}

Result<BuildResult> ImageBuilder::build(const snapshot::Snapshot& snapshot, ContentSource& content,
                                        const BuildOptions& options, BuildProgress* progress) {
  if (!is_valid_repository(options.repository))
    return Error(ErrorCode::invalid_argument,
                 "invalid repository name \"" + options.repository + "\"");
  if (!is_valid_tag(options.tag))
    return Error(ErrorCode::invalid_argument, "invalid tag \"" + options.tag + "\"");
  oci::Digest digest = oci::sha256_of("");
  if (options.snapshot_digest) {
    digest = *options.snapshot_digest;
  } else {
    ENVD_TRY(digest, snapshot::digest_of(snapshot));
  }
  // Compression is part of the key: a gzip build must not be answered with a zstd one.
  const std::string key = digest.str() + " " + options.repository + ":" + options.tag + " " +
                          std::string(media_type_for(options.compression));

  std::promise<Result<BuildResult>> promise;
  std::shared_future<Result<BuildResult>> shared;
  bool leader = false;
  {
    std::lock_guard lock(m_mutex);
    auto it = m_in_flight.find(key);
    if (it != m_in_flight.end()) {
      shared = it->second;
    } else {
      shared = promise.get_future().share();
      m_in_flight.emplace(key, shared);
      leader = true;
    }
  }
  if (!leader) return shared.get();
  BuildProgress local;
  auto result = build_once(snapshot, digest, content, options, progress ? *progress : local);
  {
    std::lock_guard lock(m_mutex);
    m_in_flight.erase(key);
  }
  promise.set_value(result);
  return result;
}

Result<std::optional<BuiltLayer>> ImageBuilder::find_cached(const oci::Digest& key,
                                                            Compression compression) {
  ENVD_TRY(auto cached, m_cache.find(key, compression));
  if (cached && !m_blobs.contains(cached->blob.digest)) cached.reset();
  return cached;
}

ImageBuilder::LayerJob ImageBuilder::document_layer_job(
    std::shared_ptr<const snapshot::Snapshot> snapshot, const oci::Digest& key,
    Compression compression) {
  const std::string job_key = key.str() + " " + std::string(media_type_for(compression));
  std::lock_guard lock(m_jobs_mutex);
  std::erase_if(m_document_jobs, [](const auto& job) {
    return job.second.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
  });
  if (auto it = m_document_jobs.find(job_key); it != m_document_jobs.end()) return it->second;
  auto build = [this, snapshot = std::move(snapshot), key,
                compression]() mutable -> Result<BuiltLayer> {
    auto built = [&]() -> Result<BuiltLayer> {
      // A job that ended just before this one began has cached the layer.
      ENVD_TRY(auto cached, find_cached(key, compression));
      if (cached) return std::move(*cached);
      ENVD_TRY(const std::string document, snapshot::to_json_without_volatile(*snapshot));
      MemoryContentSource source(document);
      const std::vector<LayerEntry> entries{source.entry(std::string(k_snapshot_path), 0644)};
      CompressionContexts contexts;
      ENVD_TRY(auto layer, write_layer(entries, source, compression, m_blobs, &contexts));
      ENVD_TRY_VOID(m_cache.put(key, compression, layer));
      return layer;
    }();
    snapshot.reset();  // a finished job holds no snapshot
    if (!built) return built.error().with_context("build layer snapshot");
    return built;
  };
  LayerJob job;
  try {
    job = std::async(std::launch::async, build).share();
  } catch (const std::system_error&) {  // no thread to be had: build it here and now
    std::promise<Result<BuiltLayer>> done;
    done.set_value(build());
    return done.get_future().share();
  }
  m_document_jobs.emplace(job_key, job);
  return job;
}

void ImageBuilder::prepare_document_layer(std::shared_ptr<const snapshot::Snapshot> snapshot,
                                          const oci::Digest& digest, Compression compression) {
  const oci::Digest key = snapshot_layer_key(digest);
  auto cached = find_cached(key, compression);
  if (cached && *cached) return;
  document_layer_job(std::move(snapshot), key, compression);
}

Result<BuildResult> ImageBuilder::build_once(const snapshot::Snapshot& snapshot,
                                             const oci::Digest& digest, ContentSource& content,
                                             const BuildOptions& options, BuildProgress& progress) {
  auto started = std::chrono::steady_clock::now();
  // The snapshot document's layer goes last in the image, but is started first (if the builder
  // API has not started it already), on a thread of its own: serialising ~10 MB of JSON and
  // compressing it is the longest step of a rebuild after a small change, and it overlaps with
  // planning and building the content layers.
  CompressionContexts contexts;  // shared by the content layers of this build
  const oci::Digest document_key = snapshot_layer_key(digest);
  ENVD_TRY(auto document_cached, find_cached(document_key, options.compression));
  LayerJob document_layer;
  if (!document_cached) {
    // Not owned: the job is awaited below before this function returns, also on an error.
    document_layer = document_layer_job(
        std::shared_ptr<const snapshot::Snapshot>(std::shared_ptr<void>(), &snapshot), document_key,
        options.compression);
  }
  struct AwaitJob {
    const LayerJob& job;
    ~AwaitJob() {
      if (job.valid()) job.wait();
    }
  } await_document_layer{document_layer};

  auto plan = plan_layers(snapshot, options.plan);
  progress.layers_total = plan.size() + 1;
  if (document_cached) {
    progress.layers_reused += 1;
    progress.layers_done += 1;
  }
  std::vector<std::optional<BuiltLayer>> built(plan.size());
  std::vector<std::size_t> to_build;
  for (std::size_t i = 0; i < plan.size(); ++i) {
    ENVD_TRY(auto cached, find_cached(plan[i].key, options.compression));
    if (cached) {
      built[i] = std::move(*cached);
      progress.layers_reused += 1;
      progress.layers_done += 1;
    } else {
      to_build.push_back(i);
    }
  }
  progress.changed();
  // Biggest first, so the last layers to finish are small ones and every core stays busy to the
  // end of a cold build.
  std::sort(to_build.begin(), to_build.end(),
            [&](std::size_t a, std::size_t b) { return plan[a].bytes > plan[b].bytes; });

  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::optional<Error> first_error;
  auto worker = [&] {
    for (std::size_t k; !failed.load() && (k = next.fetch_add(1)) < to_build.size();) {
      const auto& layer = plan[to_build[k]];
      auto r = write_layer(layer.entries(), content, options.compression, m_blobs, &contexts);
      if (r)
        r = [&]() -> Result<BuiltLayer> {
          ENVD_TRY_VOID(m_cache.put(layer.key, options.compression, *r));
          return *r;
        }();
      if (!r) {
        std::lock_guard lock(error_mutex);
        if (!first_error) first_error = r.error().with_context("build layer " + layer.name);
        failed = true;
        return;
      }
      progress.bytes_written += r->blob.size;
      progress.layers_done += 1;
      progress.changed();
      built[to_build[k]] = std::move(*r);
    }
  };
  unsigned threads =
      options.threads != 0 ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  threads = static_cast<unsigned>(
      std::min<std::size_t>(threads, std::max<std::size_t>(to_build.size(), 1)));
  std::vector<std::thread> pool;
  for (unsigned i = 1; i < threads; ++i) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (document_layer.valid()) {
    const auto& r = document_layer.get();
    if (!r && !first_error) first_error = r.error();
    if (r) {
      document_cached = *r;
      progress.bytes_written += r->blob.size;
      progress.layers_done += 1;
      progress.changed();
    }
  }
  if (first_error) return *first_error;
  built.push_back(std::move(document_cached));

  oci::ImageConfig config;
  config.architecture = snapshot.platform.arch;
  config.os = snapshot.platform.os;
  config.env = image_env(snapshot);
  config.working_dir = working_dir(snapshot);
  config.labels[std::string(oci::k_label_snapshot_digest)] = digest.str();
  config.labels[std::string(oci::k_label_envd_version)] = options.envd_version;
  oci::ImageManifest manifest{
      oci::Descriptor{std::string(oci::media_type::k_config), digest, 0, {}}, {}, {}};
  for (const auto& b : built) {
    config.diff_ids.push_back(b->diff_id);
    manifest.layers.push_back(b->blob);
  }
  const std::string config_json = oci::serialize(config);
  ENVD_TRY(auto config_digest, m_blobs.put(config_json));
  manifest.config.digest = config_digest;
  manifest.config.size = config_json.size();
  manifest.annotations[std::string(oci::k_label_snapshot_digest)] = digest.str();
  const std::string manifest_json = oci::serialize(manifest);
  ENVD_TRY(auto manifest_digest, m_blobs.put(manifest_json));

  std::vector<oci::Digest> blobs{config_digest};
  for (const auto& l : manifest.layers) blobs.push_back(l.digest);
  const std::string immutable = snapshot_tag(digest);
  ENVD_TRY_VOID(m_index.commit_image(options.repository, blobs, manifest_digest,
                                     std::string(oci::media_type::k_manifest),
                                     {options.tag, immutable}));

  BuildResult result{manifest_digest,
                     digest,
                     manifest_json.size(),
                     built.size(),
                     static_cast<std::size_t>(progress.layers_reused.load()),
                     progress.bytes_written.load(),
                     {options.tag, immutable},
                     0};
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return result;
}

}  // namespace envd::builder
