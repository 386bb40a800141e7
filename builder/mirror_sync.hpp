// Mirroring by config: whenever a tag of the builder moves (a build, an OCI push), its image is
// copied to every external registry of the builder config, in the background, retried with
// backoff until it succeeds.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "builder/builder_config.hpp"
#include "builder/builder_state.hpp"
#include "envd/util/error.hpp"

namespace envd::builder {

struct MirrorSyncOptions {
  std::vector<MirrorConfig> mirrors;
  std::chrono::milliseconds retry_initial{1000};  // doubled per failed attempt, capped
  std::chrono::milliseconds retry_max{60000};
  std::string user_agent = "envd";
};

// One background thread copying images. Thread-safe.
class MirrorSync {
 public:
  struct Stats {
    std::uint64_t images_mirrored = 0;  // tag copies that succeeded
    std::uint64_t failures = 0;         // attempts that failed (each retried later)
    std::uint64_t pending = 0;          // repositories waiting to be mirrored
  };

  // Checks every mirror URL (http(s)://HOST[:PORT]) and starts the thread; token files are read
  // at each attempt, so a rotated token is picked up. `state` must outlive the MirrorSync.
  // Errors: invalid_argument naming the mirror URL.
  static Result<std::unique_ptr<MirrorSync>> create(BuilderState& state, MirrorSyncOptions options);
  ~MirrorSync();  // stops: an attempt in progress finishes first
  MirrorSync(const MirrorSync&) = delete;
  MirrorSync& operator=(const MirrorSync&) = delete;

  // Every tag of `repository` whose image a mirror does not have yet is copied there (soon, on
  // the background thread). Returns at once.
  void notify(const std::string& repository);
  Stats stats() const;

 private:
  struct Impl;
  explicit MirrorSync(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> m_impl;
};

}  // namespace envd::builder
