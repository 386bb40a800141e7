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

struct Hashed {
  oci::Digest digest;
  StatKey key;
};

// `walked` is the stat the walk saw. On the first attempt it stands in for the stat before the
// read: if the stat after the read equals it, nothing changed from the walk to the end of the
// read, so the bytes read are the content of that stat (one fstat less per file). Any difference
// falls back to fstat before and after.
Result<Hashed> hash_stable(const std::string& path, const StatKey& walked) {
  for (int attempt = 0; attempt < k_max_attempts; ++attempt) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOATIME);
    if (fd < 0 && errno == EPERM) fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return Error::from_errno("read " + path, errno);
    StatKey before = walked;
    if (attempt > 0) {
      struct stat st {};
      if (::fstat(fd, &st) != 0) {
        int err = errno;
        ::close(fd);
        return Error::from_errno("stat " + path, err);
      }
      if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        return Error(ErrorCode::failed_precondition, path + " is no longer a regular file");
      }
      before = stat_key(st);
    }
    // Reading exactly the size expected is enough: the fstat after the read proves it held.
    auto hashed = oci::sha256_fd(fd, path, before.size);
    struct stat after {};
    bool same = ::fstat(fd, &after) == 0 && S_ISREG(after.st_mode) && before == stat_key(after);
    ::close(fd);
    if (!hashed) return hashed.error();
    if (same && hashed->size == static_cast<std::uint64_t>(after.st_size))
      return Hashed{hashed->digest, stat_key(after)};
  }
  return Error(ErrorCode::failed_precondition,
               path + " kept changing while it was read (" + std::to_string(k_max_attempts) +
                   " attempts); stop the program writing it or exclude it with .envdignore");
}

}  // namespace

Result<void> hash_files(const std::filesystem::path& root, std::vector<WalkedFile>& files,
                        StatCache& cache, const HashOptions& options, HashProgress& progress) {
  const std::string root_str = root.string();
  ENVD_TRY(const StatCacheRoot* cached, cache.root(root_str));
  // Cache hits first, on this thread: lookups are cheap and leave only real work to the pool.
  std::vector<WalkedFile*> misses;
  std::size_t regular = 0;
  std::uint64_t bytes = 0, hit_files = 0, hit_bytes = 0;
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
      auto r = hash_stable(path, f.key);
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

  // Rewrite the root's entries only when they changed: a warm run then writes nothing.
  bool racy_left_out = false;
  std::vector<StatCacheRoot::Entry> entries;
  entries.reserve(regular);
  for (const auto& f : files) {
    if (f.type != snapshot::FileType::regular) continue;
    if (std::max(f.key.mtime_ns, f.key.ctime_ns) >= options.racy_after_ns) {
      racy_left_out = true;
      continue;
    }
    entries.push_back({f.path, f.key, *f.digest});
  }
  if (!misses.empty() || racy_left_out || entries.size() != cached->size()) {
    std::sort(entries.begin(), entries.end(),
              [](const auto& a, const auto& b) { return a.path < b.path; });
    cache.replace(root_str, entries);
  }
  return {};
}

}  // namespace envd::agent
