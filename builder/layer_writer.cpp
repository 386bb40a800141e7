// Writes reproducible OCI layers: libarchive formats a pax tar whose bytes stream through the
// diff_id hash into a compressor (layer_compressor.cpp: zlib or libzstd, fixed parameters) and
// on into a blob writer.
// Layer format: https://github.com/opencontainers/image-spec/blob/v1.1.0/layer.md
#include "builder/layer_writer.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <locale.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "builder/layer_compressor.hpp"

namespace envd::builder {

namespace {

// ---- The tar stream ----------------------------------------------------------------------------

// libarchive's client data: every tar byte is hashed for the diff_id, then compressed. The first
// failure is kept here, because libarchive reduces it to "write callback failed".
struct TarOutput {
  oci::Sha256 diff_hash;
  std::uint64_t size = 0;
  Compressor* compressor = nullptr;
  std::optional<Error> error;
};

la_ssize_t write_tar_bytes(struct archive* /*a*/, void* client, const void* buffer,
                           std::size_t length) {
  auto* out = static_cast<TarOutput*>(client);
  if (out->error) return -1;
  std::string_view data(static_cast<const char*>(buffer), length);
  out->diff_hash.update(data);
  out->size += length;
  if (auto r = out->compressor->write(data); !r) {
    out->error = r.error();
    return -1;
  }
  return static_cast<la_ssize_t>(length);
}

// libarchive converts names from the current locale's charset to UTF-8 for pax headers, so the
// same name gives different bytes (or a failure) under "C" and under a UTF-8 locale. Names in a
// snapshot are UTF-8: pin this thread to C.UTF-8 while the tar is written (uselocale is
// per-thread, so parallel builds and the rest of the process are unaffected). Without C.UTF-8,
// non-ASCII names fail (see TarWriter::header) instead of giving locale-dependent bytes.
class Utf8LocaleScope {
 public:
  Utf8LocaleScope() : m_locale(::newlocale(LC_ALL_MASK, "C.UTF-8", nullptr)) {
    if (m_locale) m_previous = ::uselocale(m_locale);
  }
  ~Utf8LocaleScope() {
    if (m_locale) {
      ::uselocale(m_previous);
      ::freelocale(m_locale);
    }
  }
  Utf8LocaleScope(const Utf8LocaleScope&) = delete;
  Utf8LocaleScope& operator=(const Utf8LocaleScope&) = delete;

 private:
  locale_t m_locale;
  locale_t m_previous = nullptr;
};

// Owns the archive handle. An archive not closed successfully is marked failed first, so that
// freeing it does not write a trailer after an error.
class TarWriter {
 public:
  TarWriter() : m_archive(::archive_write_new()), m_entry(::archive_entry_new()) {}
  ~TarWriter() {
    if (m_archive) {
      if (!m_closed) ::archive_write_fail(m_archive);
      ::archive_write_free(m_archive);
    }
    if (m_entry) ::archive_entry_free(m_entry);
  }
  TarWriter(const TarWriter&) = delete;
  TarWriter& operator=(const TarWriter&) = delete;

  Result<void> open(TarOutput& out) {
    m_out = &out;
    if (!m_archive || !m_entry) return Error(ErrorCode::internal, "tar: out of memory");
    // pax restricted: plain ustar headers, plus a pax extended header only where ustar cannot
    // say it (long or non-ASCII names, sizes >= 8 GiB). The default 10240-byte blocking is what
    // tar(1) writes and delivers the stream to the callback in whole blocks.
    if (::archive_write_set_format_pax_restricted(m_archive) != ARCHIVE_OK ||
        ::archive_write_open2(m_archive, &out, nullptr, write_tar_bytes, nullptr, nullptr) !=
            ARCHIVE_OK) {
      return failure("open");
    }
    return {};
  }

  // Writes one header. mtime 0 unless given; no atime/ctime; uid/gid 0 with no user/group names
  // (names would be resolved against the image's /etc/passwd, numbers are what we mean). For a
  // regular file, a non-empty `hardlink` makes it a hard link entry to that earlier path (type
  // '1', no data: the caller passes size 0).
  Result<void> header(std::string_view path, unsigned type, std::uint32_t mode, std::int64_t mtime,
                      std::uint64_t size, const std::string& target,
                      const std::string& hardlink = std::string()) {
    ::archive_entry_clear(m_entry);
    std::string name(path);
    ::archive_entry_copy_pathname(m_entry, name.c_str());
    ::archive_entry_set_filetype(m_entry, type);
    ::archive_entry_set_perm(m_entry, mode & 0777);
    ::archive_entry_set_uid(m_entry, 0);
    ::archive_entry_set_gid(m_entry, 0);
    ::archive_entry_set_mtime(m_entry, mtime, 0);
    ::archive_entry_set_size(m_entry, static_cast<la_int64_t>(size));
    if (type == AE_IFLNK) ::archive_entry_copy_symlink(m_entry, target.c_str());
    if (!hardlink.empty()) ::archive_entry_copy_hardlink(m_entry, hardlink.c_str());
    // ARCHIVE_WARN (a name that is not valid UTF-8, written as hdrcharset=BINARY) is still a
    // written header, but one no snapshot can describe: refuse it.
    int rc = ::archive_write_header(m_archive, m_entry);
    if (rc == ARCHIVE_WARN) {
      return Error(ErrorCode::invalid_argument, "layer file " + name + ": name is not valid UTF-8");
    }
    if (rc != ARCHIVE_OK) return failure(name);
    return {};
  }

  Result<void> data(std::string_view chunk, const std::string& what) {
    la_ssize_t n = ::archive_write_data(m_archive, chunk.data(), chunk.size());
    if (n < 0 || static_cast<std::size_t>(n) != chunk.size()) return failure(what);
    return {};
  }

  Result<void> close() {
    if (::archive_write_close(m_archive) != ARCHIVE_OK) return failure("close");
    m_closed = true;
    return {};
  }

 private:
  Error failure(const std::string& what) const {
    if (m_out && m_out->error) return *m_out->error;
    const char* message = ::archive_error_string(m_archive);
    return Error(ErrorCode::io, "tar " + what + ": " + (message ? message : "unknown error"));
  }

  struct archive* m_archive;
  struct archive_entry* m_entry;
  TarOutput* m_out = nullptr;
  bool m_closed = false;
};

// ---- Entry checks and the directory walk ------------------------------------------------------

bool is_normalised(std::string_view path) {
  if (path.empty() || path.find('\0') != std::string_view::npos) return false;
  std::size_t start = 0;
  for (;;) {
    std::size_t slash = path.find('/', start);
    std::string_view part =
        path.substr(start, slash == std::string_view::npos ? slash : slash - start);
    if (part.empty() || part == "." || part == "..") return false;
    if (slash == std::string_view::npos) return true;
    start = slash + 1;
  }
}

std::string_view parent_of(std::string_view path) {
  std::size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? std::string_view() : path.substr(0, slash);
}

// Length of the longest directory prefix shared by directory paths a and b (0: none).
std::size_t common_directory(std::string_view a, std::string_view b) {
  std::size_t m = std::mismatch(a.begin(), a.end(), b.begin(), b.end()).first - a.begin();
  bool a_ends = m == a.size() || a[m] == '/';
  bool b_ends = m == b.size() || b[m] == '/';
  if (a_ends && b_ends) return m;
  std::size_t slash = m == 0 ? std::string_view::npos : a.rfind('/', m - 1);
  return slash == std::string_view::npos ? 0 : slash;
}

// Calls emit(dir) for every ancestor directory of each entry the first time it is needed, parents
// first. Entries sorted by path keep each directory's descendants contiguous, so a directory that
// was left is never needed again: the open chain is all the state there is.
class DirectoryWalk {
 public:
  template <class Emit>
  Result<void> enter(std::string_view entry_path, Emit&& emit) {
    std::string_view parent = parent_of(entry_path);
    std::size_t start = common_directory(m_open, parent);
    while (start < parent.size()) {
      std::size_t slash = parent.find('/', start == 0 ? 0 : start + 1);
      std::size_t end = slash == std::string_view::npos ? parent.size() : slash;
      ENVD_TRY_VOID(emit(parent.substr(0, end)));
      start = end;
    }
    m_open = parent;
    return {};
  }

 private:
  std::string_view m_open;  // into the caller's entries, which outlive the walk
};

bool contains_path(const std::vector<LayerEntry>& entries, std::string_view path) {
  auto it = std::lower_bound(entries.begin(), entries.end(), path,
                             [](const LayerEntry& e, std::string_view p) { return e.path < p; });
  return it != entries.end() && it->path == path;
}

Result<void> validate(const std::vector<LayerEntry>& entries) {
  DirectoryWalk walk;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const LayerEntry& e = entries[i];
    auto bad = [&](const std::string& why) {
      return Error(ErrorCode::invalid_argument, describe(e) + ": " + why);
    };
    if (!is_normalised(e.path)) return bad("path is not normalised");
    if (i > 0 && !(entries[i - 1].path < e.path)) {
      return bad("entries are not sorted and unique (after " + entries[i - 1].path + ")");
    }
    if (e.type == snapshot::FileType::regular && !e.digest)
      return bad("regular file without digest");
    if (e.type == snapshot::FileType::symlink &&
        (e.target.empty() || e.target.find('\0') != std::string::npos)) {
      return bad("symlink target is empty or contains NUL");
    }
    if (!e.link.empty()) {
      if (e.type != snapshot::FileType::regular) return bad("only regular files have a link");
      if (!is_normalised(e.link) || e.link == e.path)
        return bad("link " + e.link + " is not normalised or names the file itself");
    }
    ENVD_TRY_VOID(walk.enter(e.path, [&](std::string_view dir) -> Result<void> {
      if (contains_path(entries, dir))
        return bad(std::string(dir) + " is also a file in this layer");
      return {};
    }));
  }
  return {};
}

// ---- The pyc rule -------------------------------------------------------------------------------

// For ".../D/__pycache__/NAME.cpython-3XX[.opt-N].pyc", the source "D/NAME.py" it caches, following
// importlib.util.source_from_cache: NAME is up to the first dot, 2 or 3 dots in all.
// https://docs.python.org/3/library/importlib.html#importlib.util.source_from_cache
std::optional<std::string> source_of_pyc(std::string_view path) {
  constexpr std::string_view k_cache_dir = "__pycache__";
  std::string_view dir = parent_of(path);
  std::string_view base = path.substr(dir.empty() ? 0 : dir.size() + 1);
  std::size_t cache_at = dir.rfind('/');
  std::string_view cache = dir.substr(cache_at == std::string_view::npos ? 0 : cache_at + 1);
  if (cache != k_cache_dir || !base.ends_with(".pyc")) return std::nullopt;
  std::string_view stem = base.substr(0, base.size() - 4);
  std::size_t dots = std::count(stem.begin(), stem.end(), '.');
  std::size_t first = stem.find('.');
  if ((dots != 1 && dots != 2) || first == 0) return std::nullopt;
  std::string_view rest = stem.substr(first + 1);
  std::string_view tag = rest.substr(0, rest.find('.'));
  if (dots == 2 && !rest.substr(tag.size() + 1).starts_with("opt-")) return std::nullopt;
  constexpr std::string_view k_tag = "cpython-3";
  if (!tag.starts_with(k_tag) || tag.size() == k_tag.size() ||
      !std::all_of(tag.begin() + k_tag.size(), tag.end(),
                   [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  std::string source(parent_of(dir));
  if (!source.empty()) source += '/';
  source.append(stem.substr(0, first)).append(".py");
  return source;
}

std::uint32_t le32(const std::string& bytes, std::size_t at) {
  return static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[at])) |
         static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[at + 1])) << 8 |
         static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[at + 2])) << 16 |
         static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[at + 3])) << 24;
}

// Tar mtimes for .py files, by entry index. A timestamp-based .pyc is valid only while its
// source's mtime and size equal the ones recorded in its 16-byte header (PEP 552,
// https://peps.python.org/pep-0552/: magic, flags = 0, source mtime, source size, all 32-bit
// little-endian); the import system compares them with st_mtime and st_size & 0xFFFFFFFF. Giving
// the .py the recorded mtime instead of 0 keeps the bytecode valid after extraction, and still
// depends only on content (the .pyc bytes), never on the laptop's file times
// (DESIGN.md §3.3). Hash-based pycs (flags != 0) do not look at the mtime: those .py get 0. When
// several pycs of one source qualify (3.11 and 3.12, opt levels), the first by path order wins.
Result<std::unordered_map<std::size_t, std::uint32_t>> py_source_mtimes(
    const std::vector<LayerEntry>& entries, ContentSource& content) {
  std::unordered_map<std::size_t, std::uint32_t> mtimes;
  for (const LayerEntry& pyc : entries) {
    if (pyc.type != snapshot::FileType::regular) continue;
    std::optional<std::string> source = source_of_pyc(pyc.path);
    if (!source) continue;
    auto it =
        std::lower_bound(entries.begin(), entries.end(), *source,
                         [](const LayerEntry& e, const std::string& p) { return e.path < p; });
    if (it == entries.end() || it->path != *source || it->type != snapshot::FileType::regular)
      continue;
    std::size_t index = static_cast<std::size_t>(it - entries.begin());
    if (mtimes.contains(index)) continue;
    ENVD_TRY(std::string header, content.head(pyc, 16));
    // Bytes 2..3 of every CPython 3 magic number are "\r\n".
    if (header.size() < 16 || header[2] != '\r' || header[3] != '\n') continue;
    if (le32(header, 4) != 0) continue;
    if (le32(header, 12) != static_cast<std::uint32_t>(it->size & 0xFFFFFFFFu)) continue;
    mtimes.emplace(index, le32(header, 8));
  }
  return mtimes;
}

// The hard link groups of a layer's entries (LayerEntry::link) and, per group, the entry written
// first with its content, which the group's later entries link to. Entries are written in path
// order, so that is the group's first member when this layer has it, else the first of the
// members this layer has: a group split over layers has its content once in each.
class HardLinks {
 public:
  explicit HardLinks(const std::vector<LayerEntry>& entries) {
    for (const LayerEntry& e : entries)
      if (!e.link.empty()) m_first.emplace(e.link, nullptr);
  }

  // For regular `e` about to be written: the path of the earlier entry to write it as a hard link
  // to, or null to write it with its content (then it becomes its group's first written entry).
  // An earlier entry of another digest or size (impossible from a valid snapshot, bar nested
  // roots naming one path twice) is not linked to: `e` gets its content, never another's.
  const std::string* link_for(const LayerEntry& e) {
    if (m_first.empty()) return nullptr;
    auto it = m_first.find(e.link.empty() ? std::string_view(e.path) : std::string_view(e.link));
    if (it == m_first.end()) return nullptr;  // in no group
    const LayerEntry* first = it->second;
    if (first == nullptr) {
      it->second = &e;
      return nullptr;
    }
    if (first->digest != e.digest || first->size != e.size) return nullptr;
    return &first->path;
  }

 private:
  // Group (the image path of its first member) -> first entry written; keys point into entries.
  std::unordered_map<std::string_view, const LayerEntry*> m_first;
};

}  // namespace

std::string_view media_type_for(Compression compression) {
  switch (compression) {
    case Compression::zstd:
      return oci::media_type::k_layer_zstd;
    case Compression::gzip:
      return oci::media_type::k_layer_gzip;
    case Compression::none:
      return oci::media_type::k_layer_tar;
  }
  return oci::media_type::k_layer_tar;
}

Result<BuiltLayer> write_layer(const std::vector<LayerEntry>& entries, ContentSource& content,
                               Compression compression, store::BlobStore& out,
                               CompressionContexts* contexts) {
  ENVD_TRY_VOID(validate(entries));
  ENVD_TRY(auto mtimes, py_source_mtimes(entries, content));

  ENVD_TRY(std::unique_ptr<store::BlobWriter> writer, out.begin_write());
  BlobSink blob(*writer);
  ENVD_TRY(std::unique_ptr<Compressor> compressor, make_compressor(compression, blob, contexts));
  TarOutput tar_out;
  tar_out.compressor = compressor.get();
  Utf8LocaleScope utf8_names;  // before the archive exists, outlives it
  TarWriter tar;
  ENVD_TRY_VOID(tar.open(tar_out));

  DirectoryWalk walk;
  HardLinks hard_links(entries);
  const std::string no_target;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const LayerEntry& e = entries[i];
    ENVD_TRY_VOID(walk.enter(e.path, [&](std::string_view dir) {
      return tar.header(dir, AE_IFDIR, 0755, 0, 0, no_target);
    }));
    if (e.type == snapshot::FileType::symlink) {
      ENVD_TRY_VOID(tar.header(e.path, AE_IFLNK, e.mode, 0, 0, e.target));
      continue;
    }
    auto mtime = mtimes.find(i);
    const std::int64_t file_mtime = mtime == mtimes.end() ? 0 : mtime->second;
    if (const std::string* first = hard_links.link_for(e)) {
      ENVD_TRY_VOID(tar.header(e.path, AE_IFREG, e.mode, file_mtime, 0, no_target, *first));
      continue;
    }
    ENVD_TRY_VOID(tar.header(e.path, AE_IFREG, e.mode, file_mtime, e.size, no_target));
    // libarchive would silently truncate extra bytes and zero-pad missing ones: count them here
    // too, so even a ContentSource that does not verify cannot produce a wrong layer.
    std::uint64_t written = 0;
    std::string what = describe(e);
    ENVD_TRY_VOID(content.read(e, [&](std::string_view chunk) -> Result<void> {
      written += chunk.size();
      if (written > e.size) {
        return Error(ErrorCode::digest_mismatch,
                     what + ": digest mismatch: more than " + std::to_string(e.size) + " bytes");
      }
      return tar.data(chunk, what);
    }));
    if (written != e.size) {
      return Error(ErrorCode::digest_mismatch, what +
                                                   ": digest mismatch: " + std::to_string(written) +
                                                   " bytes, expected " + std::to_string(e.size));
    }
  }
  ENVD_TRY_VOID(tar.close());
  ENVD_TRY_VOID(compressor->finish());

  BuiltLayer layer{
      .blob = {.media_type = std::string(media_type_for(compression)),
               .digest = blob.finish(),
               .size = blob.size(),
               .annotations = {}},
      .diff_id = tar_out.diff_hash.finish(),
      .uncompressed_size = tar_out.size,
      .files = entries.size(),
  };
  ENVD_TRY_VOID(writer->commit(layer.blob.digest, layer.blob.size));
  return layer;
}

}  // namespace envd::builder
