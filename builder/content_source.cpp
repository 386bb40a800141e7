// Content sources for the layer writer: files on disk (O_NOFOLLOW) and blobs in the store, each
// streamed through a verifier that checks size as it goes and the digest at the end.
#include "builder/content_source.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>

namespace envd::builder {

namespace {

constexpr std::size_t k_max_chunk = 256 * 1024;

// The buffer a read streams through: one per thread, allocated once and never zero-filled, instead
// of one per file (a build reads tens of thousands of files). A sink that reads another file on
// the same thread gets a buffer of its own.
class ChunkBuffer {
 public:
  ChunkBuffer() {
    thread_local std::unique_ptr<char[]> t_buffer;
    thread_local bool t_in_use = false;
    if (t_in_use) {
      m_own.reset(new char[k_max_chunk]);
      m_data = m_own.get();
      return;
    }
    if (!t_buffer) t_buffer.reset(new char[k_max_chunk]);
    m_data = t_buffer.get();
    m_in_use = &t_in_use;
    t_in_use = true;
  }
  ~ChunkBuffer() {
    if (m_in_use) *m_in_use = false;
  }
  ChunkBuffer(const ChunkBuffer&) = delete;
  ChunkBuffer& operator=(const ChunkBuffer&) = delete;

  char* data() const { return m_data; }
  static constexpr std::size_t size() { return k_max_chunk; }

 private:
  char* m_data = nullptr;
  bool* m_in_use = nullptr;
  std::unique_ptr<char[]> m_own;
};

Result<void> check_regular(const LayerEntry& entry) {
  if (entry.type != snapshot::FileType::regular) {
    return Error(ErrorCode::invalid_argument, describe(entry) + ": not a regular file");
  }
  if (!entry.digest) {
    return Error(ErrorCode::invalid_argument, describe(entry) + ": no digest to verify against");
  }
  return {};
}

// Whether a Verifier hashes the bytes or only counts them (content vouched for by its stat).
enum class Hashing { on, off };

// Counts and hashes the bytes of one file. Growing past entry.size fails at once, so a file that
// grew since the snapshot is not read to its end; the digest can only be checked at the end.
class Verifier {
 public:
  explicit Verifier(const LayerEntry& entry, Hashing hashing = Hashing::on)
      : m_entry(entry), m_hashing(hashing) {}

  Result<void> update(std::string_view chunk) {
    m_seen += chunk.size();
    if (m_seen > m_entry.size)
      return mismatch("more than " + std::to_string(m_entry.size) + " bytes");
    if (m_hashing == Hashing::on) m_hash.update(chunk);
    return {};
  }

  Result<void> finish() {
    if (m_seen != m_entry.size) {
      return mismatch(std::to_string(m_seen) + " bytes, expected " + std::to_string(m_entry.size));
    }
    if (m_hashing == Hashing::off) return {};
    oci::Digest actual = m_hash.finish();
    if (actual != *m_entry.digest) {
      return mismatch("content is " + actual.str() + ", expected " + m_entry.digest->str());
    }
    return {};
  }

 private:
  Error mismatch(const std::string& what) const {
    return Error(ErrorCode::digest_mismatch, describe(m_entry) + ": digest mismatch: " + what);
  }

  const LayerEntry& m_entry;
  Hashing m_hashing;
  oci::Sha256 m_hash;
  std::uint64_t m_seen = 0;
};

class UniqueFd {
 public:
  explicit UniqueFd(int fd) : m_fd(fd) {}
  ~UniqueFd() {
    if (m_fd >= 0) ::close(m_fd);
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  int get() const { return m_fd; }

 private:
  int m_fd;
};

struct OpenedSource {
  int fd = -1;
  StatKey stat;  // when opened
};

// Opens entry.source as it was recorded: a regular file, not through a symlink. O_NONBLOCK keeps
// a FIFO planted at the path from blocking the open; it has no effect on regular files.
Result<OpenedSource> open_source(const LayerEntry& entry) {
  if (entry.source.empty() || entry.source.front() != '/') {
    return Error(ErrorCode::invalid_argument,
                 describe(entry) + ": source path must be absolute, got '" + entry.source + "'");
  }
  int fd = ::open(entry.source.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    int err = errno;
    if (err == ELOOP) {
      return Error(ErrorCode::failed_precondition,
                   describe(entry) + ": source is now a symlink, the snapshot recorded a file");
    }
    return Error::from_errno("open " + entry.source + " for layer file " + entry.path, err);
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return Error::from_errno("stat " + entry.source, err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Error(ErrorCode::failed_precondition,
                 describe(entry) + ": source is no longer a regular file");
  }
  return OpenedSource{fd, stat_key(st)};
}

// read(2) retrying on EINTR. Returns 0 at the end.
Result<std::size_t> read_some(int fd, char* buffer, std::size_t size, const std::string& path) {
  for (;;) {
    ssize_t n = ::read(fd, buffer, size);
    if (n >= 0) return static_cast<std::size_t>(n);
    if (errno != EINTR) return Error::from_errno("read " + path, errno);
  }
}

}  // namespace

std::string describe(const LayerEntry& entry) {
  std::string text = "layer file " + entry.path;
  if (!entry.source.empty()) text += " (from " + entry.source + ")";
  return text;
}

Result<void> FileContentSource::read(const LayerEntry& entry, const ContentSink& sink) {
  ENVD_TRY_VOID(check_regular(entry));
  ENVD_TRY(OpenedSource opened, open_source(entry));
  UniqueFd fd(opened.fd);
  // A hint only: whole-file sequential reads benefit from a larger readahead window. Files that
  // fit in one read gain nothing from it but a system call.
  if (entry.size > ChunkBuffer::size())
    (void)::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  // When the file has the recorded size, read exactly that many bytes: no read(2) just to see the
  // end. Should it grow meanwhile, what goes into the layer is still the recorded content, which
  // the digest proves. Otherwise read to the end, so the mismatch names what was found.
  const bool recorded_size = opened.stat.size == entry.size;
  // A file vouched for is not hashed again: the digest was computed from it at this very stat.
  const Hashing hashing =
      recorded_size && m_vouch && m_vouch(entry, opened.stat) ? Hashing::off : Hashing::on;
  ChunkBuffer buffer;
  Verifier verifier(entry, hashing);
  for (std::uint64_t got = 0;;) {
    std::size_t want = buffer.size();
    if (recorded_size) {
      if (got == entry.size) break;
      want = static_cast<std::size_t>(std::min<std::uint64_t>(want, entry.size - got));
    }
    ENVD_TRY(std::size_t n, read_some(fd.get(), buffer.data(), want, entry.source));
    if (n == 0) break;
    got += n;
    std::string_view chunk(buffer.data(), n);
    ENVD_TRY_VOID(verifier.update(chunk));
    ENVD_TRY_VOID(sink(chunk));
  }
  if (hashing == Hashing::off) {
    // Unhashed bytes are proven only if the file kept that stat while it was read: a write
    // meanwhile moves its ctime (to now, later than any stat the vouch trusts).
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return Error::from_errno("stat " + entry.source, errno);
    if (!(stat_key(st) == opened.stat)) {
      return Error(ErrorCode::digest_mismatch,
                   describe(entry) + ": digest mismatch: the file changed while it was read");
    }
  }
  return verifier.finish();
}

Result<std::string> FileContentSource::head(const LayerEntry& entry, std::size_t n) {
  ENVD_TRY_VOID(check_regular(entry));
  ENVD_TRY(OpenedSource opened, open_source(entry));
  UniqueFd fd(opened.fd);
  std::string out(n, '\0');
  std::size_t got = 0;
  while (got < n) {
    ENVD_TRY(std::size_t r, read_some(fd.get(), out.data() + got, n - got, entry.source));
    if (r == 0) break;
    got += r;
  }
  out.resize(got);
  return out;
}

Result<void> BlobContentSource::read(const LayerEntry& entry, const ContentSink& sink) {
  ENVD_TRY_VOID(check_regular(entry));
  auto reader = m_store.open(*entry.digest);
  if (!reader) return reader.error().with_context(describe(entry));
  ChunkBuffer buffer;
  Verifier verifier(entry);
  for (;;) {
    auto n = (*reader)->read(buffer.data(), buffer.size());
    if (!n) return n.error().with_context(describe(entry));
    if (*n == 0) break;
    std::string_view chunk(buffer.data(), *n);
    ENVD_TRY_VOID(verifier.update(chunk));
    ENVD_TRY_VOID(sink(chunk));
  }
  return verifier.finish();
}

Result<std::string> BlobContentSource::head(const LayerEntry& entry, std::size_t n) {
  ENVD_TRY_VOID(check_regular(entry));
  auto reader = m_store.open(*entry.digest);
  if (!reader) return reader.error().with_context(describe(entry));
  std::string out(n, '\0');
  std::size_t got = 0;
  while (got < n) {
    auto r = (*reader)->read(out.data() + got, n - got);
    if (!r) return r.error().with_context(describe(entry));
    if (*r == 0) break;
    got += *r;
  }
  out.resize(got);
  return out;
}

Result<void> MixedContentSource::read(const LayerEntry& entry, const ContentSink& sink) {
  if (entry.source.empty()) return m_blobs.read(entry, sink);
  return m_files.read(entry, sink);
}

Result<std::string> MixedContentSource::head(const LayerEntry& entry, std::size_t n) {
  if (entry.source.empty()) return m_blobs.head(entry, n);
  return m_files.head(entry, n);
}

LayerEntry MemoryContentSource::entry(std::string path, std::uint32_t mode) const {
  LayerEntry e;
  e.path = std::move(path);
  e.type = snapshot::FileType::regular;
  e.mode = mode;
  e.size = m_data.size();
  e.digest = m_digest;
  return e;
}

Result<void> MemoryContentSource::check(const LayerEntry& entry) const {
  ENVD_TRY_VOID(check_regular(entry));
  if (*entry.digest != m_digest || entry.size != m_data.size()) {
    return Error(ErrorCode::not_found, describe(entry) + ": content " + entry.digest->str() +
                                           " is not the buffer this source holds");
  }
  return {};
}

Result<void> MemoryContentSource::read(const LayerEntry& entry, const ContentSink& sink) {
  ENVD_TRY_VOID(check(entry));
  for (std::size_t at = 0; at < m_data.size(); at += k_max_chunk) {
    ENVD_TRY_VOID(sink(m_data.substr(at, k_max_chunk)));
  }
  return {};
}

Result<std::string> MemoryContentSource::head(const LayerEntry& entry, std::size_t n) {
  ENVD_TRY_VOID(check(entry));
  return std::string(m_data.substr(0, n));
}

}  // namespace envd::builder
