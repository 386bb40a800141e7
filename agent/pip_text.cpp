// Text and path handling of the pip metadata reader (see pip_text.hpp).
#include "agent/pip_text.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "envd/util/atomic_file.hpp"

namespace envd::agent::pip_text {

namespace fs = std::filesystem;

std::string trim(std::string_view s) {
  auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return {};
  return std::string(s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1));
}
char lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}
std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = lower(c);
  return out;
}
// PEP 503 (https://peps.python.org/pep-0503/#normalized-names): lowercase, runs of -_. -> '-'.
std::string pep503(std::string_view name) {
  std::string out;
  for (char c : lower(name)) {
    if (c != '-' && c != '_' && c != '.')
      out += c;
    else if (out.empty() || out.back() != '-')
      out += '-';
  }
  return out;
}
std::vector<std::string_view> lines(std::string_view text) {
  std::vector<std::string_view> out;
  for_each_line(text, [&](std::string_view line) {
    out.push_back(line);
    return true;
  });
  return out;
}

// PEP 376 metadata files are UTF-8; NUL or a broken sequence means the file is not what it claims.
bool valid_utf8_text(std::string_view s) {
  constexpr std::uint64_t k_ones = 0x0101010101010101ULL, k_highs = 0x8080808080808080ULL;
  for (std::size_t i = 0; i < s.size();) {
    // Fast path: 8 bytes of ASCII without NUL (no high bit, no zero byte).
    if (std::uint64_t w = 0; i + 8 <= s.size()) {
      std::memcpy(&w, s.data() + i, 8);
      if (((w | ((w - k_ones) & ~w)) & k_highs) == 0) {
        i += 8;
        continue;
      }
    }
    auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : 3;
    if (c == 0 || (c >= 0x80 && (c < 0xC0 || c > 0xF7)) || s.size() - i <= n) return false;
    for (std::size_t k = 1; k <= n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += n + 1;
  }
  return true;
}

// Reads a regular file only: a FIFO named METADATA would block the scan.
Result<std::string> read_text(const fs::path& path) {
  std::error_code ec;
  auto status = fs::status(path, ec);
  if (ec) return unexpected(Error::from_errno("stat " + path.string(), ec.value()));
  if (!fs::is_regular_file(status))
    return unexpected(ErrorCode::invalid_argument, path.string() + ": not a regular file");
  return read_file(path);
}
// read_text() into `buffer`, which keeps its (already touched) memory from one file to the next:
// fresh pages are costly, and RECORD files add up to megabytes. The view lives until the next use.
Result<std::string_view> read_text(const fs::path& path, std::string& buffer) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return unexpected(Error::from_errno("stat " + path.string(), errno));
  if (!S_ISREG(st.st_mode))
    return unexpected(ErrorCode::invalid_argument, path.string() + ": not a regular file");
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return unexpected(Error::from_errno("open " + path.string(), errno));
  // One byte more than the size: a regular file's short read is its end, no read of 0 needed.
  if (buffer.size() <= static_cast<std::size_t>(st.st_size))
    buffer.resize(static_cast<std::size_t>(st.st_size) + 1);
  std::size_t size = 0;
  for (;;) {
    if (size == buffer.size()) buffer.resize(2 * size);
    const std::size_t want = buffer.size() - size;
    ssize_t n = ::read(fd, buffer.data() + size, want);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      return unexpected(Error::from_errno("read " + path.string(), err));
    }
    size += static_cast<std::size_t>(n);
    if (static_cast<std::size_t>(n) < want) break;
  }
  ::close(fd);
  return std::string_view(buffer.data(), size);
}

bool is_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}
bool entry_exists(const fs::path& p) {
  std::error_code ec;
  return fs::exists(fs::symlink_status(p, ec));
}

// Resolves "", "." and ".." lexically onto `base`. nullopt when a relative path climbs above
// `base`'s start; for an absolute path ".." at "/" stays at "/" as POSIX does.
std::optional<Parts> resolve(Parts base, std::string_view rel, bool absolute) {
  for (std::size_t pos = 0; pos <= rel.size();) {
    auto slash = std::min(rel.find('/', pos), rel.size());
    auto part = rel.substr(pos, slash - pos);
    pos = slash + 1;
    if (part.empty() || part == ".") continue;
    if (part != "..")
      base.emplace_back(part);
    else if (!base.empty())
      base.pop_back();
    else if (!absolute)
      return std::nullopt;
  }
  return base;
}
std::string join(const Parts& parts, std::size_t from) {
  std::string out;
  for (std::size_t i = from; i < parts.size(); ++i) (out.empty() ? out : out += '/') += parts[i];
  return out;
}
std::string absolute_normal(std::string_view path) {
  return "/" + join(*resolve({}, path, true));
}

// resolve() on strings: appends `rel`'s parts to `out`, the '/'-joined `depth` parts of the base.
// false when a relative path climbs above the base's start.
bool append_normal(std::string& out, std::size_t& depth, std::string_view rel, bool absolute) {
  for (std::size_t pos = 0; pos <= rel.size();) {
    auto slash = std::min(rel.find('/', pos), rel.size());
    auto part = rel.substr(pos, slash - pos);
    pos = slash + 1;
    if (part.empty() || part == ".") continue;
    if (part != "..") {
      if (depth++ > 0) out += '/';
      out += part;
    } else if (depth > 0) {
      out.resize(--depth == 0 ? 0 : out.rfind('/'));
    } else if (!absolute) {
      return false;
    }
  }
  return true;
}

// Core metadata is RFC 822 style; the headers end at the first blank line and the body after it
// may hold anything (https://packaging.python.org/en/latest/specifications/core-metadata/).
NameVersion parse_headers(std::string_view text) {
  NameVersion nv;
  for_each_line(text, [&](std::string_view line) {
    if (line.empty()) return false;
    auto colon = line.find(':');
    if (line[0] == ' ' || line[0] == '\t' || colon == std::string_view::npos) return true;
    auto key = lower(trim(line.substr(0, colon)));
    if (key == "name" && nv.name.empty()) nv.name = trim(line.substr(colon + 1));
    if (key == "version" && nv.version.empty()) nv.version = trim(line.substr(colon + 1));
    return true;
  });
  return nv;
}

// "foo-1.0" (dist-info; PEP 427 escaping keeps '-' out of both parts) or "Foo-1.0-py3.11"
// (egg-info): name before the first '-', version up to the next.
NameVersion from_stem(std::string_view stem) {
  auto dash = std::min(stem.find('-'), stem.size());
  auto rest = stem.substr(std::min(dash + 1, stem.size()));
  return {std::string(stem.substr(0, dash)), std::string(rest.substr(0, rest.find('-')))};
}

// A RECORD hash "sha256=<urlsafe base64, no padding>" as a Digest; nullopt for other algorithms
// or a malformed value.
std::optional<oci::Digest> parse_record_hash(std::string_view value) {
  static constexpr auto k_values = [] {
    constexpr std::string_view alphabet =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    std::array<std::int8_t, 256> v{};
    v.fill(-1);
    for (std::size_t i = 0; i < alphabet.size(); ++i)
      v[static_cast<unsigned char>(alphabet[i])] = static_cast<std::int8_t>(i);
    return v;
  }();
  if (!value.starts_with("sha256=")) return std::nullopt;
  value.remove_prefix(7);
  while (value.ends_with("=")) value.remove_suffix(1);
  if (value.size() != 43) return std::nullopt;  // ceil(32 * 8 / 6)
  std::array<std::uint8_t, 32> bytes{};
  std::uint32_t acc = 0;
  std::size_t bits = 0, n = 0;
  for (char c : value) {
    auto v = k_values[static_cast<unsigned char>(c)];
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    if ((bits += 6) >= 8 && n < bytes.size())
      bytes[n++] = static_cast<std::uint8_t>(acc >> (bits -= 8));
    acc &= (1u << bits) - 1;
  }
  return oci::Digest::from_bytes(bytes);
}

// "file:///a%20b" (or file://localhost/...) -> "/a b"; nullopt for other schemes, remote hosts.
std::optional<std::string> file_url_path(std::string_view url) {
  if (!url.starts_with("file://")) return std::nullopt;
  url.remove_prefix(url.starts_with("file://localhost/") ? 16 : 7);
  if (!url.starts_with("/")) return std::nullopt;
  url = url.substr(0, url.find_first_of("?#"));
  constexpr std::string_view k_hex = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < url.size(); ++i) {
    auto hi = i + 2 < url.size() ? k_hex.find(lower(url[i + 1])) : k_hex.npos;
    auto lo = i + 2 < url.size() ? k_hex.find(lower(url[i + 2])) : k_hex.npos;
    if (url[i] == '%' && hi != k_hex.npos && lo != k_hex.npos) {
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else {
      out += url[i];
    }
  }
  if (out.find('\0') != std::string::npos) return std::nullopt;
  return absolute_normal(out);
}

// Where conda-build, Anaconda's build root and pip's temporary build dirs put sources. A
// direct_url.json naming one of these was written on a build machine: it is not the user's source.
bool is_build_farm_path(std::string_view p) {
  return p.starts_with("/home/conda/feedstock_root/") || p.starts_with("/croot/") ||
         p.starts_with("/opt/conda/conda-bld/") || p.starts_with("/tmp/pip-") ||
         p.find("/conda-bld/") != std::string_view::npos ||
         p.find("/feedstock_root/") != std::string_view::npos;
}

// recursive_directory_iterator(skip_permission_denied) without its per-entry path objects: appends
// `rel`/... for each non-directory under directory `name` (relative to `dir_fd`), depth first in
// readdir order, and returns the errno that stopped the listing (0: none). An unreadable directory
// is skipped; symlinks are listed, not followed.
int list_tree(int dir_fd, const char* name, std::string& rel, std::vector<std::string>& out) {
  int fd = ::openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR* dir = fd < 0 ? nullptr : ::fdopendir(fd);
  if (!dir) {
    int err = errno;
    if (fd >= 0) ::close(fd);
    return err == EACCES ? 0 : err;
  }
  int err = 0;
  for (;;) {
    errno = 0;
    const dirent* e = ::readdir(dir);
    if (!e) {
      err = errno == EACCES ? 0 : errno;
      break;
    }
    const std::string_view entry = e->d_name;
    if (entry == "." || entry == "..") continue;
    bool is_directory = e->d_type == DT_DIR;
    struct stat st {};
    if (e->d_type == DT_UNKNOWN)  // a file system without d_type
      is_directory =
          ::fstatat(::dirfd(dir), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
    const std::size_t size = rel.size();
    (rel += '/') += entry;
    if (!is_directory)
      out.push_back(rel);
    else
      err = list_tree(::dirfd(dir), e->d_name, rel, out);
    rel.resize(size);
    if (err) break;
  }
  ::closedir(dir);
  return err;
}
}  // namespace envd::agent::pip_text
