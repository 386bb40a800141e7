// The envd API's build queue (see build_queue.hpp). Every state change happens under m_mutex and
// is announced on a condition variable, so long polls wake exactly when there is news.
#include "builder/build_queue.hpp"

#include <cstdio>
#include <random>

#include "builder/content_source.hpp"
#include "envd/util/log.hpp"

namespace envd::builder {
namespace {

// 128 random bits as hex: unguessable, so a build id reveals nothing about other builds.
std::string random_id() {
  std::random_device rd;
  std::string out;
  for (int i = 0; i < 4; ++i) {
    char buf[9];
    std::snprintf(buf, sizeof buf, "%08x", static_cast<unsigned>(rd()));
    out += buf;
  }
  return out;
}

std::string request_key(const BuildRequest& r) {
  return r.snapshot_digest.str() + " " + r.repository + ":" + r.tag + " " +
         std::string(media_type_for(r.compression));
}

}  // namespace

std::string_view to_string(BuildState state) {
  switch (state) {
    case BuildState::running:
      return "running";
    case BuildState::succeeded:
      return "succeeded";
    case BuildState::failed:
      return "failed";
  }
  return "failed";
}

struct BuildQueue::Build {
  Build(std::string id_, std::string key_, BuildRequest request_)
      : id(std::move(id_)), key(std::move(key_)), request(std::move(request_)) {}

  std::string id;
  std::string key;
  BuildRequest request;
  std::shared_ptr<const snapshot::Snapshot> snapshot;  // released when the build ends
  BuildProgress progress;
  BuildState state = BuildState::running;
  std::uint64_t version = 1;
  std::optional<BuildResult> result;
  std::optional<Error> error;
};

BuildQueue::BuildQueue(ImageBuilder& builder, const store::BlobStore& blobs, Options options)
    : m_builder(builder), m_blobs(blobs), m_options(std::move(options)) {
  unsigned n = std::max(1u, m_options.threads);
  for (unsigned i = 0; i < n; ++i) m_threads.emplace_back([this] { run_builds(); });
}

BuildQueue::~BuildQueue() {
  shutdown();
}

Result<std::string> BuildQueue::submit(const BuildRequest& request, const SnapshotLoader& load) {
  const std::string key = request_key(request);
  auto existing = [&]() -> std::optional<std::string> {
    if (auto it = m_unfinished.find(key); it != m_unfinished.end()) return it->second;
    return std::nullopt;
  };
  {
    std::lock_guard lock(m_mutex);
    if (m_stopping) return Error(ErrorCode::unavailable, "the builder is shutting down");
    if (auto id = existing()) return *id;
  }
  ENVD_TRY(auto snap, load(request.snapshot_digest));
  std::lock_guard lock(m_mutex);
  if (m_stopping) return Error(ErrorCode::unavailable, "the builder is shutting down");
  if (auto id = existing()) return *id;  // an identical request won the race while we loaded
  auto build = std::make_shared<Build>(random_id(), key, request);
  build->snapshot = std::move(snap);
  m_builds.emplace(build->id, build);
  m_unfinished.emplace(key, build->id);
  m_queue.push_back(build);
  m_work.notify_one();
  log::info("build", "queued",
            {{"build", build->id},
             {"image", request.repository + ":" + request.tag},
             {"snapshot", request.snapshot_digest.str()}});
  return build->id;
}

void BuildQueue::run_builds() {
  for (;;) {
    std::shared_ptr<Build> build;
    {
      std::unique_lock lock(m_mutex);
      m_work.wait(lock, [&] { return m_stopping || !m_queue.empty(); });
      if (m_stopping) return;
      build = std::move(m_queue.front());
      m_queue.pop_front();
    }
    run(*build);
  }
}

void BuildQueue::run(Build& build) {
  if (m_options.before_build) m_options.before_build(build.id);
  build.progress.on_change = [this, &build] {
    std::lock_guard lock(m_mutex);
    ++build.version;
    m_changed.notify_all();
  };
  BlobContentSource content(m_blobs);
  BuildOptions options;
  options.repository = build.request.repository;
  options.tag = build.request.tag;
  options.compression = build.request.compression;
  options.plan = m_options.plan;
  options.envd_version = m_options.envd_version;
  // The snapshot store keeps each snapshot under the digest it was checked to have.
  options.snapshot_digest = build.request.snapshot_digest;
  auto result = m_builder.build(*build.snapshot, content, options, &build.progress);
  finish(build, std::move(result));
}

void BuildQueue::finish(Build& build, Result<BuildResult> result) {
  const std::string image = build.request.repository + ":" + build.request.tag;
  if (result) {
    log::info("build", "succeeded",
              {{"build", build.id},
               {"image", image},
               {"manifest", result->manifest_digest.str()},
               {"layers", std::to_string(result->layers)},
               {"reused", std::to_string(result->layers_reused)}});
  } else {
    log::warn("build", "failed",
              {{"build", build.id}, {"image", image}, {"error", result.error().message()}});
  }
  if (result && m_options.on_image_built)
    m_options.on_image_built(build.request.repository, build.request.tag);
  std::lock_guard lock(m_mutex);
  build.progress.on_change = nullptr;
  build.snapshot.reset();
  if (result) {
    build.state = BuildState::succeeded;
    build.result = std::move(*result);
    ++m_tag_generation;
    m_tags.notify_all();
  } else {
    build.state = BuildState::failed;
    build.error = result.error();
  }
  ++build.version;
  m_unfinished.erase(build.key);
  m_finished.push_back(build.id);
  while (m_finished.size() > m_options.finished_kept) {
    m_builds.erase(m_finished.front());
    m_finished.pop_front();
  }
  m_changed.notify_all();
}

BuildStatus BuildQueue::status_of(const Build& b) const {
  return BuildStatus{b.id,
                     b.request,
                     b.state,
                     b.version,
                     b.progress.layers_total,
                     b.progress.layers_done,
                     b.progress.layers_reused,
                     b.progress.bytes_written,
                     b.result,
                     b.error};
}

std::optional<BuildStatus> BuildQueue::status(std::string_view id, std::string_view repository,
                                              std::uint64_t since, Clock::time_point deadline) {
  std::unique_lock lock(m_mutex);
  auto it = m_builds.find(id);
  if (it == m_builds.end() || it->second->request.repository != repository) return std::nullopt;
  std::shared_ptr<Build> build = it->second;  // stays valid if dropped from m_builds meanwhile
  m_changed.wait_until(lock, deadline, [&] {
    return m_stopping || build->version > since || build->state != BuildState::running;
  });
  return status_of(*build);
}

std::uint64_t BuildQueue::tag_generation() {
  std::lock_guard lock(m_mutex);
  return m_tag_generation;
}

void BuildQueue::tags_changed() {
  std::lock_guard lock(m_mutex);
  ++m_tag_generation;
  m_tags.notify_all();
}

bool BuildQueue::wait_tags(std::uint64_t seen, Clock::time_point deadline) {
  std::unique_lock lock(m_mutex);
  m_tags.wait_until(lock, deadline, [&] { return m_stopping || m_tag_generation != seen; });
  return !m_stopping;
}

void BuildQueue::shutdown() {
  std::lock_guard join_lock(m_join_mutex);
  std::deque<std::shared_ptr<Build>> cancelled;
  {
    std::lock_guard lock(m_mutex);
    if (m_stopping && m_threads.empty()) return;
    m_stopping = true;
    cancelled.swap(m_queue);
    m_work.notify_all();
    m_changed.notify_all();
    m_tags.notify_all();
  }
  for (auto& b : cancelled)
    finish(*b, Error(ErrorCode::cancelled, "the builder shut down before the build started"));
  for (auto& t : m_threads) t.join();
  m_threads.clear();
}

}  // namespace envd::builder
