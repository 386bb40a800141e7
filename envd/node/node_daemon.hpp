// The node daemon behind `envd node serve`: keeps each configured worker running in its image's
// environment, pulls each image once however many workers want it, watches tags and rolls workers
// onto a moved tag's new image after it is pulled and assembled, pins images in use, runs GC under
// the quota, and reports on its status endpoint.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>

#include "envd/node/image_puller.hpp"
#include "envd/node/node_config.hpp"
#include "envd/util/error.hpp"

namespace envd::node {

struct NodeDaemonOptions {
  NodeConfig config;  // config.data_dir must be set; tokens already read (read_tokens)
  // For references without a host (the local embedded-builder store); empty: they fail.
  LocalSourceFactory local_source;
  // The envd tag watch's wait_seconds per long poll (the builder caps it at 60).
  std::chrono::seconds watch_wait{50};
  // After a failed pull or watch: retried after this, doubling up to retry_max.
  std::chrono::milliseconds retry_initial{1000};
  std::chrono::milliseconds retry_max{60000};
  // Worker restarts: SupervisorOptions' backoff (tests shorten them).
  std::chrono::milliseconds restart_backoff_initial{1000};
  std::chrono::milliseconds restart_backoff_max{60000};
};

// Per image reference, one thread pulls it, then watches its tag: through the envd builder's
// long poll (GET /envd/v1/NAMESPACE/NAME/tags/TAG/watch?digest=D&wait_seconds=N), or by resolving
// the manifest digest every poll_interval (other registries, the local store; TagWatch). When the
// tag moves, the new image is pulled and assembled (workers keep running meanwhile), pinned, and
// only then handed to the Supervisor, which starts new replicas and stops old ones once the new
// ones are ready. Images are unpinned once no replica runs them and no worker wants them; GC runs
// every gc_interval and after images change. Failed pulls are retried with backoff and reported
// on /v1/images; workers whose image never arrived show why on /v1/workers.
// Thread-safe.
class NodeDaemon {
 public:
  // Opens the data dir (DATA/logs/WORKER/SLOT.log for worker output, DATA/r/ for relocated
  // environments), binds the status endpoint, starts pulling. Errors: io (data dir),
  // unavailable (status address), invalid_argument (config).
  static Result<std::unique_ptr<NodeDaemon>> start(NodeDaemonOptions options);
  ~NodeDaemon();  // stop()
  NodeDaemon(const NodeDaemon&) = delete;
  NodeDaemon& operator=(const NodeDaemon&) = delete;

  int status_port() const;
  const std::filesystem::path& data_dir() const;

  // Stops watching, stops every worker gracefully (SIGTERM, SIGKILL after its grace period),
  // waits for pulls in progress, stops the status endpoint. Idempotent.
  void stop();

 private:
  struct Impl;
  explicit NodeDaemon(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> m_impl;
};

}  // namespace envd::node
