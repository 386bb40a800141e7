// Supervising the replicas of workers as child processes: restart with jittered exponential
// backoff, logs in files, readiness, rolling onto a new image (new replicas first, old ones
// stopped only once the new ones run) and graceful stops (SIGTERM, SIGKILL after a grace period).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "envd/util/error.hpp"

namespace envd::node {

enum class RestartPolicy {
  always,      // restart whenever the replica exits
  on_failure,  // restart after a non-zero exit, a signal, a failed launch or readiness timeout
  never,       // a replica that exits stays exited
};

// Parses "always" | "on-failure" | "never". Errors: invalid_argument naming the text.
Result<RestartPolicy> parse_restart_policy(std::string_view text);
std::string_view to_string(RestartPolicy policy);

// When a started replica counts as running (and old replicas may be stopped during a roll).
struct Readiness {
  // Alive this long after its start. Then `command`, when given, is run on the host every
  // `interval` until it exits 0; its environment has ENVD_WORKER_NAME, ENVD_WORKER_PID,
  // ENVD_WORKER_LOG and ENVD_WORKER_IMAGE (e.g. grep -q "Registered to" "$ENVD_WORKER_LOG").
  std::chrono::milliseconds after{2000};
  std::vector<std::string> command;
  std::chrono::milliseconds interval{500};
  // Not ready this long after its start: the replica is stopped and counts as failed.
  std::chrono::milliseconds timeout{300000};
};

// How one worker's replicas are run; the image is given separately (Supervisor::run_worker).
struct WorkerSpec {
  std::string name;  // also a directory name under the log dir
  unsigned replicas = 1;
  RestartPolicy restart = RestartPolicy::always;
  std::chrono::milliseconds stop_grace{10000};  // SIGTERM, then SIGKILL after this
  Readiness readiness;
};

// One replica to start: worker `worker` on image `image` (opaque here: the daemon passes the
// manifest digest), writing its output to `log_file`.
struct LaunchRequest {
  std::string worker;
  std::string image;
  unsigned slot = 0;  // 0..2*replicas-1: stable across restarts, names the log file
  std::filesystem::path log_file;
};

// Starts the replica and returns its pid. The process must be a child of this process, leader
// of its own process group (stops and kills are sent to the group), e.g. spawn_background().
using Launcher = std::function<Result<pid_t>(const LaunchRequest&)>;

enum class ReplicaState {
  starting,  // launched, not ready yet
  ready,     // running and ready
  stopping,  // SIGTERM sent; SIGKILL at the grace deadline
  backoff,   // exited or failed to launch; restarts at restart_at
  exited,    // exited and not restarted (policy never, or on-failure after exit 0)
};

std::string_view to_string(ReplicaState state);

struct ReplicaStatus {
  unsigned slot = 0;
  pid_t pid = 0;  // 0 when no process runs
  std::string image;
  ReplicaState state = ReplicaState::starting;
  std::chrono::system_clock::time_point started_at{};  // of the current or last process
  unsigned restarts = 0;                               // of this slot
  std::optional<int> last_exit;  // exit code of the last process, 128+N for signal N
  std::string last_error;        // why the last launch failed, if it did
  std::filesystem::path log_file;
};

struct WorkerStatus {
  std::string name;
  std::string image;      // the image replicas should run
  unsigned replicas = 0;  // desired
  unsigned ready = 0;     // replicas on `image` that are ready
  bool rolling = false;   // replicas on another image still run
  std::uint64_t restarts = 0;
  std::vector<ReplicaStatus> replica_status;  // by slot
};

struct SupervisorStats {
  std::uint64_t launches = 0;
  std::uint64_t launch_failures = 0;
  std::uint64_t restarts = 0;  // replicas restarted after an exit or a failed launch
  std::uint64_t kills = 0;     // SIGKILLs after a grace period ran out
};

struct SupervisorOptions {
  std::filesystem::path log_dir;  // logs go to LOG_DIR/WORKER/SLOT.log
  Launcher launch;
  std::chrono::milliseconds backoff_initial{1000};  // doubled per consecutive failure, jittered
  std::chrono::milliseconds backoff_max{60000};
  std::chrono::milliseconds stable_after{10000};  // a run this long resets the backoff
  std::uint64_t max_log_bytes = 64ull << 20;      // a larger log is moved to SLOT.log.1 at a start
};

// Runs replicas on one internal thread that reaps them (pidfds), so that a crash is seen at once.
// Reconciles each worker towards its spec:
// - replicas on the worker's image are started until there are spec.replicas of them; one that
//   exits is restarted per the policy after min(backoff_max, backoff_initial * 2^failures) times
//   a random factor in [0.5, 1] (failures: consecutive runs shorter than stable_after);
// - replicas on an older image keep running until as many replicas on the new image are ready
//   (or exited for good) as are needed, then are stopped: with 2+ replicas there is always one
//   running. Old replicas that exit during a roll are not restarted.
// - stopping: SIGTERM to the process group, SIGKILL after spec.stop_grace; leftovers of a
//   replica's process group are killed once its leader exited.
// Thread-safe: every method may be called from any thread.
class Supervisor {
 public:
  // Creates the log dir and starts the supervising thread. Errors: invalid_argument (no
  // launcher), io (log dir, pidfd/eventfd creation).
  static Result<std::unique_ptr<Supervisor>> create(SupervisorOptions options);
  ~Supervisor();  // shutdown()
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Runs worker spec.name on `image`: starts its replicas, or rolls them when `image` differs
  // from the one they run, or scales them to a changed spec.replicas. Ignored after shutdown().
  void run_worker(WorkerSpec spec, std::string image);
  // Stops the worker's replicas gracefully and forgets it once they exited.
  void remove_worker(const std::string& name);

  std::vector<WorkerStatus> status() const;  // sorted by name
  SupervisorStats stats() const;
  // Images that a live replica runs or a worker wants (the caller keeps them pinned).
  std::set<std::string> images_in_use() const;

  // Stops every replica (SIGTERM, SIGKILL after its worker's grace), waits until all exited,
  // then ends the thread. Idempotent.
  void shutdown();

 private:
  struct Impl;
  explicit Supervisor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> m_impl;
};

}  // namespace envd::node
