// Assembles a root filesystem from unpacked layers by hardlinking their files (no data copied)
// and applying OCI whiteouts, every step relative to directory fds opened with O_NOFOLLOW; an envd
// image's roots are recorded beside it.
// Whiteouts: https://github.com/opencontainers/image-spec/blob/v1.1.0/layer.md#whiteouts
#include "envd/node/rootfs_assembler.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string_view>
#include <system_error>
#include <thread>

#include "envd/node/image_roots.hpp"
#include "envd/node/safe_dir.hpp"

namespace envd::node {

namespace {

constexpr std::string_view k_whiteout_prefix = ".wh.";
constexpr std::string_view k_meta_prefix = ".wh..wh.";  // AUFS metadata, of which only:
constexpr std::string_view k_opaque = ".wh..wh..opq";

std::string child_path(const std::string& rel, std::string_view name) {
  return rel.empty() ? std::string(name) : rel + "/" + std::string(name);
}

std::vector<std::string> split(const std::string& rel) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start < rel.size()) {
    std::size_t slash = rel.find('/', start);
    if (slash == std::string::npos) slash = rel.size();
    out.push_back(rel.substr(start, slash - start));
    start = slash + 1;
  }
  return out;
}

struct DirMeta {
  mode_t mode;
  struct timespec mtime;
};

// Merges layers into dest one after the other; within a layer, directories are merged by several
// threads (their subtrees are disjoint), and the next layer starts when all are done. Directory
// modes and mtimes are applied at the end (children first): creating entries would change a
// directory's mtime, and a read-only directory would stop a rootless daemon from creating the
// next layer's entries in it.
class Assembler {
 public:
  explicit Assembler(AssembleStats& stats) : m_stats(stats) {}

  Result<void> merge_layer(const std::filesystem::path& layer, int dest_fd) {
    m_layer = layer.string();
    UniqueFd layer_fd(::open(layer.c_str(), k_nofollow_dir_flags));
    if (!layer_fd.valid()) return unexpected(Error::from_errno("open layer " + m_layer, errno));
    ENVD_TRY_VOID(record_dir(layer_fd.get(), ""));
    UniqueFd dest(::fcntl(dest_fd, F_DUPFD_CLOEXEC, 0));
    if (!dest.valid()) return unexpected(Error::from_errno("dup rootfs fd", errno));
    m_failure.reset();
    m_tasks.push_back(Task{std::move(layer_fd), std::move(dest), std::string()});
    unsigned threads = std::clamp(std::thread::hardware_concurrency(), 1u, k_max_threads);
    std::vector<std::thread> helpers;
    for (unsigned i = 1; i < threads; ++i) {
      try {
        helpers.emplace_back([this] { work(); });
      } catch (const std::system_error&) {
        break;  // no thread to be had: fewer helpers, or this thread alone
      }
    }
    work();
    for (auto& t : helpers) t.join();
    m_tasks.clear();  // left after a failure
    m_stats.files += m_counts.files.exchange(0);
    m_stats.directories += m_counts.directories.exchange(0);
    m_stats.symlinks += m_counts.symlinks.exchange(0);
    m_stats.removed += m_counts.removed.exchange(0);
    if (m_failure) return unexpected(*m_failure);
    return {};
  }

  // Applies the recorded directory modes and mtimes, deepest first (reverse byte order puts every
  // path before its ancestors). Directories replaced since they were recorded are skipped.
  Result<void> finish(int dest_fd) {
    DirCursor cursor(dest_fd);
    for (auto it = m_dirs.rbegin(); it != m_dirs.rend(); ++it) {
      std::vector<std::string> path = split(it->first);
      auto fd = cursor.open(path, path.size(), DirCursor::Missing::fail);
      if (!fd) continue;
      struct timespec times[2] = {it->second.mtime, it->second.mtime};
      if (::fchmod(*fd, it->second.mode) != 0 || ::futimens(*fd, times) != 0)
        return unexpected(Error::from_errno("set mode and mtime of /" + it->first, errno));
    }
    return {};
  }

 private:
  static constexpr unsigned k_max_threads = 4;
  // Directories queued for any thread at most; beyond, a thread merges a child directory itself
  // (each queued task holds two open fds).
  static constexpr std::size_t k_max_queued = 64;

  // A directory of the layer to merge into its counterpart in dest, both open.
  struct Task {
    UniqueFd layer;
    UniqueFd dest;
    std::string rel;
  };

  // Takes tasks until none is queued or running, or one failed.
  void work() {
    std::unique_lock lock(m_mutex);
    for (;;) {
      m_changed.wait(lock, [&] { return !m_tasks.empty() || m_running == 0 || m_failure; });
      if (m_failure || m_tasks.empty()) return;
      Task task = std::move(m_tasks.front());
      m_tasks.pop_front();
      ++m_running;
      lock.unlock();
      Result<void> r = run(std::move(task));  // the fds close here, outside the lock
      lock.lock();
      --m_running;
      if (!r && !m_failure) m_failure = r.error();
      m_changed.notify_all();
    }
  }

  Result<void> run(Task task) { return merge_dir(task.layer.get(), task.dest.get(), task.rel); }

  // Counts for the stats, from any thread.
  struct Counters {
    std::atomic<std::uint64_t> files{0};
    std::atomic<std::uint64_t> directories{0};
    std::atomic<std::uint64_t> symlinks{0};
    std::atomic<std::uint64_t> removed{0};
  };
  static void count(std::atomic<std::uint64_t>& counter, std::uint64_t n = 1) {
    counter.fetch_add(n, std::memory_order_relaxed);
  }

  Error entry_error(ErrorCode code, const std::string& rel, const std::string& msg) const {
    return Error(code, "layer " + m_layer + ": entry \"" + rel + "\": " + msg);
  }
  Error entry_errno(const std::string& rel, std::string_view op, int err) const {
    return Error::from_errno(op, err).with_context("layer " + m_layer + ": entry \"" + rel + "\"");
  }

  Result<void> record_dir(int layer_dir_fd, const std::string& rel) {
    struct stat st {};
    if (::fstat(layer_dir_fd, &st) != 0) return unexpected(entry_errno(rel, "stat", errno));
    std::lock_guard guard(m_mutex);
    m_dirs[rel] = DirMeta{static_cast<mode_t>(st.st_mode & 0777), st.st_mtim};
    return {};
  }

  // Removes `name` from dest_dir (and all below it), counting what went.
  Result<void> remove_at(int dest_dir, const std::string& name) {
    std::uint64_t removed = 0;
    auto r = remove_tree_at(dest_dir, name, &removed);
    if (removed != 0) count(m_counts.removed, removed);
    return r;
  }

  Result<void> merge_dir(int layer_dir, int dest_dir, std::string& rel) {
    ENVD_TRY(std::vector<DirEntry> entries, list_dir(layer_dir, m_layer + "/" + rel));
    // Whiteouts and the opaque marker hide lower layers' content only, so they go first: this
    // layer's own entries of the same names are added afterwards.
    for (const DirEntry& e : entries) {
      if (e.name != k_opaque) continue;
      // A fresh fd: dest_dir's read offset is not ours to move.
      UniqueFd fresh(::openat(dest_dir, ".", k_nofollow_dir_flags));
      if (!fresh.valid()) return unexpected(entry_errno(rel, "open", errno));
      ENVD_TRY(std::vector<DirEntry> lower, list_dir(fresh.get(), "/" + rel));
      for (const DirEntry& l : lower) ENVD_TRY_VOID(remove_at(dest_dir, l.name));
    }
    for (const DirEntry& e : entries) {
      std::string_view name = e.name;
      if (!name.starts_with(k_whiteout_prefix) || name.starts_with(k_meta_prefix)) continue;
      std::string target(name.substr(k_whiteout_prefix.size()));
      if (target.empty() || target == "." || target == "..")
        return unexpected(entry_error(ErrorCode::invalid_argument, child_path(rel, name),
                                      "whiteout names \"" + target + "\", not an entry"));
      ENVD_TRY_VOID(remove_at(dest_dir, target));
    }
    for (const DirEntry& e : entries) {
      if (std::string_view(e.name).starts_with(k_whiteout_prefix)) continue;
      std::size_t mark = rel.size();
      rel = child_path(rel, e.name);
      Result<void> step = e.type == DT_DIR ? merge_child_dir(layer_dir, dest_dir, e.name, rel)
                          : (e.type == DT_REG || e.type == DT_LNK)
                              ? link_entry(layer_dir, dest_dir, e, rel)
                              : Result<void>();
      rel.resize(mark);
      if (!step) return step;
    }
    return {};
  }

  // A directory replaces whatever non-directory lower layers had at its path (as overlayfs shows
  // an upper directory over a lower file or symlink) and merges with a lower directory.
  Result<void> merge_child_dir(int layer_dir, int dest_dir, const std::string& name,
                               std::string& rel) {
    UniqueFd layer_child(::openat(layer_dir, name.c_str(), k_nofollow_dir_flags));
    if (!layer_child.valid()) return unexpected(entry_errno(rel, "open", errno));
    UniqueFd dest_child;
    for (int attempt = 0; attempt < 2 && !dest_child.valid(); ++attempt) {
      if (::mkdirat(dest_dir, name.c_str(), 0700) == 0) {
        count(m_counts.directories);
      } else if (errno != EEXIST) {
        return unexpected(entry_errno(rel, "mkdir", errno));
      }
      dest_child = UniqueFd(::openat(dest_dir, name.c_str(), k_nofollow_dir_flags));
      if (dest_child.valid()) break;
      if (errno != ENOTDIR && errno != ELOOP) return unexpected(entry_errno(rel, "open", errno));
      // A file or symlink from a lower layer: removed, never followed.
      if (::unlinkat(dest_dir, name.c_str(), 0) != 0)
        return unexpected(entry_errno(rel, "unlink", errno));
    }
    if (!dest_child.valid()) return unexpected(entry_error(ErrorCode::io, rel, "cannot create"));
    ENVD_TRY_VOID(record_dir(layer_child.get(), rel));
    {
      std::lock_guard guard(m_mutex);
      if (m_tasks.size() < k_max_queued) {
        m_tasks.push_back(Task{std::move(layer_child), std::move(dest_child), rel});
        m_changed.notify_one();
        return {};
      }
    }
    return merge_dir(layer_child.get(), dest_child.get(), rel);
  }

  // Files and symlinks are hardlinked (a symlink itself, as linkat without AT_SYMLINK_FOLLOW
  // does): no data copied, mode and mtime kept.
  Result<void> link_entry(int layer_dir, int dest_dir, const DirEntry& e, const std::string& rel) {
    if (::linkat(layer_dir, e.name.c_str(), dest_dir, e.name.c_str(), 0) != 0) {
      if (errno != EEXIST) return unexpected(entry_errno(rel, "hardlink into the rootfs", errno));
      ENVD_TRY_VOID(remove_tree_at(dest_dir, e.name));
      if (::linkat(layer_dir, e.name.c_str(), dest_dir, e.name.c_str(), 0) != 0)
        return unexpected(entry_errno(rel, "hardlink into the rootfs", errno));
    }
    count(e.type == DT_LNK ? m_counts.symlinks : m_counts.files);
    return {};
  }

  AssembleStats& m_stats;  // m_counts added in after each layer
  Counters m_counts;
  std::string m_layer;  // the layer being merged; set before the threads start
  std::mutex m_mutex;
  std::condition_variable m_changed;
  std::map<std::string, DirMeta> m_dirs;  // guarded by m_mutex
  std::deque<Task> m_tasks;               // guarded by m_mutex
  std::size_t m_running = 0;              // tasks being merged; guarded by m_mutex
  std::optional<Error> m_failure;         // the first task that failed; guarded by m_mutex
};

}  // namespace

struct RootfsAssembly::State {
  std::filesystem::path dest;
  UniqueFd dest_fd;
  AssembleStats stats;
  Assembler assembler{stats};
};

RootfsAssembly::RootfsAssembly(std::unique_ptr<State> state) : m_state(std::move(state)) {}
RootfsAssembly::RootfsAssembly(RootfsAssembly&&) noexcept = default;
RootfsAssembly& RootfsAssembly::operator=(RootfsAssembly&&) noexcept = default;
RootfsAssembly::~RootfsAssembly() = default;

Result<RootfsAssembly> RootfsAssembly::start(const std::filesystem::path& dest) {
  if (::mkdir(dest.c_str(), 0700) != 0)
    return unexpected(Error::from_errno("create rootfs " + dest.string(), errno));
  auto state = std::make_unique<State>();
  state->dest = dest;
  state->dest_fd = UniqueFd(::open(dest.c_str(), k_nofollow_dir_flags));
  if (!state->dest_fd.valid())
    return unexpected(Error::from_errno("open rootfs " + dest.string(), errno));
  return RootfsAssembly(std::move(state));
}

Result<void> RootfsAssembly::add_layer(const std::filesystem::path& layer) {
  auto r = m_state->assembler.merge_layer(layer, m_state->dest_fd.get());
  if (!r) return unexpected(r.error().with_context("assemble " + m_state->dest.string()));
  return {};
}

Result<AssembleStats> RootfsAssembly::finish() {
  const std::string what = "assemble " + m_state->dest.string();
  auto r = m_state->assembler.finish(m_state->dest_fd.get());
  if (!r) return unexpected(r.error().with_context(what));
  auto recorded = detail::write_roots_record(m_state->dest);
  if (!recorded) return unexpected(recorded.error().with_context(what));
  return m_state->stats;
}

Result<AssembleStats> assemble_rootfs(const std::vector<std::filesystem::path>& layers,
                                      const std::filesystem::path& dest) {
  ENVD_TRY(auto assembly, RootfsAssembly::start(dest));
  for (const std::filesystem::path& layer : layers) ENVD_TRY_VOID(assembly.add_layer(layer));
  return assembly.finish();
}

}  // namespace envd::node
