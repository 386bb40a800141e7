// FsBlobStore: ingest file -> hash while writing -> verify -> fchmod 0444 -> fsync -> rename into
// blobs/sha256 -> fsync the directory, after containerd's local content store
// (plugins/content/local/writer.go). A commit group runs each step for all its blobs before the
// next and makes them durable with one syncfs, so a batch pays for a few cache flushes instead of
// two per blob.
#include "envd/store/fs_blob_store.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "envd/util/atomic_file.hpp"
#include "envd/util/log.hpp"

namespace envd::store {
namespace {

constexpr std::size_t k_read_buffer_size = 64 * 1024;
constexpr std::size_t k_write_buffer_size = 64 * 1024;

// flock(LOCK_EX | extra_flags), retried on EINTR. Returns 0 or -1 with errno set.
int lock_exclusive(int fd, int extra_flags) {
  for (;;) {
    int rc = ::flock(fd, LOCK_EX | extra_flags);
    if (rc == 0 || errno != EINTR) return rc;
  }
}

// What destroying an uncommitted writer does with its ingest file.
enum class OnAbandon { discard, keep };

class FsBlobWriter : public BlobWriter {
 public:
  FsBlobWriter(int fd, std::filesystem::path ingest_path, std::filesystem::path blobs_dir,
               OnAbandon on_abandon = OnAbandon::discard, oci::Sha256 hash = {},
               std::uint64_t written = 0)
      : m_fd(fd),
        m_ingest_path(std::move(ingest_path)),
        m_blobs_dir(std::move(blobs_dir)),
        m_on_abandon(on_abandon),
        m_hash(std::move(hash)),
        m_written(written) {}
  ~FsBlobWriter() override {
    if (m_on_abandon == OnAbandon::keep && m_fd >= 0 && m_state == State::writing) {
      // The bytes stay for a later resume_write(), which hashes what the file holds: a failed
      // flush only leaves fewer of them. Closing drops the flock.
      (void)flush();
      ::close(m_fd);
      m_fd = -1;
    }
    discard();
  }
  FsBlobWriter(const FsBlobWriter&) = delete;
  FsBlobWriter& operator=(const FsBlobWriter&) = delete;

  Result<void> write(std::string_view data) override {
    if (m_fd < 0 || m_state != State::writing)
      return Error(ErrorCode::failed_precondition, "write to a finished blob writer");
    m_hash.update(data);
    m_written += data.size();
    // Request bodies arrive in small pieces (4 KiB from cpp-httplib); one write() per buffer
    // rather than per piece.
    if (m_buffer.size() + data.size() > k_write_buffer_size) ENVD_TRY_VOID(flush());
    if (data.size() >= k_write_buffer_size) return write_fully(data);
    if (m_buffer.capacity() == 0) m_buffer.reserve(k_write_buffer_size);
    m_buffer.insert(m_buffer.end(), data.begin(), data.end());
    return {};
  }

  std::uint64_t written() const override { return m_written; }

  Result<void> commit(const oci::Digest& expected,
                      std::optional<std::uint64_t> expected_size) override {
    if (m_fd < 0 || m_state != State::writing)
      return Error(ErrorCode::failed_precondition, "commit of a finished blob writer");
    ENVD_TRY(auto staged, stage(expected, expected_size));
    if (staged == Staged::present) return {};
    ENVD_TRY_VOID(sync());
    ENVD_TRY_VOID(publish());
    if (auto r = fsync_directory(m_blobs_dir); !r) {
      return r.error().with_context("commit " + expected.str());
    }
    return {};
  }

  // The steps of commit(), which FsCommitGroup runs for many writers at once.
  enum class Staged { pending, present };
  // Verifies the bytes against `expected` (and `expected_size`), writes out what is buffered and
  // makes the file read-only. present: a concurrent or earlier writer already published the
  // digest; the ingest file is gone. Errors as commit(), with the ingest file discarded.
  Result<Staged> stage(const oci::Digest& expected, std::optional<std::uint64_t> expected_size) {
    if (m_fd < 0 || m_state != State::writing)
      return Error(ErrorCode::failed_precondition, "commit of a finished blob writer");
    if (expected_size && *expected_size != m_written) {
      discard();
      return Error(ErrorCode::invalid_argument, "size mismatch for " + expected.str() +
                                                    ": expected " + std::to_string(*expected_size) +
                                                    " bytes, got " + std::to_string(m_written));
    }
    oci::Digest actual = m_hash.finish();
    if (actual != expected) {
      discard();
      return Error(ErrorCode::digest_mismatch,
                   "digest mismatch: expected " + expected.str() + ", got " + actual.str());
    }
    m_target = m_blobs_dir / std::string(expected.hex());
    struct stat st {};
    if (::lstat(m_target.c_str(), &st) == 0) {
      // Same digest, same bytes: a concurrent or earlier writer already published them.
      discard();
      return Staged::present;
    }
    ENVD_TRY_VOID(flush());
    std::vector<char>().swap(m_buffer);  // a group may hold many staged writers
    if (::fchmod(m_fd, 0444) != 0) return fail("fchmod");
    m_state = State::staged;
    return Staged::pending;
  }

  // Makes the staged file's bytes durable. On failure the ingest file is discarded.
  Result<void> sync() {
    assert(m_state == State::staged);
    if (::fsync(m_fd) != 0) return fail("fsync");
    m_state = State::synced;
    return {};
  }

  // For a staged file whose filesystem was synced (syncfs) since it was written: waits for any
  // writeback of it still in flight and reports the errors writing it back met (the file's own,
  // which syncfs may not attribute to it), without another cache flush. On failure the ingest
  // file is discarded.
  Result<void> confirm_synced() {
    assert(m_state == State::staged);
    if (::sync_file_range(
            m_fd, 0, 0,
            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) != 0)
      return fail("write back");
    m_state = State::synced;
    return {};
  }

  // Renames the synced file to its digest's name (durable once its directory is fsynced) and
  // closes it. On failure the ingest file is discarded.
  Result<void> publish() {
    assert(m_state == State::synced);
    // rename() replaces a blob another writer published since stage() looked; both hold the same
    // verified bytes, and readers keep the inode they opened, so this race is harmless.
    if (::rename(m_ingest_path.c_str(), m_target.c_str()) != 0) return fail("rename into place");
    // Closing after the rename keeps the flock until the ingest name is gone (see create()).
    ::close(m_fd);
    m_fd = -1;
    m_state = State::published;
    return {};
  }

  int fd() const { return m_fd; }
  const std::filesystem::path& blobs_dir() const { return m_blobs_dir; }

 private:
  enum class State { writing, staged, synced, published };

  Result<void> flush() {
    if (m_buffer.empty()) return {};
    auto r = write_fully(std::string_view(m_buffer.data(), m_buffer.size()));
    m_buffer.clear();
    return r;
  }

  Result<void> write_fully(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = ::write(m_fd, data.data(), data.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        auto e = Error::from_errno("write " + m_ingest_path.string(), errno);
        // The file's content is now unknown; a retry could only commit the wrong bytes.
        discard();
        return e;
      }
      data.remove_prefix(static_cast<std::size_t>(n));
    }
    return {};
  }

  // The error for a failed system call `what` (errno), after discarding the ingest file.
  Error fail(std::string_view what) {
    auto e = Error::from_errno(std::string(what) + " " + m_ingest_path.string(), errno);
    discard();
    return e;
  }

  void discard() {
    if (m_fd < 0) return;
    ::unlink(m_ingest_path.c_str());
    ::close(m_fd);
    m_fd = -1;
  }

  int m_fd;
  std::filesystem::path m_ingest_path;
  std::filesystem::path m_blobs_dir;
  OnAbandon m_on_abandon;
  oci::Sha256 m_hash;
  std::uint64_t m_written = 0;
  std::vector<char> m_buffer;      // bytes written but not yet passed to write(2)
  std::filesystem::path m_target;  // blobs_dir/<hex>, once staged
  State m_state = State::writing;
};

// Commits a group of writers with one round of durability. fsync() of each file would cost a
// device cache flush per file (ext4 issues one even when the journal already committed the inode),
// which is what made batch uploads slow; instead one syncfs() writes back and commits every staged
// file (and whatever else is dirty on that filesystem) with one journal commit and one flush. It
// reports writeback errors since the file it is given was opened (Linux >= 5.8); each file's own
// errors are then read with sync_file_range(), which waits but flushes nothing. Only then are the
// files renamed into place, and each blobs directory touched is fsynced once.
class FsCommitGroup : public BlobCommitGroup {
 public:
  Result<void> add(std::unique_ptr<BlobWriter> writer, const oci::Digest& expected,
                   std::optional<std::uint64_t> expected_size) override {
    auto* fs_writer = dynamic_cast<FsBlobWriter*>(writer.get());
    if (fs_writer == nullptr) return writer->commit(expected, expected_size);
    auto staged = fs_writer->stage(expected, expected_size);
    if (!staged) return staged.error();
    // Also for content already present: its name may come from a concurrent group that has not
    // fsynced the directory yet, and this group must not report it stored before that.
    touch(fs_writer->blobs_dir());
    if (*staged == FsBlobWriter::Staged::pending) {
      writer.release();
      m_staged.emplace_back(fs_writer);
      m_digests.push_back(expected);
    }
    return {};
  }

  Result<void> commit() override {
    // Whatever happens, the group is empty afterwards; writers not published discard their files.
    auto staged = std::exchange(m_staged, {});
    auto digests = std::exchange(m_digests, {});
    auto dirs = std::exchange(m_dirs, {});
    auto context = [&](std::size_t i) { return "commit " + digests[i].str(); };
    if (!staged.empty()) {
      // Each store's ingest and blobs directories share a filesystem (rename needs it): one
      // syncfs per blobs directory. The group's first writer of it was opened before its bytes.
      bool fallback = false;
      std::vector<std::filesystem::path> synced;
      for (std::size_t i = 0; i < staged.size() && !fallback; ++i) {
        const auto& dir = staged[i]->blobs_dir();
        if (std::find(synced.begin(), synced.end(), dir) != synced.end()) continue;
        synced.push_back(dir);
        if (::syncfs(staged[i]->fd()) == 0) continue;
        if (errno != ENOSYS)
          return Error::from_errno("syncfs " + dir.string(), errno).with_context(context(i));
        fallback = true;  // no syncfs (an old kernel, a seccomp filter): fsync each file
      }
      for (std::size_t i = 0; i < staged.size(); ++i) {
        auto r = fallback ? staged[i]->sync() : staged[i]->confirm_synced();
        if (!r) return r.error().with_context(context(i));
      }
      for (std::size_t i = 0; i < staged.size(); ++i)
        if (auto r = staged[i]->publish(); !r) return r.error().with_context(context(i));
    }
    for (const auto& dir : dirs)
      if (auto r = fsync_directory(dir); !r)
        return r.error().with_context("commit " + std::to_string(staged.size()) + " blobs");
    return {};
  }

 private:
  void touch(const std::filesystem::path& dir) {
    if (std::find(m_dirs.begin(), m_dirs.end(), dir) == m_dirs.end()) m_dirs.push_back(dir);
  }

  std::vector<std::unique_ptr<FsBlobWriter>> m_staged;
  std::vector<oci::Digest> m_digests;  // m_staged's, for error context
  std::vector<std::filesystem::path> m_dirs;
};

class FsBlobReader : public BlobReader {
 public:
  FsBlobReader(int fd, std::uint64_t size, std::filesystem::path path)
      : m_fd(fd), m_size(size), m_path(std::move(path)) {}
  ~FsBlobReader() override { ::close(m_fd); }
  FsBlobReader(const FsBlobReader&) = delete;
  FsBlobReader& operator=(const FsBlobReader&) = delete;

  Result<std::size_t> read(char* buffer, std::size_t size) override {
    if (m_begin == m_end) {
      // Large requests bypass the buffer: copying through it would only cost time.
      if (size >= m_buffer.size()) return read_some(buffer, size);
      auto n = read_some(m_buffer.data(), m_buffer.size());
      if (!n) return n;
      m_begin = 0;
      m_end = *n;
    }
    std::size_t n = std::min(size, m_end - m_begin);
    std::memcpy(buffer, m_buffer.data() + m_begin, n);
    m_begin += n;
    return n;
  }

  std::uint64_t size() const override { return m_size; }

 private:
  Result<std::size_t> read_some(char* buffer, std::size_t size) {
    for (;;) {
      ssize_t n = ::read(m_fd, buffer, size);
      if (n >= 0) return static_cast<std::size_t>(n);
      if (errno != EINTR) return Error::from_errno("read " + m_path.string(), errno);
    }
  }

  int m_fd;
  std::uint64_t m_size;
  std::filesystem::path m_path;
  std::vector<char> m_buffer = std::vector<char>(k_read_buffer_size);
  std::size_t m_begin = 0;
  std::size_t m_end = 0;
};

// Removes every ingest file no live writer holds. A writer flock()s its file for its whole life,
// so a file we can lock belongs to a writer that died. We unlink while holding the lock; a writer
// that created the file but had not yet locked it sees st_nlink == 0 and starts over.
Result<void> remove_stale_ingest(const std::filesystem::path& ingest_dir) {
  DIR* dir = ::opendir(ingest_dir.c_str());
  if (dir == nullptr) return Error::from_errno("open directory " + ingest_dir.string(), errno);
  std::vector<std::string> names;
  errno = 0;
  while (dirent* entry = ::readdir(dir)) {
    std::string_view name = entry->d_name;
    if (name != "." && name != "..") names.emplace_back(name);
    errno = 0;
  }
  int err = errno;
  ::closedir(dir);
  if (err != 0) return Error::from_errno("read directory " + ingest_dir.string(), err);
  for (const auto& name : names) {
    std::filesystem::path path = ingest_dir / name;
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) {
      if (errno == ENOENT) continue;  // committed or discarded meanwhile
      // A symlink or something unopenable is not a writer's file: nobody can hold it.
      if (errno != ELOOP) return Error::from_errno("open stale ingest " + path.string(), errno);
    } else {
      struct stat st {};
      bool is_dir = ::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
      if (is_dir || lock_exclusive(fd, LOCK_NB) != 0) {
        ::close(fd);  // a directory (not ours to delete) or a live writer's file
        continue;
      }
    }
    int rc = ::unlink(path.c_str());
    int unlink_err = errno;
    if (fd >= 0) ::close(fd);
    if (rc != 0 && unlink_err != ENOENT) {
      return Error::from_errno("remove stale ingest " + path.string(), unlink_err);
    }
    if (rc == 0) log::info("store", "removed stale ingest file", {{"path", path.string()}});
  }
  return {};
}

}  // namespace

FsBlobStore::FsBlobStore(std::filesystem::path root)
    : m_root(std::move(root)),
      m_blobs_dir(m_root / "blobs" / "sha256"),
      m_ingest_dir(m_root / "ingest"),
      m_resume_dir(m_root / "resume") {}

Result<std::unique_ptr<FsBlobStore>> FsBlobStore::create(const std::filesystem::path& root) {
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(root, ec);
  if (ec) return Error::from_errno("resolve store root " + root.string(), ec.value());
  std::unique_ptr<FsBlobStore> store(new FsBlobStore(abs.lexically_normal()));
  for (const auto& dir : {store->m_blobs_dir, store->m_ingest_dir}) {
    std::filesystem::create_directories(dir, ec);
    if (ec) return Error::from_errno("create directory " + dir.string(), ec.value());
  }
  if (auto r = remove_stale_ingest(store->m_ingest_dir); !r) {
    return r.error().with_context("open blob store " + store->m_root.string());
  }
  return store;
}

bool FsBlobStore::contains(const oci::Digest& digest) const {
  struct stat st {};
  return ::lstat(path_of(digest)->c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

Result<std::uint64_t> FsBlobStore::size(const oci::Digest& digest) const {
  auto path = *path_of(digest);
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0)
    return Error::from_errno("stat blob " + path.string(), errno);
  if (!S_ISREG(st.st_mode)) return Error(ErrorCode::io, "blob " + path.string() + " is not a file");
  return static_cast<std::uint64_t>(st.st_size);
}

Result<std::unique_ptr<BlobWriter>> FsBlobStore::begin_write() {
  // A name collision (EEXIST) or losing a race with create()'s cleanup (st_nlink == 0) is retried
  // with a fresh name; either happening repeatedly means something else is wrong.
  for (int attempt = 0; attempt < 16; ++attempt) {
    std::filesystem::path path = m_ingest_dir / random_name();
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
      if (errno == EEXIST) continue;
      return Error::from_errno("create ingest file " + path.string(), errno);
    }
    struct stat st {};
    if (lock_exclusive(fd, 0) != 0 || ::fstat(fd, &st) != 0) {
      auto e = Error::from_errno("lock ingest file " + path.string(), errno);
      ::unlink(path.c_str());
      ::close(fd);
      return e;
    }
    if (st.st_nlink == 0) {
      ::close(fd);
      continue;
    }
    return std::unique_ptr<BlobWriter>(std::make_unique<FsBlobWriter>(fd, path, m_blobs_dir));
  }
  return Error(ErrorCode::io, "create ingest file in " + m_ingest_dir.string() + ": no free name");
}

std::unique_ptr<BlobCommitGroup> FsBlobStore::begin_group() {
  return std::make_unique<FsCommitGroup>();
}

Result<std::unique_ptr<BlobReader>> FsBlobStore::open(const oci::Digest& digest) const {
  auto path = *path_of(digest);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return Error::from_errno("open blob " + path.string(), errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    auto e = Error::from_errno("stat blob " + path.string(), errno);
    ::close(fd);
    return e;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Error(ErrorCode::io, "blob " + path.string() + " is not a file");
  }
  return std::unique_ptr<BlobReader>(
      std::make_unique<FsBlobReader>(fd, static_cast<std::uint64_t>(st.st_size), path));
}

Result<void> FsBlobStore::remove(const oci::Digest& digest) {
  auto path = *path_of(digest);
  // No directory fsync: a removal lost in a crash leaves a valid blob behind, never a bad one.
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return Error::from_errno("remove blob " + path.string(), errno);
  }
  return {};
}

Result<std::vector<oci::Digest>> FsBlobStore::list() const {
  DIR* dir = ::opendir(m_blobs_dir.c_str());
  if (dir == nullptr) return Error::from_errno("open directory " + m_blobs_dir.string(), errno);
  std::vector<oci::Digest> out;
  errno = 0;
  while (dirent* entry = ::readdir(dir)) {
    // Ingest never happens here, so anything not named like a digest is foreign: skip it.
    if (auto d = oci::Digest::parse(std::string("sha256:") + entry->d_name)) out.push_back(*d);
    errno = 0;
  }
  int err = errno;
  ::closedir(dir);
  if (err != 0) return Error::from_errno("read directory " + m_blobs_dir.string(), err);
  return out;
}

std::optional<std::filesystem::path> FsBlobStore::path_of(const oci::Digest& digest) const {
  // Safe as a path component: Digest guarantees 64 lowercase hex digits.
  return m_blobs_dir / std::string(digest.hex());
}

Result<std::unique_ptr<BlobWriter>> FsBlobStore::resume_write(const oci::Digest& digest,
                                                              const Replay& replay) {
  // Safe as a path component: Digest guarantees 64 lowercase hex digits.
  std::filesystem::path path = m_resume_dir / std::string(digest.hex());
  std::error_code ec;
  std::filesystem::create_directories(m_resume_dir, ec);  // made on first use
  if (ec) return Error::from_errno("create directory " + m_resume_dir.string(), ec.value());
  for (int attempt = 0; attempt < 16; ++attempt) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return Error::from_errno("open resumable ingest " + path.string(), errno);
    struct stat st {};
    if (lock_exclusive(fd, 0) != 0 || ::fstat(fd, &st) != 0) {
      auto e = Error::from_errno("lock resumable ingest " + path.string(), errno);
      ::close(fd);
      return e;
    }
    if (st.st_nlink == 0) {  // committed or discarded while we waited for the lock: start over
      ::close(fd);
      continue;
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      return Error(ErrorCode::io, "resumable ingest " + path.string() + " is not a file");
    }
    // Hash (and replay) what an earlier writer left; the file offset ends after it.
    oci::Sha256 hash;
    std::uint64_t held = 0;
    std::vector<char> buffer(k_read_buffer_size);
    for (;;) {
      ssize_t n = ::read(fd, buffer.data(), buffer.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        auto e = Error::from_errno("read resumable ingest " + path.string(), errno);
        ::close(fd);
        return e;
      }
      if (n == 0) break;
      std::string_view data(buffer.data(), static_cast<std::size_t>(n));
      hash.update(data);
      held += data.size();
      if (replay) {
        if (auto r = replay(data); !r) {
          ::close(fd);
          return r.error();
        }
      }
    }
    return std::unique_ptr<BlobWriter>(std::make_unique<FsBlobWriter>(
        fd, path, m_blobs_dir, OnAbandon::keep, std::move(hash), held));
  }
  return Error(ErrorCode::io, "open resumable ingest " + path.string() + ": removed repeatedly");
}

Result<void> FsBlobStore::discard_resumable(const oci::Digest& digest) {
  std::filesystem::path path = m_resume_dir / std::string(digest.hex());
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return Error::from_errno("remove resumable ingest " + path.string(), errno);
  }
  return {};
}

Result<std::vector<oci::Digest>> FsBlobStore::list_resumable() const {
  std::vector<oci::Digest> out;
  DIR* dir = ::opendir(m_resume_dir.c_str());
  if (dir == nullptr && errno == ENOENT) return out;  // no resumable write ever started
  if (dir == nullptr) return Error::from_errno("open directory " + m_resume_dir.string(), errno);
  errno = 0;
  while (dirent* entry = ::readdir(dir)) {
    if (auto d = oci::Digest::parse(std::string("sha256:") + entry->d_name)) out.push_back(*d);
    errno = 0;
  }
  int err = errno;
  ::closedir(dir);
  if (err != 0) return Error::from_errno("read directory " + m_resume_dir.string(), err);
  return out;
}

}  // namespace envd::store
