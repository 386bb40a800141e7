// The node daemon's status endpoint (DESIGN.md §7): /healthz, /v1/images and /v1/workers (JSON),
// /metrics (Prometheus text format), served with cpp-httplib from what a StatusSource reports.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "envd/node/supervisor.hpp"
#include "envd/util/error.hpp"

namespace envd::node {

// An image reference a worker asks for, as the daemon tracks it.
struct TrackedImage {
  std::string reference;        // canonical, as configured
  std::string manifest_digest;  // what workers run (or will run); "" before the first pull
  std::string state;            // "pulling" | "ready" | "failed"
  std::string error;            // the last pull or watch error, "" when none
  std::string watch;            // "envd" (long poll) | "poll" | "pinned" (a digest reference)
  std::vector<std::string> workers;
  std::int64_t updated_at = 0;  // unix seconds of the last pull or check
};

// An image in the node's store.
struct StoredImage {
  std::string manifest_digest;
  std::vector<std::string> references;
  std::uint64_t size_bytes = 0;
  bool in_use = false;
  std::int64_t pulled_at = 0;
  std::int64_t last_used = 0;
  std::string assembly;  // "overlay" | "hardlink" (env_assembly.hpp)
};

// A configured worker: waiting for its image, or supervised.
struct WorkerView {
  std::string name;
  std::string reference;
  std::vector<std::string> command;
  std::string waiting;                 // why no replica runs yet; "" once supervised
  std::optional<WorkerStatus> status;  // the supervisor's view (image = manifest digest)
};

struct NodeMetrics {
  std::uint64_t pulls = 0;  // completed pulls (each may have fetched nothing)
  std::uint64_t pull_failures = 0;
  std::uint64_t bytes_fetched = 0;
  std::uint64_t tag_moves = 0;
  std::uint64_t cache_bytes = 0;
  std::optional<std::uint64_t> cache_quota;
  std::uint64_t evictions = 0;  // images evicted by GC
  std::uint64_t gc_runs = 0;
  SupervisorStats supervisor;
};

struct Health {
  bool ok = true;
  std::string detail;  // one line: why not ok, or a summary
};

// What the server reports; each function is called per request, from the server's threads.
struct StatusSource {
  std::function<Health()> health;
  std::function<std::vector<TrackedImage>()> tracked_images;
  std::function<std::vector<StoredImage>()> stored_images;
  std::function<std::vector<WorkerView>()> workers;
  std::function<NodeMetrics()> metrics;
};

// The documents, also for tests. Pure.
std::string render_images_json(const std::vector<TrackedImage>& tracked,
                               const std::vector<StoredImage>& stored);
std::string render_workers_json(const std::vector<WorkerView>& workers);
// Prometheus text exposition format 0.0.4:
// https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format
std::string render_metrics(const NodeMetrics& metrics, const std::vector<WorkerView>& workers);

// Serves GET /healthz (200 "ok", 503 with the detail when not ok), /v1/images, /v1/workers and
// /metrics on its own threads; other paths 404, other methods 405. Thread-safe.
class StatusServer {
 public:
  // Binds host:port (port 0: any free port) and starts serving.
  // Errors: unavailable (address in use or not local).
  static Result<std::unique_ptr<StatusServer>> start(const std::string& host, int port,
                                                     StatusSource source);
  ~StatusServer();  // stop()
  StatusServer(const StatusServer&) = delete;
  StatusServer& operator=(const StatusServer&) = delete;

  int port() const;
  void stop();  // idempotent; in-flight requests finish

 private:
  struct Impl;
  explicit StatusServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> m_impl;
};

}  // namespace envd::node
