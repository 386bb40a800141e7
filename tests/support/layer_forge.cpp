// Test support: forged OCI layers. libarchive writes the pax tar with names exactly as given; its
// bytes stream through the diff_id hash into zlib or libzstd and into memory.
#include "support/layer_forge.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <locale.h>
#include <sys/stat.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <memory>
#include <stdexcept>

namespace envd::test {

namespace {

constexpr std::size_t k_chunk = 64 * 1024;

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error("layer_forge: " + what);
}

// Compresses a stream into a string as one gzip member or one zstd frame.
class Compressor {
 public:
  explicit Compressor(ForgeCompression compression) : m_compression(compression) {
    if (m_compression == ForgeCompression::gzip) {
      // windowBits 15 + 16: a gzip wrapper (RFC 1952) rather than zlib's.
      if (::deflateInit2(&m_z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        fail("deflateInit2");
    } else if (m_compression == ForgeCompression::zstd) {
      m_zstd = ::ZSTD_createCCtx();
      if (m_zstd == nullptr) fail("ZSTD_createCCtx");
      ::ZSTD_CCtx_setParameter(m_zstd, ZSTD_c_compressionLevel, 3);
    }
  }
  ~Compressor() {
    if (m_compression == ForgeCompression::gzip) ::deflateEnd(&m_z);
    if (m_zstd != nullptr) ::ZSTD_freeCCtx(m_zstd);
  }
  Compressor(const Compressor&) = delete;
  Compressor& operator=(const Compressor&) = delete;

  void write(std::string_view data) { run(data, false); }
  std::string finish() {
    run({}, true);
    return std::move(m_out);
  }

 private:
  void run(std::string_view data, bool end) {
    if (m_compression == ForgeCompression::none) {
      m_out.append(data);
      return;
    }
    char buffer[k_chunk];
    if (m_compression == ForgeCompression::gzip) {
      m_z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
      m_z.avail_in = static_cast<uInt>(data.size());
      for (;;) {
        m_z.next_out = reinterpret_cast<Bytef*>(buffer);
        m_z.avail_out = sizeof buffer;
        int rc = ::deflate(&m_z, end ? Z_FINISH : Z_NO_FLUSH);
        if (rc == Z_STREAM_ERROR) fail("deflate");
        m_out.append(buffer, sizeof buffer - m_z.avail_out);
        if (end ? rc == Z_STREAM_END : (m_z.avail_in == 0 && m_z.avail_out != 0)) break;
      }
      return;
    }
    ZSTD_inBuffer in{data.data(), data.size(), 0};
    for (;;) {
      ZSTD_outBuffer out{buffer, sizeof buffer, 0};
      std::size_t left =
          ::ZSTD_compressStream2(m_zstd, &out, &in, end ? ZSTD_e_end : ZSTD_e_continue);
      if (::ZSTD_isError(left)) fail(std::string("zstd: ") + ::ZSTD_getErrorName(left));
      m_out.append(buffer, out.pos);
      if (end ? left == 0 : in.pos == in.size) break;
    }
  }

  ForgeCompression m_compression;
  z_stream m_z{};
  ZSTD_CCtx* m_zstd = nullptr;
  std::string m_out;
};

// The uncompressed tar on its way to the compressor: hashed and counted.
struct TarSink {
  explicit TarSink(ForgeCompression compression) : compressor(compression) {}
  Compressor compressor;
  oci::Sha256 hash;
  std::uint64_t size = 0;
};

la_ssize_t sink_write(struct archive*, void* client, const void* data, std::size_t size) {
  auto* sink = static_cast<TarSink*>(client);
  std::string_view bytes(static_cast<const char*>(data), size);
  sink->hash.update(bytes);
  sink->size += size;
  sink->compressor.write(bytes);
  return static_cast<la_ssize_t>(size);
}

// Pins this thread to a UTF-8 locale while libarchive converts names (as the builder does).
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

unsigned filetype_of(ForgeEntry::Type type) {
  switch (type) {
    case ForgeEntry::Type::file:
    case ForgeEntry::Type::hardlink:
      return AE_IFREG;
    case ForgeEntry::Type::dir:
      return AE_IFDIR;
    case ForgeEntry::Type::symlink:
      return AE_IFLNK;
    case ForgeEntry::Type::char_device:
      return AE_IFCHR;
    case ForgeEntry::Type::block_device:
      return AE_IFBLK;
    case ForgeEntry::Type::fifo:
      return AE_IFIFO;
  }
  return AE_IFREG;
}

void write_entry(struct archive* a, const ForgeEntry& e) {
  std::unique_ptr<struct archive_entry, decltype(&::archive_entry_free)> entry(
      ::archive_entry_new(), &::archive_entry_free);
  struct archive_entry* ae = entry.get();
  ::archive_entry_copy_pathname(ae, e.name.c_str());
  ::archive_entry_set_filetype(ae, filetype_of(e.type));
  ::archive_entry_set_perm(ae, e.mode & 07777);
  ::archive_entry_set_uid(ae, 0);
  ::archive_entry_set_gid(ae, 0);
  ::archive_entry_set_mtime(ae, e.mtime, static_cast<long>(e.mtime_nsec));
  std::uint64_t size = 0;
  switch (e.type) {
    case ForgeEntry::Type::file:
      size = e.content.size() + e.zero_bytes;
      break;
    case ForgeEntry::Type::symlink:
      ::archive_entry_copy_symlink(ae, e.link.c_str());
      break;
    case ForgeEntry::Type::hardlink:
      ::archive_entry_copy_hardlink(ae, e.link.c_str());
      break;
    case ForgeEntry::Type::char_device:
    case ForgeEntry::Type::block_device:
      ::archive_entry_set_rdevmajor(ae, e.dev_major);
      ::archive_entry_set_rdevminor(ae, e.dev_minor);
      break;
    default:
      break;
  }
  ::archive_entry_set_size(ae, static_cast<la_int64_t>(size));
  if (::archive_write_header(a, ae) < ARCHIVE_WARN)
    fail("header " + e.name + ": " + ::archive_error_string(a));
  if (e.type != ForgeEntry::Type::file) return;
  auto put = [&](const void* data, std::size_t n) {
    if (n != 0 && ::archive_write_data(a, data, n) != static_cast<la_ssize_t>(n))
      fail("data " + e.name + ": " + ::archive_error_string(a));
  };
  put(e.content.data(), e.content.size());
  static const std::string zeros(k_chunk, '\0');
  for (std::uint64_t left = e.zero_bytes; left > 0;) {
    std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left, zeros.size()));
    put(zeros.data(), n);
    left -= n;
  }
}

// Writes the tar of `entries` into `sink`.
void write_tar(const std::vector<ForgeEntry>& entries, TarSink& sink) {
  Utf8Locale locale;
  std::unique_ptr<struct archive, decltype(&::archive_write_free)> archive(::archive_write_new(),
                                                                           &::archive_write_free);
  struct archive* a = archive.get();
  if (::archive_write_set_format_pax(a) != ARCHIVE_OK ||
      ::archive_write_add_filter_none(a) != ARCHIVE_OK ||
      ::archive_write_open(a, &sink, nullptr, sink_write, nullptr) != ARCHIVE_OK)
    fail(std::string("archive_write_open: ") + ::archive_error_string(a));
  for (const ForgeEntry& e : entries) write_entry(a, e);
  if (::archive_write_close(a) != ARCHIVE_OK)
    fail(std::string("archive_write_close: ") + ::archive_error_string(a));
}

ForgedLayer finish_layer(TarSink& sink, ForgeCompression compression) {
  ForgedLayer layer{.blob = sink.compressor.finish(),
                    .compression = compression,
                    .digest = oci::sha256_of(""),
                    .diff_id = sink.hash.finish(),
                    .uncompressed_size = sink.size};
  layer.digest = oci::sha256_of(layer.blob);
  return layer;
}

}  // namespace

std::string_view forge_media_type(ForgeCompression compression) {
  switch (compression) {
    case ForgeCompression::none:
      return "application/vnd.oci.image.layer.v1.tar";
    case ForgeCompression::gzip:
      return "application/vnd.oci.image.layer.v1.tar+gzip";
    case ForgeCompression::zstd:
      return "application/vnd.oci.image.layer.v1.tar+zstd";
  }
  return "";
}

ForgeEntry ForgeEntry::file(std::string name, std::string content, std::uint32_t mode) {
  ForgeEntry e;
  e.type = Type::file;
  e.name = std::move(name);
  e.content = std::move(content);
  e.mode = mode;
  return e;
}

ForgeEntry ForgeEntry::dir(std::string name, std::uint32_t mode) {
  ForgeEntry e;
  e.type = Type::dir;
  e.name = std::move(name);
  e.mode = mode;
  return e;
}

ForgeEntry ForgeEntry::symlink(std::string name, std::string target) {
  ForgeEntry e;
  e.type = Type::symlink;
  e.name = std::move(name);
  e.link = std::move(target);
  e.mode = 0777;
  return e;
}

ForgeEntry ForgeEntry::hardlink(std::string name, std::string target) {
  ForgeEntry e;
  e.type = Type::hardlink;
  e.name = std::move(name);
  e.link = std::move(target);
  return e;
}

ForgeEntry ForgeEntry::char_device(std::string name, std::uint32_t major, std::uint32_t minor) {
  ForgeEntry e;
  e.type = Type::char_device;
  e.name = std::move(name);
  e.dev_major = major;
  e.dev_minor = minor;
  e.mode = 0666;
  return e;
}

ForgeEntry ForgeEntry::block_device(std::string name, std::uint32_t major, std::uint32_t minor) {
  ForgeEntry e = char_device(std::move(name), major, minor);
  e.type = Type::block_device;
  e.mode = 0660;
  return e;
}

ForgeEntry ForgeEntry::fifo(std::string name) {
  ForgeEntry e;
  e.type = Type::fifo;
  e.name = std::move(name);
  return e;
}

ForgeEntry ForgeEntry::whiteout(std::string_view path) {
  std::size_t slash = path.rfind('/');
  std::string name =
      slash == std::string_view::npos
          ? ".wh." + std::string(path)
          : std::string(path.substr(0, slash + 1)) + ".wh." + std::string(path.substr(slash + 1));
  return file(std::move(name), "");
}

ForgeEntry ForgeEntry::opaque(std::string_view dir) {
  std::string name(dir);
  if (!name.empty() && name.back() != '/') name += '/';
  return file(name + ".wh..wh..opq", "");
}

std::string forge_tar(const std::vector<ForgeEntry>& entries) {
  TarSink sink(ForgeCompression::none);
  write_tar(entries, sink);
  return sink.compressor.finish();
}

std::string forge_compress(std::string_view data, ForgeCompression compression) {
  Compressor compressor(compression);
  compressor.write(data);
  return compressor.finish();
}

ForgedLayer forge_layer(const std::vector<ForgeEntry>& entries, ForgeCompression compression) {
  TarSink sink(compression);
  write_tar(entries, sink);
  return finish_layer(sink, compression);
}

ForgedLayer forge_layer_from_tar(std::string_view tar, ForgeCompression compression) {
  TarSink sink(compression);
  sink.hash.update(tar);
  sink.size = tar.size();
  sink.compressor.write(tar);
  return finish_layer(sink, compression);
}

ForgedLayer forge_compression_bomb(std::uint64_t uncompressed_bytes, ForgeCompression compression) {
  ForgeEntry bomb = ForgeEntry::file("bomb", "");
  bomb.zero_bytes = uncompressed_bytes;
  return forge_layer({bomb}, compression);
}

ForgedLayer forge_truncated(const ForgedLayer& layer, std::size_t keep) {
  ForgedLayer out = layer;
  out.blob.resize(std::min(keep, layer.blob.size()));
  out.digest = oci::sha256_of(out.blob);
  return out;
}

ForgedLayer forge_flipped_byte(const ForgedLayer& layer, std::size_t offset, std::uint8_t mask) {
  if (offset >= layer.blob.size()) fail("flip offset past the end of the blob");
  ForgedLayer out = layer;
  out.blob[offset] = static_cast<char>(static_cast<std::uint8_t>(out.blob[offset]) ^ mask);
  out.digest = oci::sha256_of(out.blob);
  return out;
}

ForgedLayer forge_appended(const ForgedLayer& layer, std::string_view extra) {
  ForgedLayer out = layer;
  out.blob.append(extra);
  out.digest = oci::sha256_of(out.blob);
  return out;
}

}  // namespace envd::test
