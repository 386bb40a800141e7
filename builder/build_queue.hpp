// Builds started through the envd API: a queue served by a fixed number of build threads, one
// record per build with a progress version that long polls wait on, and the tag-change signal
// that tag watches wait on. Condition variables throughout; nothing sleeps.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "builder/image_builder.hpp"
#include "envd/snapshot/snapshot.hpp"
#include "envd/store/blob_store.hpp"

namespace envd::builder {

enum class BuildState { running, succeeded, failed };  // queued builds count as running
std::string_view to_string(BuildState state);

struct BuildRequest {
  std::string repository;
  std::string tag;
  oci::Digest snapshot_digest;
  Compression compression = Compression::zstd;
};

// A consistent copy of one build's state.
struct BuildStatus {
  std::string id;
  BuildRequest request;
  BuildState state = BuildState::running;
  std::uint64_t version = 0;  // grows with every change (progress or state)
  std::uint64_t layers_total = 0;
  std::uint64_t layers_done = 0;
  std::uint64_t layers_reused = 0;
  std::uint64_t bytes_written = 0;
  std::optional<BuildResult> result;  // when succeeded
  std::optional<Error> error;         // when failed
};

// Thread-safe. The destructor calls shutdown().
class BuildQueue {
 public:
  using Clock = std::chrono::steady_clock;
  // Loads the snapshot named by a request (outside the queue's lock); shared, not copied.
  using SnapshotLoader =
      std::function<Result<std::shared_ptr<const snapshot::Snapshot>>(const oci::Digest&)>;

  struct Options {
    unsigned threads = 2;              // builds run at once
    std::size_t finished_kept = 1000;  // finished builds still answered by status()
    PlanOptions plan;
    std::string envd_version;
    std::function<void(std::string_view build_id)> before_build;  // see EnvdApiOptions
    std::function<void(const std::string& repository, const std::string& tag)>
        on_image_built;  // see EnvdApiOptions
  };

  // Builds run `builder` with file content from `blobs` (BlobContentSource).
  BuildQueue(ImageBuilder& builder, const store::BlobStore& blobs, Options options);
  ~BuildQueue();
  BuildQueue(const BuildQueue&) = delete;
  BuildQueue& operator=(const BuildQueue&) = delete;

  // Queues a build, or returns the id of the unfinished build of the same request (same
  // snapshot, repository, tag and compression). Errors: the loader's (not_found for an unknown
  // snapshot), unavailable after shutdown().
  Result<std::string> submit(const BuildRequest& request, const SnapshotLoader& load);

  // The build's status once its version exceeds `since`, it finished, or `deadline` passed (or
  // shutdown() was called), whichever comes first. nullopt for an unknown id, or one that belongs
  // to another repository (callers learn nothing about builds they may not see).
  std::optional<BuildStatus> status(std::string_view id, std::string_view repository,
                                    std::uint64_t since, Clock::time_point deadline);

  // A counter that grows whenever a tag may have moved; wait_tags() waits for it to pass a value.
  std::uint64_t tag_generation();
  // Wakes wait_tags() callers (a tag moved outside the queue, e.g. an OCI manifest PUT).
  void tags_changed();
  // Returns when tag_generation() != seen, at `deadline`, or after shutdown(); false once shut
  // down (the caller answers at once instead of waiting again).
  bool wait_tags(std::uint64_t seen, Clock::time_point deadline);

  // Wakes every waiter, fails queued builds (cancelled), refuses new ones and joins the build
  // threads (running builds finish first). Idempotent.
  void shutdown();

 private:
  struct Build;
  void run_builds();
  void run(Build& build);
  void finish(Build& build, Result<BuildResult> result);
  BuildStatus status_of(const Build& build) const;  // m_mutex held

  ImageBuilder& m_builder;
  const store::BlobStore& m_blobs;
  Options m_options;

  std::mutex m_mutex;
  std::condition_variable m_work;     // queue gained a build, or shutdown
  std::condition_variable m_changed;  // a build's version grew, or shutdown
  std::condition_variable m_tags;     // tag generation grew, or shutdown
  std::map<std::string, std::shared_ptr<Build>, std::less<>> m_builds;  // by id
  std::map<std::string, std::string> m_unfinished;                      // request key -> id
  std::deque<std::shared_ptr<Build>> m_queue;
  std::deque<std::string> m_finished;  // ids, oldest first
  std::uint64_t m_tag_generation = 0;
  bool m_stopping = false;
  std::vector<std::thread> m_threads;
  std::mutex m_join_mutex;  // one shutdown() joins
};

}  // namespace envd::builder
