// Parallel hashing with a stat-verified read. From a list (hash_files): the stat before the read
// and an fstat after; equal keys prove the bytes hashed are the file's content at that stat. During
// a walk (walk_and_hash), a file the cache does not know gets one fstat after the read only: a
// settled stat then proves the same (HashOptions::settled_before_ns).
#include "agent/file_hasher.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

namespace envd::agent {
namespace {

constexpr int k_max_attempts = 3;
constexpr std::size_t k_read_size = 256 * 1024;  // amortises syscalls, stays in L2

struct Hashed {
  oci::Digest digest;
  StatKey key;
};

// One read buffer per thread, left uninitialised: a small file touches only its first page.
char* read_buffer() {
  static thread_local std::unique_ptr<char[]> buf(new char[k_read_size]);
  return buf.get();
}

// Opens files for reading: never through a symlink, never blocking (a FIFO that replaced a file),
// and with O_NOATIME where allowed (it spares an inode write per file, but is refused for files of
// other owners: after the first refusal it is no longer tried).
class Opener {
 public:
  int open(int dirfd, const char* name) {
    constexpr int k_flags = O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK;
    if (m_noatime.load(std::memory_order_relaxed)) {
      int fd = ::openat(dirfd, name, k_flags | O_NOATIME);
      if (fd >= 0 || errno != EPERM) return fd;
      m_noatime.store(false, std::memory_order_relaxed);
    }
    return ::openat(dirfd, name, k_flags);
  }

 private:
  std::atomic<bool> m_noatime{true};
};

// Hashes from the current offset: exactly `expected` bytes when given (a short file ends early),
// else up to the first short read (the caller compares the count with an fstat after).
Result<oci::FileDigest> read_hash(int fd, const std::string& shown,
                                  std::optional<std::uint64_t> expected) {
  char* buf = read_buffer();
  oci::Sha256 h;
  std::uint64_t total = 0;
  for (;;) {
    std::size_t want = k_read_size;
    if (expected) {
      if (total >= *expected) break;
      want = static_cast<std::size_t>(std::min<std::uint64_t>(want, *expected - total));
    }
    ssize_t n = ::read(fd, buf, want);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::from_errno("read " + shown, errno);
    }
    h.update(buf, static_cast<std::size_t>(n));
    total += static_cast<std::uint64_t>(n);
    if (n == 0 || (!expected && static_cast<std::size_t>(n) < want)) break;
  }
  return oci::FileDigest{h.finish(), total};
}

// `walked` is the stat taken before the file was opened. On the first attempt it stands in for the
// stat before the read: if the stat after the read equals it, nothing changed from then to the end
// of the read, so the bytes read are the content of that stat. Any difference falls back to fstat
// before and after.
Result<Hashed> hash_stable(Opener& opener, int dirfd, const char* name, const std::string& shown,
                           const StatKey& walked, const HashOptions& options,
                           const std::string& rel_path) {
  for (int attempt = 0; attempt < k_max_attempts; ++attempt) {
    int fd = opener.open(dirfd, name);
    if (fd < 0) return Error::from_errno("read " + shown, errno);
    StatKey before = walked;
    if (attempt > 0) {
      struct stat st {};
      if (::fstat(fd, &st) != 0) {
        int err = errno;
        ::close(fd);
        return Error::from_errno("stat " + shown, err);
      }
      if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        return Error(ErrorCode::failed_precondition, shown + " is no longer a regular file");
      }
      before = stat_key(st);
    }
    // Reading exactly the size expected is enough: the fstat after the read proves it held.
    auto hashed = read_hash(fd, shown, before.size);
    if (options.after_read) options.after_read(rel_path);
    struct stat after {};
    bool same = ::fstat(fd, &after) == 0 && S_ISREG(after.st_mode) && before == stat_key(after);
    ::close(fd);
    if (!hashed) return hashed.error();
    if (same && hashed->size == static_cast<std::uint64_t>(after.st_size))
      return Hashed{hashed->digest, stat_key(after)};
  }
  return Error(ErrorCode::failed_precondition,
               shown + " kept changing while it was read (" + std::to_string(k_max_attempts) +
                   " attempts); stop the program writing it or exclude it with .envdignore");
}

bool is_racy(const StatKey& key, const HashOptions& options) {
  return std::max(key.mtime_ns, key.ctime_ns) >= options.racy_after_ns;
}

// Replaces the cache's entries for `root` with `files` (racy ones left out), only when they
// changed: a warm run then writes nothing.
void update_cache(StatCache& cache, const std::string& root, const std::vector<WalkedFile>& files,
                  const StatCacheRoot& cached, bool any_read, const HashOptions& options) {
  std::vector<const WalkedFile*> keep;
  keep.reserve(files.size());
  bool racy_left_out = false;
  std::size_t path_bytes = 0;
  for (const auto& f : files) {
    if (f.type != snapshot::FileType::regular) continue;
    if (is_racy(f.key, options)) {
      racy_left_out = true;
      continue;
    }
    keep.push_back(&f);
    path_bytes += f.path.size();
  }
  if (!any_read && !racy_left_out && keep.size() == cached.size()) return;
  auto by_path = [](const WalkedFile* a, const WalkedFile* b) { return a->path < b->path; };
  if (!std::is_sorted(keep.begin(), keep.end(), by_path))
    std::sort(keep.begin(), keep.end(), by_path);
  StatCacheRoot::Packer packer(keep.size(), path_bytes);
  for (const auto* f : keep) packer.add(f->path, f->key, *f->digest);
  cache.replace_packed(root, std::move(packer).finish());
}

// The walk's reader: cached files by stat and lookup, others by a read and one fstat after.
class WalkReader final : public ContentReader {
 public:
  WalkReader(std::string root, const StatCacheRoot& cached, const HashOptions& options,
             HashProgress& progress)
      : m_root(std::move(root)), m_cached(cached), m_options(options), m_progress(progress) {}

  Result<bool> read_listed(int dirfd, const char* name, WalkedFile& file) override {
    if (auto found = m_cached.find(file.path)) {
      // Known: its stat decides whether the cached digest still holds.
      struct stat st {};
      if (::fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
        return false;  // the walker looks again and records what is there now
      file.type = snapshot::FileType::regular;
      file.mode = st.st_mode & 07777;
      file.key = stat_key(st);
      file.nlink = static_cast<std::uint64_t>(st.st_nlink);
      if (found->key == file.key) {
        file.digest = found->digest;
        count(file.key.size, false);
        return true;
      }
      ENVD_TRY_VOID(hash(dirfd, name, file));
      return true;
    }
    return read_settled(dirfd, name, file);
  }

  Result<void> read_statted(int dirfd, const char* name, WalkedFile& file) override {
    if (auto digest = m_cached.lookup(file.path, file.key)) {
      file.digest = *digest;
      count(file.key.size, false);
      return {};
    }
    return hash(dirfd, name, file);
  }

  bool any_read() const { return m_files_read.load() != 0; }

 private:
  // Read first, fstat once after: if that stat is settled (see HashOptions::settled_before_ns) and
  // its size is the count read, the bytes read are the file's content at that stat. Anything else
  // (recently written, gone, a symlink or FIFO now, a read error) returns false: the walker then
  // lstat-s the entry, and read_statted() reads it under a stat before and after or says why not.
  Result<bool> read_settled(int dirfd, const char* name, WalkedFile& file) {
    int fd = m_opener.open(dirfd, name);
    if (fd < 0) return false;
    auto hashed = read_hash(fd, std::string(), std::nullopt);
    if (m_options.after_read) m_options.after_read(file.path);
    struct stat st {};
    bool statted = ::fstat(fd, &st) == 0;
    ::close(fd);
    if (!hashed || !statted || !S_ISREG(st.st_mode) ||
        hashed->size != static_cast<std::uint64_t>(st.st_size))
      return false;
    StatKey key = stat_key(st);
    if (std::max(key.mtime_ns, key.ctime_ns) >= m_options.settled_before_ns) return false;
    file.type = snapshot::FileType::regular;
    file.mode = st.st_mode & 07777;
    file.key = key;
    file.nlink = static_cast<std::uint64_t>(st.st_nlink);
    file.digest = hashed->digest;
    count(key.size, true);
    return true;
  }

  Result<void> hash(int dirfd, const char* name, WalkedFile& file) {
    ENVD_TRY(auto h, hash_stable(m_opener, dirfd, name, m_root + "/" + file.path, file.key,
                                 m_options, file.path));
    file.digest = h.digest;
    file.key = h.key;  // the stat the digest belongs to (may be newer than the walk's)
    count(h.key.size, true);
    return {};
  }

  void count(std::uint64_t size, bool read) {
    m_progress.files_total += 1;
    m_progress.bytes_total += size;
    m_progress.files_done += 1;
    m_progress.bytes_done += size;
    if (!read) return;
    m_files_read += 1;
    m_progress.files_hashed += 1;
    m_progress.bytes_hashed += size;
  }

  std::string m_root;
  const StatCacheRoot& m_cached;
  const HashOptions& m_options;
  HashProgress& m_progress;
  Opener m_opener;
  std::atomic<std::uint64_t> m_files_read{0};
};

}  // namespace

Result<void> hash_files(const std::filesystem::path& root, std::vector<WalkedFile>& files,
                        StatCache& cache, const HashOptions& options, HashProgress& progress) {
  const std::string root_str = root.string();
  ENVD_TRY(const StatCacheRoot* cached, cache.root(root_str));
  // Cache hits first, on this thread: lookups are cheap and leave only real work to the pool.
  std::vector<WalkedFile*> misses;
  std::uint64_t regular = 0, bytes = 0, hit_files = 0, hit_bytes = 0;
  for (auto& f : files) {
    if (f.type != snapshot::FileType::regular) continue;
    ++regular;
    bytes += f.key.size;
    if (auto d = cached->lookup(f.path, f.key)) {
      f.digest = *d;
      ++hit_files;
      hit_bytes += f.key.size;
    } else {
      misses.push_back(&f);
    }
  }
  progress.files_total += regular;
  progress.bytes_total += bytes;
  progress.files_done += hit_files;
  progress.bytes_done += hit_bytes;
  // Largest first so one big file does not finish last on an otherwise idle pool.
  std::sort(misses.begin(), misses.end(),
            [](const WalkedFile* a, const WalkedFile* b) { return a->key.size > b->key.size; });

  Opener opener;
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mutex;
  std::optional<Error> first_error;
  auto worker = [&] {
    std::string path = root_str + "/";
    const std::size_t base = path.size();
    for (std::size_t k; !failed.load() && (k = next.fetch_add(1)) < misses.size();) {
      WalkedFile& f = *misses[k];
      path.resize(base);
      path += f.path;
      auto r = hash_stable(opener, AT_FDCWD, path.c_str(), path, f.key, options, f.path);
      if (!r) {
        std::lock_guard lock(mutex);
        if (!first_error) first_error = r.error();
        failed = true;
        break;
      }
      f.digest = r->digest;
      f.key = r->key;  // the stat the digest belongs to (may be newer than the walk's)
      progress.files_done += 1;
      progress.bytes_done += r->key.size;
      progress.files_hashed += 1;
      progress.bytes_hashed += r->key.size;
    }
  };
  unsigned threads =
      options.threads != 0 ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  threads = static_cast<unsigned>(
      std::min<std::size_t>(threads, std::max<std::size_t>(1, misses.size())));
  std::vector<std::thread> pool;
  for (unsigned i = 1; i < threads; ++i) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (first_error) return *first_error;
  update_cache(cache, root_str, files, *cached, !misses.empty(), options);
  return {};
}

Result<std::vector<WalkedFile>> walk_and_hash(const std::filesystem::path& root, StatCache& cache,
                                              const WalkOptions& walk_options,
                                              const HashOptions& options, HashProgress& progress,
                                              Diagnostics& diagnostics) {
  const std::string root_str = root.string();
  ENVD_TRY(const StatCacheRoot* cached, cache.root(root_str));
  WalkReader reader(root_str, *cached, options, progress);
  WalkOptions with_reader = walk_options;
  with_reader.reader = &reader;
  ENVD_TRY(auto files, walk_tree(root, with_reader, diagnostics));
  update_cache(cache, root_str, files, *cached, reader.any_read(), options);
  return files;
}

}  // namespace envd::agent
