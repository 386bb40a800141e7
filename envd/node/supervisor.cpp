// The supervisor's loop: one thread reconciles every worker towards its spec, reaps replicas as
// their pidfds become readable, runs readiness checks and timers (backoff, grace, readiness).
// API calls only change the desired state under the lock and wake the loop through an eventfd.
#include "envd/node/supervisor.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <list>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "envd/util/log.hpp"
#include "envd/util/unique_fd.hpp"

extern char** environ;

namespace envd::node {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr std::string_view k_component = "supervisor";
constexpr milliseconds k_max_poll{1000};            // timers are re-checked at least this often
constexpr milliseconds k_sweep_without_pidfd{100};  // reaping by polling when pidfds fail

UniqueFd open_pidfd(pid_t pid) {
#ifdef SYS_pidfd_open
  return UniqueFd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
#else
  (void)pid;
  return UniqueFd(-1);
#endif
}

// Sends `sig` to the process group led by `pid`, or to `pid` alone when it leads none.
void signal_group(pid_t pid, int sig) {
  if (pid <= 0) return;
  if (::kill(-pid, sig) != 0 && errno == ESRCH) ::kill(pid, sig);
}

// Exit code as a shell reports it: the code, or 128+N for signal N.
int exit_code_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

std::string utc_now_text() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

struct Replica {
  unsigned slot = 0;
  std::string image;
  ReplicaState state = ReplicaState::starting;
  bool launch_pending = false;
  pid_t pid = 0;
  UniqueFd pidfd;
  Clock::time_point started{};
  std::chrono::system_clock::time_point started_wall{};
  Clock::time_point stop_deadline{};
  bool killed = false;
  bool fail_on_exit = false;  // stopped because it was not ready in time: a failure
  pid_t check_pid = 0;
  UniqueFd check_fd;
  Clock::time_point next_check{};
  unsigned failures = 0;  // consecutive short runs, for the backoff
  unsigned restarts = 0;
  Clock::time_point restart_at{};
  std::optional<int> last_exit;
  std::string last_error;
  fs::path log_file;
};

struct Worker {
  WorkerSpec spec;
  std::string image;
  bool removing = false;
  std::list<Replica> replicas;
  std::uint64_t restarts = 0;
};

using ToLaunch = std::pair<Worker*, Replica*>;

// One line about a replica (worker, slot, pid, image) and an optional `extra` field.
void log_replica(log::Level level, std::string_view msg, const std::string& worker,
                 const Replica& r, const log::Field& extra = {"", ""}) {
  if (!log::enabled(level)) return;
  std::string slot = std::to_string(r.slot);
  std::string pid = std::to_string(r.pid);
  if (extra.first.empty())
    log::write(level, k_component, msg,
               {{"worker", worker}, {"slot", slot}, {"pid", pid}, {"image", r.image}});
  else
    log::write(level, k_component, msg,
               {{"worker", worker}, {"slot", slot}, {"pid", pid}, {"image", r.image}, extra});
}

struct LaunchJob {
  Replica* replica;
  LaunchRequest request;
  unsigned restarts;
};

// Moves an oversized log aside, then appends a line saying which replica starts on what.
Result<void> prepare_log(const LaunchJob& job, std::uint64_t max_bytes) {
  const fs::path& log = job.request.log_file;
  std::error_code ec;
  fs::create_directories(log.parent_path(), ec);
  if (ec)
    return Error::from_errno("create log directory " + log.parent_path().string(), ec.value());
  auto size = fs::file_size(log, ec);
  if (!ec && size > max_bytes) fs::rename(log, fs::path(log.string() + ".1"), ec);
  UniqueFd fd(::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640));
  if (!fd.valid()) return Error::from_errno("open log " + log.string(), errno);
  std::string line = "--- envd: " + utc_now_text() + " worker " + job.request.worker + " replica " +
                     std::to_string(job.request.slot) + " starting on " + job.request.image +
                     (job.restarts > 0 ? " (restart " + std::to_string(job.restarts) + ")" : "") +
                     "\n";
  if (::write(fd.get(), line.data(), line.size()) < 0)
    return Error::from_errno("write log " + log.string(), errno);
  return {};
}

}  // namespace

Result<RestartPolicy> parse_restart_policy(std::string_view text) {
  if (text == "always") return RestartPolicy::always;
  if (text == "on-failure") return RestartPolicy::on_failure;
  if (text == "never") return RestartPolicy::never;
  return Error(ErrorCode::invalid_argument,
               "restart policy \"" + std::string(text) + "\": must be always, on-failure or never");
}

std::string_view to_string(RestartPolicy policy) {
  constexpr std::string_view k_names[] = {"always", "on-failure", "never"};
  return k_names[static_cast<int>(policy)];
}

std::string_view to_string(ReplicaState state) {
  constexpr std::string_view k_names[] = {"starting", "ready", "stopping", "backoff", "exited"};
  return k_names[static_cast<int>(state)];
}

struct Supervisor::Impl {
  SupervisorOptions options;
  mutable std::mutex mutex;
  std::map<std::string, Worker> workers;
  bool shutting_down = false;
  SupervisorStats stats;
  UniqueFd wake_fd;
  std::thread thread;
  std::mutex join_mutex;
  std::mt19937_64 rng{std::random_device{}()};

  void wake() {
    std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_fd.get(), &one, sizeof one);
  }

  milliseconds backoff(unsigned failures) {
    auto base = options.backoff_initial;
    for (unsigned i = 0; i < failures && base < options.backoff_max; ++i) base *= 2;
    base = std::min(base, options.backoff_max);
    std::uniform_real_distribution<double> jitter(0.5, 1.0);
    return milliseconds(static_cast<std::int64_t>(static_cast<double>(base.count()) * jitter(rng)));
  }

  void schedule_restart(Worker& w, Replica& r, Clock::time_point now) {
    if (now - r.started >= options.stable_after) r.failures = 0;
    auto delay = backoff(r.failures);
    ++r.failures;
    ++r.restarts;
    ++w.restarts;
    ++stats.restarts;
    r.state = ReplicaState::backoff;
    r.restart_at = now + delay;
    log_replica(log::Level::info, "replica will restart", w.spec.name, r,
                {"delay_ms", std::to_string(delay.count())});
  }

  void stop_check(Replica& r) {
    if (r.check_pid == 0) return;
    signal_group(r.check_pid, SIGKILL);
    int status = 0;
    ::waitpid(r.check_pid, &status, 0);
    r.check_pid = 0;
    r.check_fd = UniqueFd();
  }

  void begin_stop(const Worker& w, Replica& r, Clock::time_point now, std::string_view why) {
    stop_check(r);
    signal_group(r.pid, SIGTERM);
    r.state = ReplicaState::stopping;
    r.stop_deadline = now + w.spec.stop_grace;
    r.killed = false;
    log_replica(log::Level::info, "stopping replica", w.spec.name, r, {"why", std::string(why)});
  }

  void spawn_check(const Worker& w, Replica& r, Clock::time_point now) {
    r.next_check = now + w.spec.readiness.interval;
    std::vector<std::string> env_text;
    for (char** e = environ; *e != nullptr; ++e) env_text.emplace_back(*e);
    env_text.push_back("ENVD_WORKER_NAME=" + w.spec.name);
    env_text.push_back("ENVD_WORKER_PID=" + std::to_string(r.pid));
    env_text.push_back("ENVD_WORKER_LOG=" + r.log_file.string());
    env_text.push_back("ENVD_WORKER_IMAGE=" + r.image);
    std::vector<char*> envp;
    for (auto& s : env_text) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::vector<std::string> args = w.spec.readiness.command;
    std::vector<char*> argv;
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    for (int fd = 0; fd <= 2; ++fd)
      posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    // The daemon blocks SIGTERM/SIGINT (for sigwait) and ignores SIGPIPE: not the check's.
    sigset_t none, defaults;
    sigemptyset(&none);
    sigemptyset(&defaults);
    for (int sig : {SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGCHLD}) sigaddset(&defaults, sig);
    posix_spawnattr_setflags(
        &attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    pid_t pid = 0;
    int rc = ::posix_spawnp(&pid, argv[0], &actions, &attr, argv.data(), envp.data());
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
      log::warn(k_component, "readiness check failed to start",
                {{"worker", w.spec.name}, {"command", args[0]}, {"error", std::strerror(rc)}});
      return;
    }
    r.check_pid = pid;
    r.check_fd = open_pidfd(pid);
  }

  // Handles the exit of a replica's process; returns whether the record is to be dropped.
  bool on_exit(Worker& w, Replica& r, std::optional<int> code, Clock::time_point now) {
    stop_check(r);
    signal_group(r.pid, SIGKILL);  // what is left of its process group
    log_replica(log::Level::info, "replica exited", w.spec.name, r,
                {"exit", code ? std::to_string(*code) : "unknown"});
    r.pid = 0;
    r.pidfd = UniqueFd();
    r.last_exit = code;
    bool was_stopping = r.state == ReplicaState::stopping;
    if ((was_stopping && !r.fail_on_exit) || w.removing || shutting_down || r.image != w.image)
      return true;
    bool failed = r.fail_on_exit || !code || *code != 0;
    r.fail_on_exit = false;
    bool restart = w.spec.restart == RestartPolicy::always ||
                   (w.spec.restart == RestartPolicy::on_failure && failed);
    if (restart)
      schedule_restart(w, r, now);
    else
      r.state = ReplicaState::exited;
    return false;
  }

  void reap(Clock::time_point now) {
    for (auto& [name, w] : workers) {
      for (auto it = w.replicas.begin(); it != w.replicas.end();) {
        Replica& r = *it;
        if (r.check_pid != 0) {
          int status = 0;
          pid_t got = ::waitpid(r.check_pid, &status, WNOHANG);
          if (got == r.check_pid || (got < 0 && errno == ECHILD)) {
            bool ok = got == r.check_pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
            r.check_pid = 0;
            r.check_fd = UniqueFd();
            if (ok && r.state == ReplicaState::starting) mark_ready(w, r);
          }
        }
        bool drop = false;
        if (r.pid != 0) {
          int status = 0;
          pid_t got = ::waitpid(r.pid, &status, WNOHANG);
          if (got == r.pid)
            drop = on_exit(w, r, exit_code_of(status), now);
          else if (got < 0 && errno == ECHILD)  // reaped by someone else
            drop = on_exit(w, r, std::nullopt, now);
        }
        it = drop ? w.replicas.erase(it) : std::next(it);
      }
    }
  }

  void mark_ready(const Worker& w, Replica& r) {
    r.state = ReplicaState::ready;
    log_replica(log::Level::info, "replica ready", w.spec.name, r);
  }

  // Timers of one replica: restart after backoff, readiness, SIGKILL after the grace period.
  void tick(Worker& w, Replica& r, Clock::time_point now, std::vector<ToLaunch>& to_launch,
            Clock::time_point& next) {
    auto bump = [&](Clock::time_point t) { next = std::min(next, t); };
    const Readiness& ready = w.spec.readiness;
    switch (r.state) {
      case ReplicaState::backoff:
        if (r.image != w.image || w.removing || shutting_down) break;  // reconcile drops it
        if (now >= r.restart_at) {
          r.state = ReplicaState::starting;
          r.launch_pending = true;
          to_launch.push_back({&w, &r});
        } else {
          bump(r.restart_at);
        }
        break;
      case ReplicaState::starting:
        if (r.pid == 0) break;
        if (now - r.started >= ready.timeout) {
          log_replica(log::Level::warn, "replica not ready in time", w.spec.name, r);
          r.fail_on_exit = true;
          begin_stop(w, r, now, "not ready in time");
          bump(r.stop_deadline);
          break;
        }
        bump(r.started + ready.timeout);
        if (now - r.started < ready.after) {
          bump(r.started + ready.after);
        } else if (ready.command.empty()) {
          mark_ready(w, r);
        } else if (r.check_pid == 0) {
          if (now >= r.next_check) spawn_check(w, r, now);
          if (r.check_pid == 0 || !r.check_fd.valid()) bump(r.next_check);
        }
        break;
      case ReplicaState::stopping:
        if (r.killed || r.pid == 0) break;
        if (now >= r.stop_deadline) {
          log_replica(log::Level::warn, "replica ignored SIGTERM; killing it", w.spec.name, r);
          signal_group(r.pid, SIGKILL);
          r.killed = true;
          ++stats.kills;
        } else {
          bump(r.stop_deadline);
        }
        break;
      case ReplicaState::ready:
      case ReplicaState::exited:
        break;
    }
  }

  unsigned free_slot(const Worker& w) const {
    for (unsigned slot = 0;; ++slot) {
      bool used = std::any_of(w.replicas.begin(), w.replicas.end(),
                              [&](const Replica& r) { return r.slot == slot; });
      if (!used) return slot;
    }
  }

  // Drops a replica that runs no process, or starts stopping one that does.
  // Returns whether the record is to be dropped.
  bool retire(const Worker& w, Replica& r, Clock::time_point now, std::string_view why) {
    if (r.state == ReplicaState::stopping) return false;
    if (r.pid == 0 && !r.launch_pending) return true;
    if (r.pid != 0) begin_stop(w, r, now, why);
    return false;
  }

  // Brings a worker's replicas towards its spec (start, scale, roll, stop).
  void reconcile(Worker& w, Clock::time_point now, std::vector<ToLaunch>& to_launch) {
    std::vector<std::list<Replica>::iterator> drop;
    auto retire_it = [&](std::list<Replica>::iterator it, std::string_view why) {
      if (retire(w, *it, now, why)) drop.push_back(it);
    };
    if (w.removing || shutting_down) {
      for (auto it = w.replicas.begin(); it != w.replicas.end(); ++it)
        retire_it(it, shutting_down ? "shutdown" : "worker removed");
    } else {
      std::vector<std::list<Replica>::iterator> current, old;
      for (auto it = w.replicas.begin(); it != w.replicas.end(); ++it) {
        if (it->state == ReplicaState::stopping) continue;
        (it->image == w.image ? current : old).push_back(it);
      }
      while (current.size() < w.spec.replicas) {
        unsigned slot = free_slot(w);
        Replica& r = w.replicas.emplace_back();
        r.slot = slot;
        r.image = w.image;
        r.launch_pending = true;
        to_launch.push_back({&w, &r});
        current.push_back(std::prev(w.replicas.end()));
      }
      // Scaling down: first what runs nothing, then what is not ready, highest slots first.
      auto rank = [](const Replica& r) {
        if (r.pid == 0 && !r.launch_pending) return 0;
        return r.state == ReplicaState::ready ? 2 : 1;
      };
      std::stable_sort(current.begin(), current.end(), [&](auto a, auto b) {
        if (rank(*a) != rank(*b)) return rank(*a) < rank(*b);
        return a->slot > b->slot;
      });
      while (current.size() > w.spec.replicas) {
        retire_it(current.front(), "scaled down");
        current.erase(current.begin());
      }
      // Rolling: old replicas stay until enough new ones are ready (or done for good).
      std::size_t settled = std::count_if(current.begin(), current.end(), [](auto it) {
        return it->state == ReplicaState::ready || it->state == ReplicaState::exited;
      });
      std::size_t keep = w.spec.replicas > settled ? w.spec.replicas - settled : 0;
      std::stable_sort(old.begin(), old.end(), [&](auto a, auto b) { return rank(*a) > rank(*b); });
      for (std::size_t i = 0; i < old.size(); ++i) {
        bool running = old[i]->pid != 0;
        if (running && i < keep) continue;
        retire_it(old[i], "replaced by a replica on a new image");
      }
    }
    for (auto it : drop) w.replicas.erase(it);
  }

  void launch_all(std::unique_lock<std::mutex>& lock, const std::vector<ToLaunch>& replicas) {
    std::vector<LaunchJob> jobs;
    for (auto [owner, r] : replicas) {
      LaunchRequest req;
      req.worker = owner->spec.name;
      req.image = r->image;
      req.slot = r->slot;
      req.log_file = options.log_dir / owner->spec.name / (std::to_string(r->slot) + ".log");
      jobs.push_back(LaunchJob{r, std::move(req), r->restarts});
    }
    lock.unlock();
    std::vector<Result<pid_t>> results;
    for (const auto& job : jobs) {
      auto prepared = prepare_log(job, options.max_log_bytes);
      if (!prepared) {
        results.emplace_back(prepared.error());
        continue;
      }
      try {
        results.push_back(options.launch(job.request));
      } catch (const std::exception& e) {
        results.emplace_back(Error(ErrorCode::internal, e.what()));
      }
    }
    lock.lock();
    auto now = Clock::now();
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      Replica& r = *jobs[i].replica;
      Worker& w = workers.at(jobs[i].request.worker);
      r.launch_pending = false;
      r.log_file = jobs[i].request.log_file;
      r.started = now;
      r.started_wall = std::chrono::system_clock::now();
      if (results[i]) {
        ++stats.launches;
        r.pid = *results[i];
        r.pidfd = open_pidfd(r.pid);
        r.state = ReplicaState::starting;
        r.next_check = now + w.spec.readiness.after;
        r.last_error.clear();
        log_replica(log::Level::info, "replica started", w.spec.name, r);
        continue;
      }
      ++stats.launch_failures;
      r.last_error = results[i].error().message();
      log_replica(log::Level::error, "replica failed to start", w.spec.name, r,
                  {"error", r.last_error});
      if (w.removing || shutting_down || r.image != w.image) {
        r.state = ReplicaState::exited;  // dropped by the next reconcile
      } else if (w.spec.restart == RestartPolicy::never) {
        r.state = ReplicaState::exited;
      } else {
        schedule_restart(w, r, now);
      }
    }
  }

  void loop() {
    std::unique_lock lock(mutex);
    for (;;) {
      auto now = Clock::now();
      reap(now);
      std::vector<ToLaunch> to_launch;
      auto next = now + k_max_poll;
      bool sweep = false;
      for (auto& [name, w] : workers) {
        for (auto& r : w.replicas) tick(w, r, now, to_launch, next);
        reconcile(w, now, to_launch);
      }
      std::erase_if(workers, [&](const auto& kv) {
        return (kv.second.removing || shutting_down) && kv.second.replicas.empty();
      });
      if (shutting_down && workers.empty()) return;
      if (!to_launch.empty()) {
        launch_all(lock, to_launch);
        continue;
      }
      std::vector<pollfd> fds{{wake_fd.get(), POLLIN, 0}};
      for (auto& [name, w] : workers) {
        for (auto& r : w.replicas) {
          if (r.pid != 0) {
            if (r.pidfd.valid())
              fds.push_back({r.pidfd.get(), POLLIN, 0});
            else
              sweep = true;
          }
          if (r.check_pid != 0) {
            if (r.check_fd.valid())
              fds.push_back({r.check_fd.get(), POLLIN, 0});
            else
              sweep = true;
          }
        }
      }
      if (sweep) next = std::min(next, now + k_sweep_without_pidfd);
      auto wait = std::chrono::ceil<milliseconds>(next - Clock::now());
      lock.unlock();
      ::poll(fds.data(), fds.size(), static_cast<int>(std::max<std::int64_t>(0, wait.count())));
      if (fds[0].revents & POLLIN) {
        std::uint64_t count = 0;
        [[maybe_unused]] auto n = ::read(wake_fd.get(), &count, sizeof count);
      }
      lock.lock();
    }
  }
};

Supervisor::Supervisor(std::unique_ptr<Impl> impl) : m_impl(std::move(impl)) {}

Supervisor::~Supervisor() {
  shutdown();
}

Result<std::unique_ptr<Supervisor>> Supervisor::create(SupervisorOptions options) {
  if (!options.launch) return Error(ErrorCode::invalid_argument, "supervisor: no launcher given");
  std::error_code ec;
  fs::create_directories(options.log_dir, ec);
  if (ec) return Error::from_errno("create log directory " + options.log_dir.string(), ec.value());
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->wake_fd = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!impl->wake_fd.valid()) return Error::from_errno("supervisor: eventfd", errno);
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->loop(); });
  return std::unique_ptr<Supervisor>(new Supervisor(std::move(impl)));
}

void Supervisor::run_worker(WorkerSpec spec, std::string image) {
  {
    std::lock_guard lock(m_impl->mutex);
    if (m_impl->shutting_down) return;
    Worker& w = m_impl->workers[spec.name];
    if (!w.image.empty() && w.image != image)
      log::info(k_component, "rolling worker onto a new image",
                {{"worker", spec.name}, {"from", w.image}, {"to", image}});
    w.spec = std::move(spec);
    w.image = std::move(image);
    w.removing = false;
  }
  m_impl->wake();
}

void Supervisor::remove_worker(const std::string& name) {
  {
    std::lock_guard lock(m_impl->mutex);
    auto it = m_impl->workers.find(name);
    if (it == m_impl->workers.end()) return;
    it->second.removing = true;
  }
  m_impl->wake();
}

std::vector<WorkerStatus> Supervisor::status() const {
  std::lock_guard lock(m_impl->mutex);
  std::vector<WorkerStatus> out;
  for (const auto& [name, w] : m_impl->workers) {
    WorkerStatus s;
    s.name = name;
    s.image = w.image;
    s.replicas = w.removing ? 0 : w.spec.replicas;
    s.restarts = w.restarts;
    for (const auto& r : w.replicas) {
      if (r.image == w.image && r.state == ReplicaState::ready) ++s.ready;
      if (r.image != w.image && r.pid != 0) s.rolling = true;
      ReplicaStatus rs;
      rs.slot = r.slot;
      rs.pid = r.pid;
      rs.image = r.image;
      rs.state = r.state;
      rs.started_at = r.started_wall;
      rs.restarts = r.restarts;
      rs.last_exit = r.last_exit;
      rs.last_error = r.last_error;
      rs.log_file = r.log_file;
      s.replica_status.push_back(std::move(rs));
    }
    std::sort(s.replica_status.begin(), s.replica_status.end(),
              [](const auto& a, const auto& b) { return a.slot < b.slot; });
    out.push_back(std::move(s));
  }
  return out;
}

SupervisorStats Supervisor::stats() const {
  std::lock_guard lock(m_impl->mutex);
  return m_impl->stats;
}

std::set<std::string> Supervisor::images_in_use() const {
  std::lock_guard lock(m_impl->mutex);
  std::set<std::string> out;
  for (const auto& [name, w] : m_impl->workers) {
    if (!w.removing) out.insert(w.image);
    for (const auto& r : w.replicas)
      if (r.pid != 0 || r.launch_pending) out.insert(r.image);
  }
  return out;
}

void Supervisor::shutdown() {
  std::lock_guard join(m_impl->join_mutex);
  {
    std::lock_guard lock(m_impl->mutex);
    m_impl->shutting_down = true;
  }
  m_impl->wake();
  if (m_impl->thread.joinable()) m_impl->thread.join();
}

}  // namespace envd::node
