// inotify watches over conda-meta/, site-packages metadata and source trees (new directories
// watched as they appear, ignore rules honoured: watch_scope.hpp), debounced; a periodic stat scan
// of the same files when the watch limit is reached. See inotify(7) for the event semantics.
#include "agent/change_watcher.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <set>
#include <unordered_map>

#include "agent/diagnostics.hpp"
#include "agent/ignore_pattern.hpp"
#include "agent/source_listing.hpp"
#include "agent/watch_scope.hpp"
#include "envd/util/log.hpp"
#include "envd/util/stat_key.hpp"
#include "envd/util/unique_fd.hpp"

namespace envd::agent {
using namespace watch_scope;
namespace {

namespace fs = std::filesystem;
using SteadyClock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr std::string_view k_component = "watch";
// Directory entries appearing, disappearing, written or changing mode. IN_MODIFY as well as
// IN_CLOSE_WRITE: truncate(2) and writes through mmap give no close event.
constexpr std::uint32_t k_entry_mask = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO |
                                       IN_CLOSE_WRITE | IN_MODIFY | IN_ATTRIB | IN_ONLYDIR |
                                       IN_DONT_FOLLOW | IN_EXCL_UNLINK;
// A root (source root, conda-meta, site-packages) may be reached through a symlink, which is
// followed; its own removal or move is reported.
constexpr std::uint32_t k_root_mask =
    (k_entry_mask & ~static_cast<std::uint32_t>(IN_DONT_FOLLOW)) | IN_DELETE_SELF | IN_MOVE_SELF;

enum class DirKind { conda_meta, site_packages, package_meta, source };

struct WatchedDir {
  std::string abs;
  DirKind kind = DirKind::source;
  int tree = -1;    // source trees: index into m_trees
  std::string rel;  // source trees: root-relative directory, "" for the root
  bool root = false;
};

// What a file looked like at a scan, for polling mode.
struct Stamp {
  StatKey key;
  std::uint32_t mode = 0;
  bool environment = false;
  friend bool operator==(const Stamp&, const Stamp&) = default;
};

}  // namespace

struct ChangeWatcher::Impl {
  WatchOptions options;
  std::vector<std::string> prefixes;
  std::vector<Tree> trees;
  std::set<std::string> excluded;  // absolute directories
  UniqueFd inotify;
  UniqueFd wake;
  std::unordered_map<int, WatchedDir> dirs;  // by watch descriptor
  std::map<std::string, int> by_path;        // absolute directory -> watch descriptor
  WatchMode mode = WatchMode::inotify;
  bool stopped = false;
  // The batch being debounced.
  bool pending = false;
  SteadyClock::time_point first_event;
  SteadyClock::time_point last_event;
  std::set<std::string> paths;
  ChangeSet batch;
  // Polling mode.
  std::unordered_map<std::string, Stamp> stamps;
  SteadyClock::time_point next_scan;

  SteadyClock::time_point now() const {
    return options.clock ? options.clock() : SteadyClock::now();
  }

  // Starts or extends the batch being debounced.
  void touch() {
    const auto t = now();
    if (!pending) {
      pending = true;
      first_event = t;
    }
    last_event = t;
  }

  void record(bool environment, const std::string& path) {
    touch();
    (environment ? batch.environment : batch.source) = true;
    if (paths.size() < ChangeSet::k_max_paths) {
      paths.insert(path);
    } else if (!paths.contains(path)) {
      ++batch.paths_dropped;
    }
  }

  void record_rescan(const std::string& why) {
    log::warn(k_component, "changes may have been missed; the next push rescans everything",
              {{"reason", why}});
    touch();
    batch.rescan = batch.environment = batch.source = true;
  }

  // --- watches ---------------------------------------------------------------------------

  // Adds a watch; false when the limit is reached (then polling takes over).
  bool add_watch(WatchedDir dir, std::uint32_t mask) {
    if (mode == WatchMode::polling) return false;
    if (options.max_watches != 0 && by_path.size() >= options.max_watches &&
        !by_path.contains(dir.abs)) {
      switch_to_polling("more than " + std::to_string(options.max_watches) + " watches");
      return false;
    }
    const int wd = ::inotify_add_watch(inotify.get(), dir.abs.c_str(), mask);
    if (wd < 0) {
      const int err = errno;
      if (err == ENOSPC) {
        switch_to_polling("inotify watch limit reached");
        return false;
      }
      // Vanished or unreadable meanwhile: its parent's events still tell of it.
      log::debug(k_component, "not watched", {{"path", dir.abs}, {"error", std::strerror(err)}});
      return true;
    }
    by_path[dir.abs] = wd;
    dirs[wd] = std::move(dir);
    return true;
  }

  void remove_subtree(const std::string& abs) {
    auto it = by_path.lower_bound(abs);
    while (it != by_path.end() &&
           (it->first == abs || (it->first.starts_with(abs) && it->first[abs.size()] == '/'))) {
      ::inotify_rm_watch(inotify.get(), it->second);  // fails harmlessly when already gone
      dirs.erase(it->second);
      it = by_path.erase(it);
    }
  }

  // Watches a source directory and every directory below it that is not ignored. Returns
  // whether it holds any file that is not ignored. In polling mode it only looks (stamps).
  bool walk_source(int tree, const std::string& rel, IgnoreRules& git, IgnoreRules& envd) {
    Tree& t = trees[static_cast<std::size_t>(tree)];
    const std::string abs = join(t.root, rel);
    load_rules(t, rel);
    std::string git_dir = t.git_prefix + rel;
    if (!rel.empty()) git_dir += '/';
    bool pushed_git = false;
    bool pushed_envd = false;
    if (auto it = t.gitignores.find(git_dir); t.in_git && it != t.gitignores.end()) {
      git.push(git_dir, it->second, ".gitignore");
      pushed_git = true;
    }
    if (auto it = t.envdignores.find(rel); it != t.envdignores.end()) {
      envd.push(rel, it->second, ".envdignore");
      pushed_envd = true;
    }
    if (mode == WatchMode::inotify) {
      add_watch({abs, DirKind::source, tree, rel, rel.empty()},
                rel.empty() ? k_root_mask : k_entry_mask);
    }
    bool any_file = false;
    for (const Entry& e : list_dir(abs)) {
      if (e.name == ".git") continue;
      const std::string child = join(rel, e.name);
      if (ignored(t, git, envd, child, e.dir)) continue;
      if (e.dir && excluded.contains(join(t.root, child))) continue;
      if (e.dir) {
        any_file = walk_source(tree, child, git, envd) || any_file;
      } else {
        any_file = true;
        if (mode == WatchMode::polling) stamp(join(t.root, child), false);
      }
    }
    if (pushed_envd) envd.pop();
    if (pushed_git) git.pop();
    return any_file;
  }

  bool walk_source_from(int tree, const std::string& rel) {
    IgnoreRules git;
    IgnoreRules envd;
    std::optional<std::string> parent;
    if (!rel.empty()) {
      const std::size_t slash = rel.rfind('/');
      parent = slash == std::string::npos ? std::string() : rel.substr(0, slash);
    }
    rules_for(trees[static_cast<std::size_t>(tree)], parent, git, envd);
    // rules_for() pushed the parent's own files; walk_source pushes rel's.
    return walk_source(tree, rel, git, envd);
  }

  void watch_prefix(const std::string& prefix) {
    const std::string meta = join(prefix, "conda-meta");
    struct stat st {};
    if (::stat(meta.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      if (mode == WatchMode::inotify) {
        add_watch({meta, DirKind::conda_meta, -1, {}, true}, k_root_mask);
      } else {
        for (const Entry& e : list_dir(meta)) stamp(join(meta, e.name), true);
      }
    }
    for (const std::string& site : site_packages_of(prefix)) {
      if (mode == WatchMode::inotify) {
        add_watch({site, DirKind::site_packages, -1, {}, true}, k_root_mask);
      }
      for (const Entry& e : list_dir(site)) {
        if (!is_metadata_name(e.name)) continue;
        const std::string path = join(site, e.name);
        if (!e.dir) {
          if (mode == WatchMode::polling) stamp(path, true);
        } else if (mode == WatchMode::inotify) {
          add_watch({path, DirKind::package_meta, -1, {}, false}, k_entry_mask);
        } else {
          stamp(path, true);
          for (const Entry& f : list_dir(path)) stamp(join(path, f.name), true);
        }
      }
    }
  }

  // Sets up (or, after an overflow, refreshes) every watch; in polling mode takes the stamps.
  void watch_all() {
    for (const std::string& prefix : prefixes) watch_prefix(prefix);
    for (std::size_t i = 0; i < trees.size(); ++i) walk_source_from(static_cast<int>(i), "");
  }

  void switch_to_polling(const std::string& why) {
    if (mode == WatchMode::polling) return;
    std::string limit = "unknown";
    if (auto text = read_small_file("/proc/sys/fs/inotify/max_user_watches")) {
      limit = text->substr(0, text->find('\n'));
    }
    log::warn(k_component,
              "cannot watch every directory; falling back to a periodic scan (raise the limit "
              "with: sysctl fs.inotify.max_user_watches=524288)",
              {{"reason", why},
               {"max_user_watches", limit},
               {"watches", std::to_string(by_path.size())},
               {"scan_interval_ms", std::to_string(options.scan_interval.count())}});
    mode = WatchMode::polling;
    inotify = UniqueFd();  // drops every watch
    dirs.clear();
    by_path.clear();
  }

  // --- polling ---------------------------------------------------------------------------

  std::unordered_map<std::string, Stamp>* scan_into = nullptr;

  void stamp(const std::string& path, bool environment) {
    struct stat st {};
    if (scan_into == nullptr || ::lstat(path.c_str(), &st) != 0) return;
    (*scan_into)[path] = Stamp{stat_key(st), st.st_mode, environment};
  }

  // Stats everything in scope and records what differs from the previous scan.
  void scan(bool report) {
    std::unordered_map<std::string, Stamp> fresh;
    scan_into = &fresh;
    watch_all();
    scan_into = nullptr;
    if (report) {
      for (const auto& [path, s] : fresh) {
        auto it = stamps.find(path);
        if (it == stamps.end() || !(it->second == s)) record(s.environment, path);
      }
      for (const auto& [path, s] : stamps) {
        if (!fresh.contains(path)) record(s.environment, path);
      }
    }
    stamps = std::move(fresh);
    next_scan = now() + options.scan_interval;
  }

  // --- inotify events --------------------------------------------------------------------

  void handle_source(const WatchedDir& d, const inotify_event& ev, std::string_view name) {
    Tree& t = trees[static_cast<std::size_t>(d.tree)];
    const bool is_dir = (ev.mask & IN_ISDIR) != 0;
    const std::string rel = join(d.rel, name);
    const std::string abs = join(t.root, rel);
    if (name == ".git") return;
    for (const std::string& x : excluded) {
      if (abs == x || (abs.starts_with(x) && abs[x.size()] == '/')) return;
    }
    if (is_dir && (ev.mask & (IN_DELETE | IN_MOVED_FROM)) != 0) remove_subtree(abs);
    IgnoreRules git;
    IgnoreRules envd;
    rules_for(t, d.rel, git, envd);
    if (ignored(t, git, envd, rel, is_dir)) return;
    if (is_dir) {
      if ((ev.mask & (IN_CREATE | IN_MOVED_TO)) != 0) {
        // Files made before the watch was in place are seen by the walk; an empty new
        // directory changes nothing a snapshot holds.
        if (walk_source_from(d.tree, rel)) record(false, abs);
      } else if ((ev.mask & (IN_DELETE | IN_MOVED_FROM)) != 0) {
        record(false, abs);
      }
      return;
    }
    record(false, abs);
    if (is_rule_file(name)) {
      // Rules changed: directories they now leave unignored get watched.
      walk_source_from(d.tree, d.rel);
    }
  }

  void handle(const inotify_event& ev) {
    if ((ev.mask & IN_Q_OVERFLOW) != 0) {
      record_rescan("inotify event queue overflow");
      watch_all();
      return;
    }
    auto it = dirs.find(ev.wd);
    if (it == dirs.end()) return;
    const WatchedDir d = it->second;  // a copy: the maps change below
    if ((ev.mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT)) != 0) {
      if ((ev.mask & IN_IGNORED) != 0) {
        // The path may be watched again by now (removed and made anew): under another wd.
        if (auto p = by_path.find(d.abs); p != by_path.end() && p->second == ev.wd)
          by_path.erase(p);
        dirs.erase(ev.wd);
      }
      // IN_IGNORED follows each of the others: report the loss once.
      if (d.root && (ev.mask & IN_IGNORED) == 0) {
        record_rescan(d.abs + " was moved, removed or unmounted; no longer watched");
      }
      return;
    }
    const std::string_view name = ev.len > 0 ? std::string_view(ev.name) : std::string_view();
    if (name.empty()) return;
    const std::string abs = join(d.abs, name);
    switch (d.kind) {
      case DirKind::conda_meta:
      case DirKind::package_meta:
        record(true, abs);
        return;
      case DirKind::site_packages:
        if (!is_metadata_name(name)) return;
        record(true, abs);
        if ((ev.mask & IN_ISDIR) != 0) {
          if ((ev.mask & (IN_DELETE | IN_MOVED_FROM)) != 0) remove_subtree(abs);
          if ((ev.mask & (IN_CREATE | IN_MOVED_TO)) != 0)
            add_watch({abs, DirKind::package_meta, -1, {}, false}, k_entry_mask);
        }
        return;
      case DirKind::source:
        handle_source(d, ev, name);
        return;
    }
  }

  Result<void> read_events() {
    alignas(inotify_event) char buf[64 * 1024];
    for (;;) {
      const ssize_t n = ::read(inotify.get(), buf, sizeof buf);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) return {};
        return Error::from_errno("read inotify events", errno);
      }
      if (n == 0) return {};
      for (char* p = buf; p < buf + n;) {
        const auto* ev = reinterpret_cast<const inotify_event*>(p);
        handle(*ev);
        p += sizeof(inotify_event) + ev->len;
        if (mode == WatchMode::polling) return {};  // the rest is moot: the scan takes over
      }
    }
  }

  WaitResult take_batch() {
    WaitResult out;
    out.status = WaitStatus::changed;
    out.changes = std::move(batch);
    out.changes.paths.assign(paths.begin(), paths.end());
    batch = ChangeSet();
    paths.clear();
    pending = false;
    return out;
  }
};

ChangeWatcher::ChangeWatcher(std::unique_ptr<Impl> impl) : m_impl(std::move(impl)) {}
ChangeWatcher::~ChangeWatcher() = default;

namespace {

Result<std::string> checked_dir(const fs::path& path, std::string_view what) {
  std::error_code ec;
  fs::path abs = fs::absolute(path, ec).lexically_normal();
  if (ec) return Error(ErrorCode::invalid_argument, std::string(what) + " " + path.string());
  std::string s = abs.string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  struct stat st {};
  if (::stat(s.c_str(), &st) != 0) return Error::from_errno(std::string(what) + " " + s, errno);
  if (!S_ISDIR(st.st_mode)) {
    return Error(ErrorCode::invalid_argument, std::string(what) + " " + s + ": not a directory");
  }
  return s;
}

}  // namespace

Result<std::unique_ptr<ChangeWatcher>> ChangeWatcher::create(const WatchSet& set,
                                                             const WatchOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  for (const auto& p : set.prefixes) {
    ENVD_TRY(std::string prefix, checked_dir(p, "watch prefix"));
    impl->prefixes.push_back(std::move(prefix));
  }
  for (const auto& x : set.excluded) {
    std::error_code ec;
    std::string abs = fs::absolute(x, ec).lexically_normal().string();
    while (abs.size() > 1 && abs.back() == '/') abs.pop_back();
    if (!ec) impl->excluded.insert(std::move(abs));
  }
  std::string extra;
  for (const auto& pattern : set.extra_ignores) extra += pattern + "\n";
  for (const auto& root : set.sources) {
    ENVD_TRY(std::string abs, checked_dir(root, "watch source tree"));
    Tree t;
    t.root = std::move(abs);
    t.extra_rules = extra;
    find_git(t);
    // What the snapshot captures wins over the rules (tracked files matching .gitignore, rules
    // the watcher does not read such as core.excludesFile). Without a listing, rules alone.
    Diagnostics quiet;
    SourceOptions source_options;
    source_options.extra_ignores = set.extra_ignores;
    if (auto listing = list_source_tree(t.root, source_options, quiet)) {
      for (std::string& path : listing->paths) {
        for (std::size_t slash = path.find('/'); slash != std::string::npos;
             slash = path.find('/', slash + 1)) {
          t.listed_dirs.insert(path.substr(0, slash));
        }
        t.listed.insert(std::move(path));
      }
    } else {
      log::warn(k_component, "source tree not listed; watching by its ignore rules alone",
                {{"root", t.root}, {"error", listing.error().message()}});
    }
    impl->trees.push_back(std::move(t));
  }
  impl->wake = UniqueFd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!impl->wake.valid()) return Error::from_errno("eventfd", errno);
  impl->inotify = UniqueFd(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
  if (!impl->inotify.valid()) {
    const int err = errno;
    if (err != EMFILE) return Error::from_errno("inotify_init1", err);
    impl->switch_to_polling("inotify instance limit reached (fs.inotify.max_user_instances)");
  }
  impl->watch_all();
  if (impl->mode == WatchMode::polling) impl->scan(false);
  log::debug(k_component, "watching",
             {{"directories", std::to_string(impl->by_path.size())},
              {"mode", impl->mode == WatchMode::inotify ? "inotify" : "polling"}});
  return std::unique_ptr<ChangeWatcher>(new ChangeWatcher(std::move(impl)));
}

Result<WaitResult> ChangeWatcher::wait(std::optional<SteadyClock::time_point> deadline) {
  Impl& m = *m_impl;
  for (;;) {
    if (m.stopped) return WaitResult{WaitStatus::stopped, {}};
    const auto now = m.now();
    if (m.pending &&
        (now - m.last_event >= m.options.debounce || now - m.first_event >= m.options.max_delay)) {
      return m.take_batch();
    }
    milliseconds timeout = milliseconds::max();
    if (deadline) {
      const auto left = std::chrono::ceil<milliseconds>(*deadline - SteadyClock::now());
      timeout = std::max(left, milliseconds(0));
    }
    if (m.pending) {
      const auto quiet = std::chrono::ceil<milliseconds>(m.options.debounce - (now - m.last_event));
      const auto cap = std::chrono::ceil<milliseconds>(m.options.max_delay - (now - m.first_event));
      timeout =
          std::min({timeout, std::max(quiet, milliseconds(0)), std::max(cap, milliseconds(0))});
    }
    if (m.mode == WatchMode::polling) {
      timeout = std::min(
          timeout, std::max(std::chrono::ceil<milliseconds>(m.next_scan - now), milliseconds(0)));
    }
    pollfd fds[3] = {{m.wake.get(), POLLIN, 0},
                     {m.options.stop_fd, POLLIN, 0},
                     {m.inotify.valid() ? m.inotify.get() : -1, POLLIN, 0}};
    const int wait_ms = timeout == milliseconds::max()
                            ? -1
                            : static_cast<int>(std::min<long long>(timeout.count(), 1 << 30));
    const int rc = ::poll(fds, 3, wait_ms);
    if (rc < 0 && errno != EINTR) return Error::from_errno("poll", errno);
    if (rc > 0 && ((fds[0].revents | fds[1].revents) & (POLLIN | POLLHUP | POLLERR)) != 0) {
      m.stopped = true;
      continue;
    }
    if (rc > 0 && (fds[2].revents & POLLIN) != 0) {
      ENVD_TRY_VOID(m.read_events());
      if (m.mode == WatchMode::polling) {
        m.scan(false);  // the baseline; the switch itself is reported
        m.record_rescan("switched to polling");
      }
    }
    if (m.mode == WatchMode::polling && m.now() >= m.next_scan) m.scan(true);
    if (deadline && SteadyClock::now() >= *deadline) {
      const auto t = m.now();
      const bool due = m.pending && (t - m.last_event >= m.options.debounce ||
                                     t - m.first_event >= m.options.max_delay);
      if (!due) return WaitResult{WaitStatus::timeout, {}};
    }
  }
}

void ChangeWatcher::stop() {
  const std::uint64_t one = 1;
  // write(2) is async-signal-safe; a full counter (never in practice) still wakes poll.
  [[maybe_unused]] const ssize_t n = ::write(m_impl->wake.get(), &one, sizeof one);
}

WatchMode ChangeWatcher::mode() const {
  return m_impl->mode;
}
std::size_t ChangeWatcher::watch_count() const {
  return m_impl->by_path.size();
}
bool ChangeWatcher::pending() const {
  return m_impl->pending;
}

}  // namespace envd::agent
