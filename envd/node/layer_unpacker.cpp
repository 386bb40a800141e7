// Safe streaming layer unpack. The compressed bytes are decoded and hashed for the diff_id by
// StreamDecoder (layer_stream.hpp) on their way into libarchive, which only parses tar headers;
// every entry is then written by our own code relative to directory fds opened with O_NOFOLLOW
// (DirCursor, safe_dir.hpp), never through a path string the kernel resolves. No chdir and no
// umask change: a threaded daemon shares both.
// Layer format: https://github.com/opencontainers/image-spec/blob/v1.1.0/layer.md
#include "envd/node/layer_unpacker.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <locale.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <map>
#include <optional>
#include <system_error>
#include <thread>
#include <vector>

#include "envd/node/layer_stream.hpp"
#include "envd/node/safe_dir.hpp"
#include "envd/util/log.hpp"

namespace envd::node {

namespace {

using detail::ChunkQueue;
using detail::ChunkSource;
using detail::FileSource;
using detail::StreamDecoder;

constexpr std::size_t k_queue_bytes = 8u << 20;  // compressed bytes waiting for the unpack thread
constexpr std::string_view k_component = "node.unpack";
constexpr std::string_view k_whiteout_prefix = ".wh.";
constexpr std::string_view k_meta_prefix = ".wh..wh.";
constexpr std::string_view k_opaque = ".wh..wh..opq";

// ---- Names --------------------------------------------------------------------------------------

// A name as it may appear in a message: control characters escaped.
std::string printable(std::string_view name) {
  std::string out;
  for (unsigned char c : name) {
    if (c < 0x20 || c == 0x7f) {
      static constexpr char k_hex[] = "0123456789abcdef";
      out += "\\x";
      out += k_hex[c >> 4];
      out += k_hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

// Splits a tar name into components taken relative to the layer root: leading "/" and "." and
// empty components dropped, ".." refused, lengths checked.
Result<std::vector<std::string>> components(std::string_view name, const UnpackLimits& limits) {
  if (name.size() > limits.max_path_length)
    return unexpected(ErrorCode::invalid_argument,
                      "name longer than " + std::to_string(limits.max_path_length) + " bytes");
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= name.size()) {
    std::size_t slash = name.find('/', start);
    if (slash == std::string_view::npos) slash = name.size();
    std::string_view part = name.substr(start, slash - start);
    start = slash + 1;
    if (part.empty() || part == ".") continue;
    if (part == "..") return unexpected(ErrorCode::invalid_argument, "name has a \"..\" component");
    if (part.size() > limits.max_component_length)
      return unexpected(
          ErrorCode::invalid_argument,
          "name component longer than " + std::to_string(limits.max_component_length) + " bytes");
    out.emplace_back(part);
  }
  return out;
}

std::string joined(const std::vector<std::string>& path) {
  std::string out;
  for (const std::string& c : path) out += (out.empty() ? "" : "/") + c;
  return out;
}

// Whether a symlink at `dir_depth` components below the root with target `target` points
// outside the root when read lexically (an absolute target is outside for the host).
bool target_escapes(std::size_t dir_depth, std::string_view target) {
  if (target.starts_with('/')) return true;
  std::int64_t depth = static_cast<std::int64_t>(dir_depth);
  std::size_t start = 0;
  while (start <= target.size()) {
    std::size_t slash = target.find('/', start);
    if (slash == std::string_view::npos) slash = target.size();
    std::string_view part = target.substr(start, slash - start);
    start = slash + 1;
    if (part == "..") {
      if (--depth < 0) return true;
    } else if (!part.empty() && part != ".") {
      ++depth;
    }
  }
  return false;
}

// Pins this thread to a UTF-8 locale while libarchive converts pax (UTF-8) names, so that names
// come out as the bytes the layer holds. uselocale is per thread: nothing global changes.
class Utf8Locale {
 public:
  Utf8Locale() : m_locale(::newlocale(LC_ALL_MASK, "C.UTF-8", nullptr)) {
    if (m_locale) m_previous = ::uselocale(m_locale);
  }
  ~Utf8Locale() {
    if (m_locale) {
      ::uselocale(m_previous);
      ::freelocale(m_locale);
    }
  }
  Utf8Locale(const Utf8Locale&) = delete;
  Utf8Locale& operator=(const Utf8Locale&) = delete;

 private:
  locale_t m_locale;
  locale_t m_previous = nullptr;
};

// A file being written: close() is checked on success (a failed close can mean lost data), the
// destructor closes on the error paths.
class OwnedFd {
 public:
  explicit OwnedFd(int fd) : m_fd(fd) {}
  ~OwnedFd() {
    if (m_fd >= 0) ::close(m_fd);
  }
  OwnedFd(OwnedFd&& other) noexcept : m_fd(std::exchange(other.m_fd, -1)) {}
  OwnedFd& operator=(OwnedFd&&) = delete;
  OwnedFd(const OwnedFd&) = delete;
  OwnedFd& operator=(const OwnedFd&) = delete;
  int get() const { return m_fd; }
  bool close() { return ::close(std::exchange(m_fd, -1)) == 0; }

 private:
  int m_fd;
};

// ---- The unpack ---------------------------------------------------------------------------------

// The process's umask, read once without changing it (umask(2) cannot read it alone; Linux 4.7+
// shows it in /proc/self/status). Unknown: every bit, so callers always fchmod().
mode_t process_umask() {
  static const mode_t mask = [] {
    std::ifstream in("/proc/self/status");
    for (std::string line; std::getline(in, line);) {
      if (line.starts_with("Umask:"))
        return static_cast<mode_t>(std::stoul(line.substr(6), nullptr, 8));
    }
    return static_cast<mode_t>(0777);
  }();
  return mask;
}

struct DirMeta {
  mode_t mode;
  struct timespec mtime;
};

class Unpack {
 public:
  Unpack(int root_fd, LayerCompression compression, ChunkSource& source, const UnpackLimits& limits,
         std::string what)
      : m_root(root_fd),
        m_limits(limits),
        m_what(std::move(what)),
        m_compression(compression),
        m_source(source),
        m_cursor(root_fd) {}

  Result<UnpackStats> run(const oci::Digest& expected_diff_id) {
    auto stats = run_inner(expected_diff_id);
    if (!stats) return unexpected(stats.error().with_context(m_what));
    return stats;
  }

 private:
  // File data plus, per entry, headers, pax records and padding; plus the final record.
  static std::uint64_t stream_limit(const UnpackLimits& l) {
    return l.max_bytes + l.max_entries * (16384 + 2 * l.max_path_length) + (1u << 20);
  }

  static la_ssize_t read_callback(struct archive* a, void* client, const void** buffer) {
    auto* self = static_cast<Unpack*>(client);
    auto r = self->m_decoder->read();
    if (!r) {
      self->m_stream_error = r.error();
      ::archive_set_error(a, EIO, "%s", r.error().message().c_str());
      return -1;
    }
    *buffer = r->data();
    return static_cast<la_ssize_t>(r->size());
  }

  // A libarchive failure: the stream's own error when the stream failed, else libarchive's.
  Error archive_failure(struct archive* a) const {
    if (m_stream_error) return *m_stream_error;
    const char* msg = ::archive_error_string(a);
    return Error(ErrorCode::invalid_argument, std::string("tar: ") + (msg ? msg : "read failed"));
  }
  Error entry_error(ErrorCode code, const std::string& msg) const {
    return Error(code, "entry \"" + printable(m_entry) + "\": " + msg);
  }
  Error in_entry(const Error& e) const {
    return e.with_context("entry \"" + printable(m_entry) + "\"");
  }

  Result<UnpackStats> run_inner(const oci::Digest& expected_diff_id) {
    Utf8Locale locale;
    ENVD_TRY(StreamDecoder decoder,
             StreamDecoder::create(m_compression, m_source, stream_limit(m_limits)));
    m_decoder.emplace(std::move(decoder));
    std::unique_ptr<struct archive, decltype(&::archive_read_free)> archive(::archive_read_new(),
                                                                            &::archive_read_free);
    struct archive* a = archive.get();
    if (a == nullptr || ::archive_read_support_format_tar(a) != ARCHIVE_OK ||
        ::archive_read_support_filter_none(a) != ARCHIVE_OK)
      return unexpected(ErrorCode::internal, "libarchive setup failed");
    if (::archive_read_open(a, this, nullptr, &Unpack::read_callback, nullptr) != ARCHIVE_OK)
      return unexpected(archive_failure(a));
    for (;;) {
      struct archive_entry* ae = nullptr;
      int rc = ::archive_read_next_header(a, &ae);
      if (rc == ARCHIVE_EOF) break;
      if (rc < ARCHIVE_WARN) {
        Error e = archive_failure(a);
        return unexpected(
            m_entry.empty() ? e : e.with_context("after entry \"" + printable(m_entry) + "\""));
      }
      const char* name = ::archive_entry_pathname(ae);
      m_entry = name != nullptr ? name : "";
      if (++m_stats.entries > m_limits.max_entries)
        return unexpected(
            entry_error(ErrorCode::invalid_argument,
                        "more than " + std::to_string(m_limits.max_entries) + " entries"));
      ENVD_TRY_VOID(entry(a, ae));
    }
    ENVD_TRY_VOID(m_decoder->drain());
    m_stats.diff_id = m_decoder->finish();
    if (m_stats.diff_id != expected_diff_id)
      return unexpected(ErrorCode::digest_mismatch,
                        "uncompressed layer is " + m_stats.diff_id.str() + ", expected diff_id " +
                            expected_diff_id.str());
    ENVD_TRY_VOID(apply_dir_meta());
    return m_stats;
  }

  Result<void> entry(struct archive* a, struct archive_entry* ae) {
    if (m_entry.empty()) return unexpected(entry_error(ErrorCode::invalid_argument, "empty name"));
    auto parsed = components(m_entry, m_limits);
    if (!parsed) return unexpected(in_entry(parsed.error()));
    std::vector<std::string> path = std::move(*parsed);
    mode_t type = ::archive_entry_filetype(ae);
    const char* hardlink = ::archive_entry_hardlink(ae);
    if (path.empty()) {  // "./" or "/": the layer root itself
      if (hardlink == nullptr && type == AE_IFDIR) {
        m_dirs[""] = meta_of(ae);
        return {};
      }
      return unexpected(entry_error(ErrorCode::invalid_argument, "names the layer root"));
    }
    for (std::size_t i = 0; i + 1 < path.size(); ++i)
      if (std::string_view(path[i]).starts_with(k_whiteout_prefix))
        return unexpected(
            entry_error(ErrorCode::invalid_argument,
                        "whiteout \"" + printable(path[i]) + "\" used as a directory"));
    std::string_view base = path.back();
    if (base.starts_with(k_whiteout_prefix)) return whiteout(path);
    if (hardlink != nullptr) return link(path, hardlink);
    switch (type) {
      case AE_IFREG:
        return file(a, ae, path);
      case AE_IFDIR:
        return directory(ae, path);
      case AE_IFLNK:
        return symlink(ae, path);
      case AE_IFCHR:
      case AE_IFBLK:
      case AE_IFIFO:
      case AE_IFSOCK:
        log::info(k_component, "skipped device node or fifo",
                  {{"layer", m_what}, {"entry", printable(m_entry)}});
        return {};
      default:
        return unexpected(entry_error(ErrorCode::invalid_argument,
                                      "unsupported entry type " + std::to_string(type)));
    }
  }

  static DirMeta meta_of(struct archive_entry* ae) {
    struct timespec mtime {};
    if (::archive_entry_mtime_is_set(ae)) {
      mtime.tv_sec = ::archive_entry_mtime(ae);
      mtime.tv_nsec = ::archive_entry_mtime_nsec(ae);
    }
    // Permission bits only: setuid, setgid and sticky are dropped.
    return DirMeta{static_cast<mode_t>(::archive_entry_perm(ae) & 0777), mtime};
  }

  // The directory holding the entry, implicit parents created (0755).
  Result<int> parent_of(const std::vector<std::string>& path) {
    auto fd = m_cursor.open(path, path.size() - 1, DirCursor::Missing::create);
    if (!fd) return unexpected(in_entry(fd.error()));
    return fd;
  }

  // Frees the entry's name for a new entry: a later entry for the same path replaces the earlier
  // one. Directory metadata recorded below a removed directory is forgotten.
  Result<void> clear(int parent, const std::vector<std::string>& path) {
    std::string rel = joined(path);
    for (auto it = m_dirs.lower_bound(rel); it != m_dirs.end();) {
      if (it->first == rel || (it->first.starts_with(rel) && it->first[rel.size()] == '/'))
        it = m_dirs.erase(it);
      else if (it->first.starts_with(rel))
        ++it;
      else
        break;
    }
    auto r = remove_tree_at(parent, path.back());
    if (!r) return unexpected(in_entry(r.error()));
    return {};
  }

  Result<void> whiteout(const std::vector<std::string>& path) {
    std::string_view base = path.back();
    if (base.starts_with(k_meta_prefix) && base != k_opaque) {
      log::debug(k_component, "skipped aufs metadata",
                 {{"layer", m_what}, {"entry", printable(m_entry)}});
      return {};
    }
    std::string_view target = base.substr(k_whiteout_prefix.size());
    if (base != k_opaque && (target.empty() || target == "." || target == ".."))
      return unexpected(
          entry_error(ErrorCode::invalid_argument,
                      "whiteout names \"" + std::string(target) + "\", not an entry"));
    ENVD_TRY(int parent, parent_of(path));
    ENVD_TRY(OwnedFd fd, create_file(parent, path));
    ++m_stats.whiteouts;
    return {};
  }

  Result<OwnedFd> create_file(int parent, const std::vector<std::string>& path,
                              mode_t mode = 0600) {
    const char* name = path.back().c_str();
    constexpr int k_flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
    int fd = ::openat(parent, name, k_flags, mode);
    if (fd < 0 && errno == EEXIST) {
      ENVD_TRY_VOID(clear(parent, path));
      fd = ::openat(parent, name, k_flags, mode);
    }
    if (fd < 0) return unexpected(in_entry(Error::from_errno("create", errno)));
    return OwnedFd(fd);
  }

  Result<void> file(struct archive* a, struct archive_entry* ae,
                    const std::vector<std::string>& path) {
    std::uint64_t size =
        ::archive_entry_size_is_set(ae) ? static_cast<std::uint64_t>(::archive_entry_size(ae)) : 0;
    // Checked against the header first: a bomb stops before its data is decompressed.
    if (size > m_limits.max_bytes - m_stats.bytes) return unexpected(over_limit());
    ENVD_TRY(int parent, parent_of(path));
    // Created with its final mode: no fchmod() unless the umask takes bits away (a system call
    // per file counts when a layer has tens of thousands).
    DirMeta meta = meta_of(ae);
    ENVD_TRY(OwnedFd fd, create_file(parent, path, meta.mode));
    std::uint64_t end = 0;
    for (;;) {
      const void* data = nullptr;
      std::size_t len = 0;
      la_int64_t offset = 0;
      int rc = ::archive_read_data_block(a, &data, &len, &offset);
      if (rc == ARCHIVE_EOF) break;
      if (rc < ARCHIVE_WARN) return unexpected(in_entry(archive_failure(a)));
      if (len > m_limits.max_bytes - m_stats.bytes) return unexpected(over_limit());
      if (offset < 0 || static_cast<std::uint64_t>(offset) + len > size)
        return unexpected(entry_error(ErrorCode::invalid_argument, "data beyond the entry's size"));
      m_stats.bytes += len;
      // Sparse files come as blocks at offsets; holes stay holes.
      for (std::size_t done = 0; done < len;) {
        ssize_t n = ::pwrite(fd.get(), static_cast<const char*>(data) + done, len - done,
                             static_cast<off_t>(offset) + static_cast<off_t>(done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return unexpected(in_entry(Error::from_errno("write", errno)));
        done += static_cast<std::size_t>(n);
      }
      end = std::max<std::uint64_t>(end, static_cast<std::uint64_t>(offset) + len);
    }
    if (end < size && ::ftruncate(fd.get(), static_cast<off_t>(size)) != 0)
      return unexpected(in_entry(Error::from_errno("truncate", errno)));
    struct timespec times[2] = {meta.mtime, meta.mtime};
    if ((meta.mode & process_umask()) != 0 && ::fchmod(fd.get(), meta.mode) != 0)
      return unexpected(in_entry(Error::from_errno("set mode", errno)));
    if (::futimens(fd.get(), times) != 0)
      return unexpected(in_entry(Error::from_errno("set mtime", errno)));
    if (!fd.close()) return unexpected(in_entry(Error::from_errno("close", errno)));
    return {};
  }

  Error over_limit() const {
    return entry_error(ErrorCode::invalid_argument, "layer holds more than " +
                                                        std::to_string(m_limits.max_bytes) +
                                                        " bytes of file data (limit)");
  }

  // A directory merges with an existing directory and replaces anything else. Its mode and
  // mtime are applied at the end: creating children would change the mtime, and a read-only
  // mode would stop a rootless daemon from creating them.
  Result<void> directory(struct archive_entry* ae, const std::vector<std::string>& path) {
    ENVD_TRY(int parent, parent_of(path));
    const char* name = path.back().c_str();
    if (::mkdirat(parent, name, 0755) != 0) {
      if (errno != EEXIST) return unexpected(in_entry(Error::from_errno("mkdir", errno)));
      struct stat st {};
      if (::fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        return unexpected(in_entry(Error::from_errno("stat", errno)));
      if (!S_ISDIR(st.st_mode)) {
        ENVD_TRY_VOID(clear(parent, path));
        if (::mkdirat(parent, name, 0755) != 0)
          return unexpected(in_entry(Error::from_errno("mkdir", errno)));
      }
    }
    m_dirs[joined(path)] = meta_of(ae);
    return {};
  }

  Result<void> symlink(struct archive_entry* ae, const std::vector<std::string>& path) {
    const char* target = ::archive_entry_symlink(ae);
    if (target == nullptr || *target == '\0')
      return unexpected(entry_error(ErrorCode::invalid_argument, "symlink without a target"));
    if (std::string_view(target).size() > m_limits.max_path_length)
      return unexpected(entry_error(ErrorCode::invalid_argument, "symlink target too long"));
    ENVD_TRY(int parent, parent_of(path));
    const char* name = path.back().c_str();
    if (::symlinkat(target, parent, name) != 0) {
      if (errno != EEXIST) return unexpected(in_entry(Error::from_errno("symlink", errno)));
      ENVD_TRY_VOID(clear(parent, path));
      if (::symlinkat(target, parent, name) != 0)
        return unexpected(in_entry(Error::from_errno("symlink", errno)));
    }
    DirMeta meta = meta_of(ae);
    struct timespec times[2] = {meta.mtime, meta.mtime};
    if (::utimensat(parent, name, times, AT_SYMLINK_NOFOLLOW) != 0)
      return unexpected(in_entry(Error::from_errno("set mtime", errno)));
    return {};
  }

  // A hardlink to an entry unpacked earlier in this layer. The target is looked up with its own
  // O_NOFOLLOW walk (no parent may be a symlink) and linked with linkat without
  // AT_SYMLINK_FOLLOW. Hardlinking a symlink whose target points outside the root is refused:
  // that is the first step of the symlink-then-hardlink-then-chmod escape. The link's own mode
  // is never applied (it would be a chmod through whatever the link is).
  Result<void> link(const std::vector<std::string>& path, std::string_view link_name) {
    auto target_path = components(link_name, m_limits);
    if (!target_path)
      return unexpected(entry_error(
          ErrorCode::invalid_argument,
          "hardlink target \"" + printable(link_name) + "\": " + target_path.error().message()));
    std::string shown = "hardlink target \"" + printable(link_name) + "\"";
    if (target_path->empty())
      return unexpected(entry_error(ErrorCode::invalid_argument, shown + " is the layer root"));
    if (*target_path == path)
      return unexpected(entry_error(ErrorCode::invalid_argument, shown + " is the entry itself"));
    DirCursor target_cursor(m_root);
    auto target_parent =
        target_cursor.open(*target_path, target_path->size() - 1, DirCursor::Missing::fail);
    if (!target_parent)
      return unexpected(
          entry_error(ErrorCode::invalid_argument, shown + ": " + target_parent.error().message()));
    const char* target_name = target_path->back().c_str();
    struct stat st {};
    if (::fstatat(*target_parent, target_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
      return unexpected(entry_error(ErrorCode::invalid_argument,
                                    shown + " is not in the layer (before this entry)"));
    if (S_ISDIR(st.st_mode))
      return unexpected(entry_error(ErrorCode::invalid_argument, shown + " is a directory"));
    if (S_ISLNK(st.st_mode)) {
      char buffer[4097];
      ssize_t n = ::readlinkat(*target_parent, target_name, buffer, sizeof buffer);
      if (n < 0) return unexpected(in_entry(Error::from_errno("readlink", errno)));
      if (target_escapes(target_path->size() - 1,
                         std::string_view(buffer, static_cast<std::size_t>(n))))
        return unexpected(
            entry_error(ErrorCode::invalid_argument,
                        shown + " is a symlink to \"" +
                            printable(std::string_view(buffer, static_cast<std::size_t>(n))) +
                            "\", outside the layer"));
    }
    ENVD_TRY(int parent, parent_of(path));
    const char* name = path.back().c_str();
    if (::linkat(*target_parent, target_name, parent, name, 0) != 0) {
      if (errno != EEXIST) return unexpected(in_entry(Error::from_errno("hardlink", errno)));
      ENVD_TRY_VOID(clear(parent, path));
      if (::linkat(*target_parent, target_name, parent, name, 0) != 0)
        return unexpected(in_entry(Error::from_errno("hardlink", errno)));
    }
    return {};
  }

  // Children first (reverse byte order puts every path before its ancestors).
  Result<void> apply_dir_meta() {
    DirCursor cursor(m_root);
    for (auto it = m_dirs.rbegin(); it != m_dirs.rend(); ++it) {
      std::vector<std::string> path;
      if (!it->first.empty()) path = *components(it->first, m_limits);
      auto fd = cursor.open(path, path.size(), DirCursor::Missing::fail);
      if (!fd) continue;  // replaced by a later entry
      struct timespec times[2] = {it->second.mtime, it->second.mtime};
      if (::fchmod(*fd, it->second.mode) != 0 || ::futimens(*fd, times) != 0)
        return unexpected(
            Error::from_errno("set mode and mtime of directory \"" + it->first + "\"", errno));
    }
    return {};
  }

  int m_root;
  UnpackLimits m_limits;
  std::string m_what;
  LayerCompression m_compression;
  ChunkSource& m_source;
  std::optional<StreamDecoder> m_decoder;  // created by run()
  DirCursor m_cursor;
  std::optional<Error> m_stream_error;
  std::string m_entry;  // the entry being unpacked, as named in the tar
  std::map<std::string, DirMeta> m_dirs;
  UnpackStats m_stats{.diff_id = oci::sha256_of("")};
};

Result<UniqueFd> open_dest(const std::filesystem::path& dest) {
  UniqueFd fd(::open(dest.c_str(), k_nofollow_dir_flags));
  if (!fd.valid())
    return unexpected(Error::from_errno("open unpack directory " + dest.string(), errno));
  return fd;
}

}  // namespace

struct LayerUnpacker::Impl {
  Impl(UniqueFd root_fd, std::string name)
      : root(std::move(root_fd)), what(std::move(name)), queue(k_queue_bytes, what) {}

  UniqueFd root;
  std::string what;
  ChunkQueue queue;                           // write() to the unpack thread
  std::optional<Result<UnpackStats>> result;  // set by the unpack thread, read after join()
  std::thread worker;
  bool finished = false;
};

LayerUnpacker::LayerUnpacker(std::unique_ptr<Impl> impl) : m_impl(std::move(impl)) {}

LayerUnpacker::~LayerUnpacker() {
  if (m_impl->worker.joinable()) {
    m_impl->queue.abort();
    m_impl->worker.join();
  }
}

Result<std::unique_ptr<LayerUnpacker>> LayerUnpacker::start(std::filesystem::path dest,
                                                            LayerCompression compression,
                                                            oci::Digest expected_diff_id,
                                                            UnpackLimits limits, std::string what) {
  auto root = open_dest(dest);
  if (!root) return unexpected(root.error().with_context(what));
  auto impl = std::make_unique<Impl>(std::move(*root), what);
  Impl* state = impl.get();
  std::unique_ptr<LayerUnpacker> unpacker(new LayerUnpacker(std::move(impl)));
  auto work = [state, compression, expected_diff_id, limits, what] {
    Unpack unpack(state->root.get(), compression, state->queue, limits, what);
    Result<UnpackStats> r = unpack.run(expected_diff_id);
    std::optional<Error> failure;
    if (!r) failure = r.error();
    state->result.emplace(std::move(r));
    state->queue.consumer_stopped(std::move(failure));
  };
  try {
    state->worker = std::thread(std::move(work));
  } catch (const std::system_error& e) {
    return unexpected(ErrorCode::unavailable,
                      what + ": cannot start the unpack thread: " + e.what());
  }
  return unpacker;
}

Result<void> LayerUnpacker::write(std::string_view data) {
  return m_impl->queue.push(data);
}

Result<UnpackStats> LayerUnpacker::finish() {
  if (m_impl->finished)
    return unexpected(ErrorCode::failed_precondition, m_impl->what + ": finish() called twice");
  m_impl->finished = true;
  m_impl->queue.close();
  m_impl->worker.join();
  return std::move(*m_impl->result);
}

Result<UnpackStats> unpack_layer_file(const std::filesystem::path& blob,
                                      const std::filesystem::path& dest,
                                      LayerCompression compression,
                                      const oci::Digest& expected_diff_id,
                                      const UnpackLimits& limits, const std::string& what) {
  UniqueFd in(::open(blob.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in.valid())
    return unexpected(Error::from_errno("open " + blob.string(), errno).with_context(what));
  auto root = open_dest(dest);
  if (!root) return unexpected(root.error().with_context(what));
  FileSource source(in.get(), blob.string());
  Unpack unpack(root->get(), compression, source, limits, what);
  return unpack.run(expected_diff_id);
}

}  // namespace envd::node
