// Parallel hashing with a stat-verified read: fstat before and after reading; equal keys prove
// the bytes hashed are the file's content at that stat, so digest and key are recorded together.
#include "agent/file_hasher.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <mutex>
#include <optional>
#include <thread>

namespace envd::agent {
namespace {

constexpr int k_max_attempts = 3;

std::int64_t to_ns(const timespec& ts) {
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

StatKey key_of(const struct stat& st) {
  return StatKey{static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino),
                 static_cast<std::uint64_t>(st.st_size), to_ns(st.st_mtim), to_ns(st.st_ctim)};
}

struct Hashed {
  oci::Digest digest;
  StatKey key;
};

Result<Hashed> hash_stable(const std::filesystem::path& path) {
  for (int attempt = 0; attempt < k_max_attempts; ++attempt) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOATIME);
    if (fd < 0 && errno == EPERM) fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return Error::from_errno("read " + path.string(), errno);
    struct stat before {}, after {};
    if (::fstat(fd, &before) != 0) {
      int err = errno;
      ::close(fd);
      return Error::from_errno("stat " + path.string(), err);
    }
    if (!S_ISREG(before.st_mode)) {
      ::close(fd);
      return Error(ErrorCode::failed_precondition, path.string() + " is no longer a regular file");
    }
    auto hashed = oci::sha256_fd(fd, path.string());
    bool same = ::fstat(fd, &after) == 0 && key_of(before) == key_of(after);
    ::close(fd);
    if (!hashed) return hashed.error();
    if (same && hashed->size == static_cast<std::uint64_t>(after.st_size))
      return Hashed{hashed->digest, key_of(after)};
  }
  return Error(ErrorCode::failed_precondition,
               path.string() + " kept changing while it was read (" +
                   std::to_string(k_max_attempts) +
                   " attempts); stop the program writing it or exclude it with .envdignore");
}

}  // namespace

Result<void> hash_files(std::vector<HashJob>& jobs, StatCache& cache, const HashOptions& options,
                        HashProgress& progress) {
  for (const auto& j : jobs) {
    progress.files_total += 1;
    progress.bytes_total += j.file->key.size;
  }
  // Cache hits first, on this thread: lookups are cheap and leave only real work to the pool.
  std::vector<std::size_t> misses;
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    auto& j = jobs[i];
    if (auto d = cache.lookup(j.abs_path.string(), j.file->key)) {
      j.digest = *d;
      progress.files_done += 1;
      progress.bytes_done += j.file->key.size;
    } else {
      misses.push_back(i);
    }
  }
  // Largest first so one big file does not finish last on an otherwise idle pool.
  std::sort(misses.begin(), misses.end(), [&](std::size_t a, std::size_t b) {
    return jobs[a].file->key.size > jobs[b].file->key.size;
  });

  std::atomic<std::size_t> next{0};
  std::mutex mutex;
  std::optional<Error> first_error;
  std::vector<std::pair<std::size_t, StatKey>> done;  // job index, verified key
  auto worker = [&] {
    std::vector<std::pair<std::size_t, StatKey>> local;
    for (;;) {
      std::size_t k = next.fetch_add(1);
      if (k >= misses.size()) break;
      {
        std::lock_guard lock(mutex);
        if (first_error) break;
      }
      auto& j = jobs[misses[k]];
      auto r = hash_stable(j.abs_path);
      if (!r) {
        std::lock_guard lock(mutex);
        if (!first_error) first_error = r.error();
        break;
      }
      j.digest = r->digest;
      local.emplace_back(misses[k], r->key);
      progress.files_done += 1;
      progress.bytes_done += r->key.size;
      progress.files_hashed += 1;
      progress.bytes_hashed += r->key.size;
    }
    std::lock_guard lock(mutex);
    done.insert(done.end(), local.begin(), local.end());
  };
  unsigned threads = options.threads != 0 ? options.threads
                                          : std::max(1u, std::thread::hardware_concurrency());
  threads = static_cast<unsigned>(std::min<std::size_t>(threads, std::max<std::size_t>(1, misses.size())));
  std::vector<std::thread> pool;
  for (unsigned i = 1; i < threads; ++i) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (first_error) return *first_error;

  for (const auto& [index, key] : done) {
    auto& j = jobs[index];
    j.file->key = key;  // the stat the digest belongs to (may be newer than the walk's)
    if (std::max(key.mtime_ns, key.ctime_ns) < options.racy_after_ns)
      cache.record(j.abs_path.string(), key, *j.digest);
  }
  return {};
}

}  // namespace envd::agent
