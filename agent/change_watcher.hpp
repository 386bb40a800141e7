// Watches environments and source trees for changes that a new push would capture (inotify), and
// reports them in debounced batches: conda-meta/, site-packages metadata (dist-info and egg-info
// directories, .pth and .egg-link files) and the source trees with their ignore rules.
#pragma once

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "envd/util/error.hpp"

namespace envd::agent {

// What to watch.
struct WatchSet {
  // Environment prefixes: their conda-meta/ and each lib*/python*/{site,dist}-packages directory
  // (entries ending in .dist-info, .egg-info, .pth, .egg-link or .egg, and the files inside the
  // metadata directories). Other files in a prefix (a package's modules) are not watched.
  std::vector<std::filesystem::path> prefixes;
  // Source tree roots (the --src tree, editable projects): every directory that is not ignored.
  // Ignored means, as for the snapshot: git's rules (.gitignore files from the work tree's top
  // down, .git/info/exclude, ~/.config/git/ignore) or .envdignore files or `extra_ignores`;
  // ".git" is never watched. Files the snapshot would capture although a rule matches them
  // (tracked files) still count.
  std::vector<std::filesystem::path> sources;
  std::vector<std::string> extra_ignores;  // gitignore-syntax patterns relative to each root
  // Directories never watched wherever they are, e.g. envd's own state directory: a push writes
  // there, which must not look like a change when it lies inside a source tree.
  std::vector<std::filesystem::path> excluded;
};

enum class WatchMode { inotify, polling };

struct WatchOptions {
  // A batch is reported once no relevant event came for this long...
  std::chrono::milliseconds debounce{1000};
  // ...or once its first event is this old, so that a tree that never goes quiet is still
  // pushed now and then.
  std::chrono::milliseconds max_delay{30000};
  // Polling mode (the inotify watch limit was reached): how often the watched files are stat'ed.
  std::chrono::milliseconds scan_interval{5000};
  // More watches than this switch to polling, as the kernel's limit (ENOSPC) does. 0: only the
  // kernel's limit (fs.inotify.max_user_watches). A test seam.
  std::size_t max_watches = 0;
  // The clock that times the debounce and the scans (tests inject a fake one); default
  // std::chrono::steady_clock::now. wait()'s deadline is always in steady_clock time.
  std::function<std::chrono::steady_clock::time_point()> clock;
  // A descriptor (not owned) that, once readable, makes wait() return stopped: e.g. a signalfd
  // for SIGTERM. -1: none.
  int stop_fd = -1;
};

// A debounced batch of changes.
struct ChangeSet {
  std::vector<std::string> paths;  // absolute, sorted, at most k_max_paths of them
  std::size_t paths_dropped = 0;   // further paths not listed
  bool environment = false;        // something in a prefix changed
  bool source = false;             // something in a source tree changed
  // Events were lost (kernel queue overflow, a root moved or vanished, the switch to polling):
  // anything may have changed.
  bool rescan = false;

  static constexpr std::size_t k_max_paths = 1000;
};

enum class WaitStatus { changed, timeout, stopped };

struct WaitResult {
  WaitStatus status = WaitStatus::timeout;
  ChangeSet changes;  // when status is changed
};

// Watches one WatchSet. wait() is called from one thread at a time; stop() from any thread or a
// signal handler.
class ChangeWatcher {
 public:
  // Sets up the watches (walking the source trees once). Missing prefixes or roots are an error
  // (not_found naming them); a prefix without conda-meta/ or site-packages is watched for what it
  // has. When the watch limit is reached the watcher logs how to raise it and polls instead.
  // Errors: not_found, invalid_argument (a root that is not a directory), io (inotify itself).
  static Result<std::unique_ptr<ChangeWatcher>> create(const WatchSet& set,
                                                       const WatchOptions& options);
  ~ChangeWatcher();
  ChangeWatcher(const ChangeWatcher&) = delete;
  ChangeWatcher& operator=(const ChangeWatcher&) = delete;

  // Blocks until a batch of changes has been quiet for the debounce time (changed), stop() was
  // called or the stop_fd became readable (stopped, and every later call returns stopped too),
  // or `deadline` passed (timeout; pending changes stay pending). nullopt: no deadline.
  // Errors: io when reading inotify fails.
  Result<WaitResult> wait(std::optional<std::chrono::steady_clock::time_point> deadline);

  // Makes the current or next wait() return stopped. Thread-safe and async-signal-safe.
  void stop();

  WatchMode mode() const;
  // Directories watched with inotify now (0 when polling).
  std::size_t watch_count() const;
  // Whether a change is waiting for its debounce time.
  bool pending() const;

  struct Impl;

 private:
  explicit ChangeWatcher(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> m_impl;
};

}  // namespace envd::agent
