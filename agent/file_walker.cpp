// Parallel directory walk: a shared queue of directories, N workers each reading one directory
// with getdents64 and lstat-ing its entries relative to the directory fd (fstatat), which avoids
// re-resolving long paths for every file. With a ContentReader, files are read in the same pass.
#include "agent/file_walker.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>

namespace envd::agent {
namespace {

std::string read_link_at(int dirfd, const char* name, std::size_t size_hint) {
  std::string buf(std::max<std::size_t>(size_hint, 64) + 1, '\0');
  for (;;) {
    ssize_t n = ::readlinkat(dirfd, name, buf.data(), buf.size());
    if (n < 0) return {};
    if (static_cast<std::size_t>(n) < buf.size()) {
      buf.resize(static_cast<std::size_t>(n));
      return buf;
    }
    buf.resize(buf.size() * 2);
  }
}

// Fills `out` from one stat result; returns false for types the snapshot does not carry.
bool fill(WalkedFile& out, const struct stat& st, int dirfd, const char* name) {
  out.mode = st.st_mode & 07777;
  out.key = stat_key(st);
  out.nlink = static_cast<std::uint64_t>(st.st_nlink);
  if (S_ISREG(st.st_mode)) {
    out.type = snapshot::FileType::regular;
    return true;
  }
  if (S_ISLNK(st.st_mode)) {
    out.type = snapshot::FileType::symlink;
    out.key.size = 0;
    out.target = read_link_at(dirfd, name, static_cast<std::size_t>(st.st_size));
    return true;
  }
  return false;
}

class TreeWalker {
 public:
  TreeWalker(std::filesystem::path root, ContentReader* reader, Diagnostics& diagnostics)
      : m_root(std::move(root)), m_reader(reader), m_diagnostics(diagnostics) {}

  Result<std::vector<WalkedFile>> run(unsigned threads) {
    m_queue.push_back("");
    m_pending = 1;
    std::vector<std::thread> pool;
    for (unsigned i = 1; i < threads; ++i) pool.emplace_back([this] { work(); });
    work();
    for (auto& t : pool) t.join();
    if (m_error) return *m_error;
    // Sort pointers, then move each entry once: sorting the ~180-byte entries themselves moved
    // each of them a dozen times.
    std::size_t count = 0;
    for (const auto& part : m_parts) count += part.size();
    std::vector<WalkedFile*> order;
    order.reserve(count);
    for (auto& part : m_parts)
      for (auto& f : part) order.push_back(&f);
    std::sort(order.begin(), order.end(),
              [](const WalkedFile* a, const WalkedFile* b) { return a->path < b->path; });
    std::vector<WalkedFile> all;
    all.reserve(order.size());
    for (auto* f : order) all.push_back(std::move(*f));
    return all;
  }

 private:
  void work() {
    std::deque<WalkedFile> local;  // growing a deque never moves the entries already in it
    std::vector<std::string> subdirs;
    for (;;) {
      std::string dir;
      {
        std::unique_lock lock(m_mutex);
        m_cv.wait(lock, [&] { return !m_queue.empty() || m_pending == 0 || m_error; });
        if (m_queue.empty() || m_error) break;
        dir = std::move(m_queue.front());
        m_queue.pop_front();
      }
      subdirs.clear();
      auto read = read_directory(dir, local, subdirs);
      {
        std::lock_guard lock(m_mutex);
        if (!read && !m_error) m_error = read.error();
        for (auto& s : subdirs) m_queue.push_back(std::move(s));
        m_pending += subdirs.size();
        --m_pending;
      }
      m_cv.notify_all();
    }
    std::lock_guard lock(m_mutex);
    m_parts.push_back(std::move(local));
  }

  // getdents64 rather than readdir: fdopendir costs an fstat, an fcntl and a 32 KiB allocation
  // per directory, and a prefix has thousands of small directories.
  Result<void> read_directory(const std::string& rel, std::deque<WalkedFile>& out,
                              std::vector<std::string>& subdirs) {
    const std::string abs = rel.empty() ? m_root.string() : (m_root / rel).string();
    int fd = ::open(abs.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
      m_diagnostics.warn(abs,
                         "cannot read directory, skipped: " + std::string(std::strerror(errno)));
      return {};
    }
    alignas(struct dirent64) char buf[32 * 1024];
    Result<void> result;
    while (result) {
      ssize_t n = ::getdents64(fd, buf, sizeof buf);
      if (n < 0) {
        m_diagnostics.warn(
            abs, "cannot read directory, rest skipped: " + std::string(std::strerror(errno)));
        break;
      }
      if (n == 0) break;
      for (ssize_t at = 0; at < n && result;) {
        const auto* e = reinterpret_cast<const struct dirent64*>(buf + at);
        at += e->d_reclen;
        result = visit(fd, rel, e->d_name, e->d_type, out, subdirs);
      }
    }
    ::close(fd);
    return result;
  }

  Result<void> visit(int fd, const std::string& rel, const char* cname, unsigned char d_type,
                     std::deque<WalkedFile>& out, std::vector<std::string>& subdirs) {
    std::string_view name(cname);
    if (name == "." || name == "..") return {};
    std::string child;
    child.reserve(rel.size() + 1 + name.size());
    if (!rel.empty()) child.append(rel).append(1, '/');
    child.append(name);
    if (!is_valid_utf8(name)) {
      m_diagnostics.warn((m_root / escape_path(child)).string(),
                         "file name is not valid UTF-8, skipped");
      return {};
    }
    if (d_type == DT_DIR) {
      subdirs.push_back(std::move(child));
      return {};
    }
    WalkedFile f;
    f.path = std::move(child);
    if (d_type == DT_REG && m_reader != nullptr) {
      ENVD_TRY(bool done, m_reader->read_listed(fd, cname, f));
      if (done) {
        out.push_back(std::move(f));
        return {};
      }
    }
    struct stat st {};
    if (::fstatat(fd, cname, &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno != ENOENT)  // vanished between listing and stat: nothing to record
        m_diagnostics.warn((m_root / f.path).string(),
                           "cannot stat, skipped: " + std::string(std::strerror(errno)));
      return {};
    }
    if (S_ISDIR(st.st_mode)) {  // filesystems that report DT_UNKNOWN
      subdirs.push_back(std::move(f.path));
      return {};
    }
    if (!fill(f, st, fd, cname)) {
      m_diagnostics.warn((m_root / f.path).string(),
                         "not a regular file or symlink (FIFO, socket or device), skipped");
      return {};
    }
    if (f.type == snapshot::FileType::regular && m_reader != nullptr)
      ENVD_TRY_VOID(m_reader->read_statted(fd, cname, f));
    out.push_back(std::move(f));
    return {};
  }

  std::filesystem::path m_root;
  ContentReader* m_reader;
  Diagnostics& m_diagnostics;
  std::mutex m_mutex;
  std::condition_variable m_cv;
  std::deque<std::string> m_queue;
  std::size_t m_pending = 0;  // directories queued or being read
  std::optional<Error> m_error;
  std::vector<std::deque<WalkedFile>> m_parts;
};

}  // namespace

void HardLinkFinder::finish() {
  if (m_noted.size() < 2) return;
  // By inode, then by path: each group starts with its first path.
  std::sort(m_noted.begin(), m_noted.end(), [](const Noted& a, const Noted& b) {
    if (a.dev != b.dev || a.ino != b.ino) return std::pair(a.dev, a.ino) < std::pair(b.dev, b.ino);
    return a.entry->path < b.entry->path;
  });
  for (std::size_t g = 0; g < m_noted.size();) {
    std::size_t end = g + 1;
    while (end < m_noted.size() && m_noted[end].dev == m_noted[g].dev &&
           m_noted[end].ino == m_noted[g].ino)
      ++end;
    const snapshot::FileEntry& first = *m_noted[g].entry;
    for (std::size_t k = g + 1; k < end; ++k) {
      snapshot::FileEntry& f = *m_noted[k].entry;
      if (f.digest && first.digest && *f.digest == *first.digest && f.size == first.size &&
          f.mode == first.mode)
        f.link = first.path;
    }
    g = end;
  }
  m_noted.clear();
}

snapshot::FileEntry to_file_entry(WalkedFile&& w) {
  snapshot::FileEntry e;
  e.path = std::move(w.path);
  e.type = w.type;
  e.mode = w.mode;
  if (w.type == snapshot::FileType::regular) {
    e.size = w.key.size;
    e.digest = w.digest;
  } else {
    e.target = std::move(w.target);
  }
  return e;
}

bool is_valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    std::size_t len = c < 0x80           ? 1
                      : (c >> 5) == 0x6  ? 2
                      : (c >> 4) == 0xe  ? 3
                      : (c >> 3) == 0x1e ? 4
                                         : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (std::size_t k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return false;
    }
    if (len == 2 && c < 0xc2) return false;  // overlong
    i += len;
  }
  return true;
}

std::string escape_path(std::string_view path) {
  std::string out;
  std::size_t i = 0;
  while (i < path.size()) {
    // Keep valid UTF-8 sequences; escape bytes that do not start one.
    for (std::size_t len = 1; len <= 4 && i + len <= path.size(); ++len) {
      if (is_valid_utf8(path.substr(i, len))) {
        out.append(path.substr(i, len));
        i += len;
        goto next;
      }
    }
    {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned char>(path[i]));
      out += buf;
      ++i;
    }
  next:;
  }
  return out;
}

Result<std::vector<WalkedFile>> walk_tree(const std::filesystem::path& root,
                                          const WalkOptions& options, Diagnostics& diagnostics) {
  struct stat st {};
  if (::stat(root.c_str(), &st) != 0) return Error::from_errno("walk " + root.string(), errno);
  if (!S_ISDIR(st.st_mode))
    return Error(ErrorCode::invalid_argument, root.string() + " is not a directory");
  unsigned threads =
      options.threads != 0 ? options.threads : std::max(2u, std::thread::hardware_concurrency());
  return TreeWalker(root, options.reader, diagnostics).run(threads);
}

std::vector<WalkedFile> stat_paths(const std::filesystem::path& root,
                                   const std::vector<std::string>& paths,
                                   Diagnostics& diagnostics) {
  std::vector<WalkedFile> out;
  out.reserve(paths.size());
  int rootfd = ::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (rootfd < 0) {
    diagnostics.warn(root.string(), "cannot open directory: " + std::string(std::strerror(errno)));
    return out;
  }
  for (const auto& p : paths) {
    struct stat st {};
    if (::fstatat(rootfd, p.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      diagnostics.warn((root / p).string(),
                       "cannot stat, skipped: " + std::string(std::strerror(errno)));
      continue;
    }
    if (S_ISDIR(st.st_mode)) continue;
    WalkedFile f;
    if (!fill(f, st, rootfd, p.c_str())) {
      diagnostics.warn((root / p).string(),
                       "not a regular file or symlink (FIFO, socket or device), skipped");
      continue;
    }
    f.path = p;
    out.push_back(std::move(f));
  }
  ::close(rootfd);
  std::sort(out.begin(), out.end(),
            [](const WalkedFile& a, const WalkedFile& b) { return a.path < b.path; });
  return out;
}

}  // namespace envd::agent
