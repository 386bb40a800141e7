// `envd watch`: push once, then again after every debounced change to the environment's
// packages or the source tree, logging one line per push (the package-level changes and the new
// digest). A builder that is down is retried with capped backoff; a change made during a push
// triggers another push; SIGTERM or SIGINT stops it cleanly (exit 0).
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <set>
#include <thread>
#include <utility>

#include "agent/change_watcher.hpp"
#include "envd/cli/commands.hpp"
#include "envd/cli/defaults.hpp"
#include "envd/cli/push_session.hpp"
#include "envd/cli/user_config.hpp"
#include "envd/snapshot/snapshot_diff.hpp"
#include "envd/util/log.hpp"
#include "envd/util/unique_fd.hpp"

namespace envd::cli {
namespace {

using SteadyClock = std::chrono::steady_clock;
constexpr std::string_view k_component = "watch";
// How long a stop waits for a push in flight before leaving without it.
constexpr auto k_stop_grace = std::chrono::seconds(30);

struct WatchArgs {
  ScanArgs scan;
  TargetArgs target;
  double debounce = 1.0;
  double retry_max = 30.0;
};

int fail(std::string_view what, const Error& e) {
  std::cerr << "envd watch: " << what << (what.empty() ? "" : ": ") << e.message() << "\n";
  return exit_code_for(e);
}

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", s);
  return buf;
}

std::chrono::milliseconds to_ms(double seconds) {
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(seconds * 1000)));
}

// Failures worth retrying as they are: the builder down or restarting, a network error, a file
// that changed while it was read. Others (a refused token, a secret in the tree, a bad name)
// wait for the user to change something.
bool retryable(const Error& e) {
  switch (e.code()) {
    case ErrorCode::unavailable:
    case ErrorCode::io:
    case ErrorCode::failed_precondition:
    case ErrorCode::digest_mismatch:
    case ErrorCode::internal:
      return true;
    default:
      return false;
  }
}

// The directories a watcher needs for a snapshot: every environment prefix and source root.
agent::WatchSet watch_set_of(const snapshot::Snapshot& snap,
                             const std::vector<std::string>& extra_ignores) {
  agent::WatchSet set;
  std::set<std::string> prefixes;
  std::set<std::string> roots;
  for (const auto& env : snap.environments) {
    if (prefixes.insert(env.prefix).second) set.prefixes.emplace_back(env.prefix);
  }
  for (const auto& src : snap.sources) {
    if (roots.insert(src.root).second) set.sources.emplace_back(src.root);
  }
  set.extra_ignores = extra_ignores;
  set.excluded = {envd_home()};  // each push writes its stat cache and records there
  return set;
}

// Absolute and normalised, as the snapshot records them.
std::filesystem::path absolute_path(const std::filesystem::path& p) {
  std::error_code ec;
  auto abs = std::filesystem::absolute(p, ec);
  if (ec) return p;
  std::string text = abs.lexically_normal().string();
  while (text.size() > 1 && text.back() == '/') text.pop_back();
  return text;
}

agent::WatchSet watch_set_of(const agent::SnapshotOptions& options) {
  agent::WatchSet set;
  for (const auto& p : options.prefixes) set.prefixes.push_back(absolute_path(p));
  if (options.src) set.sources.push_back(absolute_path(*options.src));
  set.extra_ignores = options.extra_ignores;
  set.excluded = {envd_home()};
  return set;
}

bool same_roots(const agent::WatchSet& a, const agent::WatchSet& b) {
  auto key = [](const agent::WatchSet& s) {
    std::set<std::string> p;
    std::set<std::string> r;
    // "/a/b/" and "/a/b" are the same directory.
    for (const auto& x : s.prefixes) p.insert(absolute_path(x).string());
    for (const auto& x : s.sources) r.insert(absolute_path(x).string());
    return std::make_pair(p, r);
  };
  return key(a) == key(b);
}

class Watch {
 public:
  Watch(const WatchArgs& args, int signal_fd) : m_args(args), m_signal_fd(signal_fd) {}

  int run() {
    auto config = load_user_config();
    if (!config) return fail("", config.error());
    auto options = snapshot_options(m_args.scan, *config);
    if (!options) return fail("find the environment", options.error());
    auto target =
        resolve_push_target(m_args.target.builder, m_args.target.compression, *config, envd_home());
    if (!target) return fail("", target.error());
    m_request = PushRequest{std::move(*options),
                            m_args.target.name.empty() ? config->name : m_args.target.name};
    m_target = std::move(*target);

    // Watching starts before the first push, so that nothing made during it is missed.
    m_watch_set = watch_set_of(m_request.snapshot);
    if (auto made = make_watcher(m_watch_set); !made) return fail("watch", made.error());
    log::info(k_component, "watching",
              {{"builder", m_target.builder_url.empty() ? "embedded" : m_target.builder_url},
               {"prefixes", std::to_string(m_watch_set.prefixes.size())},
               {"sources", std::to_string(m_watch_set.sources.size())},
               {"mode", m_watcher->mode() == agent::WatchMode::inotify ? "inotify" : "polling"},
               {"debounce_s", seconds_text(m_args.debounce)}});

    bool owed = true;  // a push the current state still needs
    bool first = true;
    auto backoff = std::chrono::milliseconds(1000);
    const auto backoff_cap = std::max(to_ms(m_args.retry_max), std::chrono::milliseconds(1));
    while (!stopping()) {
      if (owed) {
        auto pushed = push();
        if (m_stop_requested) break;  // a signal came during the push
        if (pushed) {
          owed = false;
          first = false;
          backoff = std::chrono::milliseconds(1000);
          // A new editable project, say: watch what the snapshot now holds.
          // After a rescan (a watched root was removed or recreated, say), watch anew.
          auto wanted = watch_set_of(m_last->snapshot, m_request.snapshot.extra_ignores);
          if (std::exchange(m_rewatch, false) || !same_roots(wanted, m_watch_set)) {
            if (auto made = make_watcher(wanted); made) {
              m_watch_set = std::move(wanted);
              log::info(k_component, "watching anew",
                        {{"prefixes", std::to_string(m_watch_set.prefixes.size())},
                         {"sources", std::to_string(m_watch_set.sources.size())}});
              // What changed in the new directories before their watches existed.
              owed = true;
              continue;
            } else {
              log::warn(k_component, "cannot watch the new directories; keeping the old watches",
                        {{"error", made.error().message()}});
            }
          }
        } else {
          const Error& e = pushed.error();
          if (first && !retryable(e)) return fail("push", e);
          if (!retryable(e)) {
            log::error(k_component, "push failed; waiting for the next change",
                       {{"error", e.message()}});
            owed = false;
          } else {
            log::warn(k_component, "push failed; retrying",
                      {{"error", e.message()},
                       {"retry_in_s", seconds_text(static_cast<double>(backoff.count()) / 1000)}});
            // Changes meanwhile need no push of their own: the retry snapshots after them.
            const auto retry_at = SteadyClock::now() + backoff;
            auto r = m_watcher->wait(retry_at);
            while (r && r->status == agent::WaitStatus::changed) r = m_watcher->wait(retry_at);
            if (!r) return fail("watch", r.error());
            backoff = std::min(backoff * 2, backoff_cap);
            continue;
          }
        }
      }
      auto r = m_watcher->wait(std::nullopt);
      if (!r) return fail("watch", r.error());
      if (r->status == agent::WaitStatus::changed) {
        log::debug(k_component, "changed",
                   {{"paths", std::to_string(r->changes.paths.size() + r->changes.paths_dropped)},
                    {"first", r->changes.paths.empty() ? "" : r->changes.paths.front()},
                    {"rescan", r->changes.rescan ? "true" : "false"}});
        owed = true;
        m_rewatch = m_rewatch || r->changes.rescan;
      }
    }
    log::info(k_component, "stopped");
    return 0;
  }

 private:
  bool stopping() const {
    pollfd p{m_signal_fd, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0;
  }

  Result<void> make_watcher(const agent::WatchSet& set) {
    agent::WatchOptions options;
    options.debounce = to_ms(m_args.debounce);
    options.max_delay = std::max(options.debounce * 30, std::chrono::milliseconds(30000));
    options.stop_fd = m_signal_fd;
    ENVD_TRY(auto watcher, agent::ChangeWatcher::create(set, options));
    m_watcher = std::move(watcher);
    return {};
  }

  // One push on a worker thread, so that a signal is noticed while it runs: the push in flight
  // then gets k_stop_grace to finish, and m_stop_requested is set. A success is logged and kept
  // in m_last.
  Result<void> push() {
    auto previous = m_last ? std::optional<snapshot::Snapshot>(m_last->snapshot) : std::nullopt;
    if (!previous && !m_request.name.empty()) {
      // The first push compares with the last push of this name, from an earlier run. (Without
      // a name the repository comes from the environment's name, known only once the push has
      // snapshotted it, and overwritten by then.)
      if (auto name = resolve_image_name(m_request.name, snapshot::Snapshot{}); name) {
        if (auto last = last_pushed_snapshot(m_target.envd_home, name->repository); last && *last)
          previous = std::move(**last);
      }
    }
    struct Shared {
      std::optional<Result<PushOutcome>> result;
      UniqueFd done{::eventfd(0, EFD_CLOEXEC)};
    };
    auto shared = std::make_shared<Shared>();
    std::thread worker([shared, request = m_request, target = m_target] {
      shared->result.emplace(push_once(request, target));
      const std::uint64_t one = 1;
      [[maybe_unused]] ssize_t n = ::write(shared->done.get(), &one, sizeof one);
    });
    pollfd fds[2] = {{shared->done.get(), POLLIN, 0}, {m_signal_fd, POLLIN, 0}};
    while (::poll(fds, 2, -1) < 0 && errno == EINTR) {
    }
    if ((fds[0].revents & POLLIN) == 0) {
      log::info(k_component, "stopping after the push in progress",
                {{"grace_s", std::to_string(k_stop_grace.count())}});
      pollfd done{shared->done.get(), POLLIN, 0};
      if (::poll(&done, 1, static_cast<int>(k_stop_grace.count() * 1000)) <= 0) {
        log::warn(k_component, "the push did not finish in time; exiting without it");
        worker.detach();
        std::fflush(nullptr);
        std::_Exit(0);
      }
      m_stop_requested = true;
    }
    worker.join();
    Result<PushOutcome>& result = *shared->result;
    if (!result) return result.error();
    const PushOutcome& out = *result;
    const std::string changes =
        previous ? snapshot::summary_line(snapshot::diff_snapshots(*previous, out.snapshot))
                 : "first push of " + out.repository + " by this watch";
    log::info(k_component, "pushed",
              {{"image", out.repository + ":" + out.tag},
               {"digest", out.manifest_digest.str()},
               {"changes", changes},
               {"unchanged", out.unchanged ? "true" : "false"},
               {"layers", std::to_string(out.layers)},
               {"layers_reused", std::to_string(out.layers_reused)},
               {"bytes_uploaded", std::to_string(out.bytes_uploaded)},
               {"seconds", seconds_text(out.seconds)},
               {"snapshot_s", seconds_text(out.snapshot_seconds)},
               {"upload_s", seconds_text(out.upload_seconds)},
               {"build_s", seconds_text(out.build_seconds)}});
    m_last = std::move(*result);
    return {};
  }

  const WatchArgs& m_args;
  int m_signal_fd;
  PushRequest m_request;
  PushTarget m_target;
  agent::WatchSet m_watch_set;
  std::unique_ptr<agent::ChangeWatcher> m_watcher;
  std::optional<PushOutcome> m_last;
  bool m_stop_requested = false;
  bool m_rewatch = false;  // the watcher reported a rescan: make a new one after the push
};

int run_watch(const WatchArgs& args) {
  if (!(args.debounce > 0) || args.debounce > 3600) {
    std::cerr << "envd watch: --debounce: must be more than 0 and at most 3600 seconds, not "
              << args.debounce << "\n";
    return 2;
  }
  if (!(args.retry_max >= 1) || args.retry_max > 3600) {
    std::cerr << "envd watch: --retry-max: must be 1 to 3600 seconds, not " << args.retry_max
              << "\n";
    return 2;
  }
  // Blocked before any thread exists, so every thread inherits the mask: the signals stay
  // pending on the signalfd, which the watcher and the push loop poll.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  // A builder hanging up mid-request fails that request (EPIPE) instead of killing the watcher.
  ::signal(SIGPIPE, SIG_IGN);
  UniqueFd signal_fd(::signalfd(-1, &stop_signals, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!signal_fd.valid()) return fail("signalfd", Error::from_errno("signalfd", errno));
  Watch watch(args, signal_fd.get());
  return watch.run();
}

}  // namespace

void add_watch_command(CLI::App& app, int& exit_code) {
  auto args = std::make_shared<WatchArgs>();
  auto* cmd = app.add_subcommand(
      "watch", "Push now, then again whenever the environment's packages or the sources change");
  add_scan_options(*cmd, args->scan);
  add_target_options(*cmd, args->target);
  cmd->add_option("--debounce", args->debounce,
                  "Seconds without further changes before pushing (default 1)");
  cmd->add_option("--retry-max", args->retry_max,
                  "Longest wait in seconds between retries while the builder is unreachable "
                  "(default 30; the waits double from 1 s)");
  cmd->footer(
      "Watches (inotify) conda-meta/, the site-packages metadata (dist-info and egg-info "
      "directories, .pth files) and the source tree (ignore rules honoured); when the inotify "
      "watch limit is reached it says how to raise it and scans every 5 s instead. Logs one line "
      "per push on stderr: what changed since the previous push and the new digest. Runs until "
      "SIGTERM or SIGINT, then exits 0. A systemd user unit: packaging/envd-watch.service. Exit "
      "codes: 0 stopped by a signal, 1 failed to start (or the first push failed for a reason "
      "retrying cannot fix), 2 usage.");
  cmd->callback([args, &exit_code] { exit_code = run_watch(*args); });
}

}  // namespace envd::cli
