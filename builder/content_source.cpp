// Content sources for the layer writer: files on disk (O_NOFOLLOW) and blobs in the store, each
// streamed through a verifier that checks size as it goes and the digest at the end.
#include "builder/content_source.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

namespace envd::builder {

namespace {

constexpr std::size_t k_max_chunk = 256 * 1024;
constexpr std::size_t k_min_chunk = 4 * 1024;

// A buffer big enough to read a file of `size` bytes and notice one byte more in one call, but
// never above k_max_chunk: small files do not pay for a large (mmap-backed) allocation.
std::vector<char> chunk_buffer(std::uint64_t size) {
  std::uint64_t want = std::clamp<std::uint64_t>(size + 1, k_min_chunk, k_max_chunk);
  return std::vector<char>(static_cast<std::size_t>(want));
}

Result<void> check_regular(const LayerEntry& entry) {
  if (entry.type != snapshot::FileType::regular) {
    return Error(ErrorCode::invalid_argument, describe(entry) + ": not a regular file");
  }
  if (!entry.digest) {
    return Error(ErrorCode::invalid_argument, describe(entry) + ": no digest to verify against");
  }
  return {};
}

// Counts and hashes the bytes of one file. Growing past entry.size fails at once, so a file that
// grew since the snapshot is not read to its end; the digest can only be checked at the end.
class Verifier {
 public:
  explicit Verifier(const LayerEntry& entry) : m_entry(entry) {}

  Result<void> update(std::string_view chunk) {
    m_seen += chunk.size();
    if (m_seen > m_entry.size)
      return mismatch("more than " + std::to_string(m_entry.size) + " bytes");
    m_hash.update(chunk);
    return {};
  }

  Result<void> finish() {
    if (m_seen != m_entry.size) {
      return mismatch(std::to_string(m_seen) + " bytes, expected " + std::to_string(m_entry.size));
    }
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

// Opens entry.source as it was recorded: a regular file, not through a symlink. O_NONBLOCK keeps
// a FIFO planted at the path from blocking the open; it has no effect on regular files.
Result<int> open_source(const LayerEntry& entry) {
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
  return fd;
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
  ENVD_TRY(int raw_fd, open_source(entry));
  UniqueFd fd(raw_fd);
  // A hint only: whole-file sequential reads benefit from a larger readahead window.
  (void)::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  std::vector<char> buffer = chunk_buffer(entry.size);
  Verifier verifier(entry);
  for (;;) {
    ENVD_TRY(std::size_t n, read_some(fd.get(), buffer.data(), buffer.size(), entry.source));
    if (n == 0) break;
    std::string_view chunk(buffer.data(), n);
    ENVD_TRY_VOID(verifier.update(chunk));
    ENVD_TRY_VOID(sink(chunk));
  }
  return verifier.finish();
}

Result<std::string> FileContentSource::head(const LayerEntry& entry, std::size_t n) {
  ENVD_TRY_VOID(check_regular(entry));
  ENVD_TRY(int raw_fd, open_source(entry));
  UniqueFd fd(raw_fd);
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
  std::vector<char> buffer = chunk_buffer(entry.size);
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

}  // namespace envd::builder
