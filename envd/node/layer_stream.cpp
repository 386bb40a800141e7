// A layer's compressed bytes to its uncompressed tar stream: the media type's compression, the
// chunk sources, and decompression (zlib, libzstd) done here rather than in libarchive so that
// the tar is hashed for the diff_id on its way in. Layers: see layer_unpacker.hpp.
#include "envd/node/layer_stream.hpp"

#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

namespace envd::node {

// Declared in layer_unpacker.hpp. Media types:
// https://github.com/opencontainers/image-spec/blob/v1.1.0/media-types.md
Result<LayerCompression> layer_compression(std::string_view media_type) {
  if (media_type == "application/vnd.oci.image.layer.v1.tar" ||
      media_type == "application/vnd.docker.image.rootfs.diff.tar")
    return LayerCompression::none;
  if (media_type == "application/vnd.oci.image.layer.v1.tar+gzip" ||
      media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip")
    return LayerCompression::gzip;
  if (media_type == "application/vnd.oci.image.layer.v1.tar+zstd" ||
      media_type == "application/vnd.docker.image.rootfs.diff.tar.zstd")
    return LayerCompression::zstd;
  return unexpected(ErrorCode::invalid_argument,
                    "unsupported layer media type \"" + std::string(media_type) + "\"");
}

namespace detail {

namespace {

constexpr std::size_t k_out_chunk = 256u << 10;  // decompressed bytes per libarchive read
constexpr std::size_t k_file_chunk = 1u << 20;   // read size of a FileSource
// Small pushes (an HTTP client hands over 4 KiB at a time) are appended to the last queued chunk
// up to this size: one allocation and one wake-up per 256 KiB instead of per 4 KiB.
constexpr std::size_t k_coalesce = 256u << 10;

}  // namespace

// ---- Sources ------------------------------------------------------------------------------------

FileSource::FileSource(int fd, std::string what)
    : m_fd(fd), m_what(std::move(what)), m_buffer(k_file_chunk) {}

Result<std::string_view> FileSource::next() {
  for (;;) {
    ssize_t n = ::read(m_fd, m_buffer.data(), m_buffer.size());
    if (n >= 0) return std::string_view(m_buffer.data(), static_cast<std::size_t>(n));
    if (errno != EINTR) return unexpected(Error::from_errno("read " + m_what, errno));
  }
}

ChunkQueue::ChunkQueue(std::size_t max_bytes, std::string what)
    : m_max(max_bytes), m_what(std::move(what)) {}

Result<void> ChunkQueue::push(std::string_view data) {
  std::unique_lock lock(m_mutex);
  m_changed.wait(lock, [&] {
    return m_failure || m_stopped || m_queued == 0 || m_queued + data.size() <= m_max;
  });
  if (m_failure) return unexpected(*m_failure);
  if (m_eof || m_stopped)
    return unexpected(ErrorCode::failed_precondition,
                      m_what + ": write after the end of the layer");
  if (data.empty()) return {};
  if (!m_chunks.empty() && m_chunks.back().size() + data.size() <= k_coalesce) {
    m_chunks.back().append(data);
  } else {
    std::string chunk = std::move(m_spare);  // the consumer's last buffer, if it left one
    chunk.clear();
    chunk.reserve(std::max(k_coalesce, data.size()));
    chunk.append(data);
    m_chunks.push_back(std::move(chunk));
  }
  m_queued += data.size();
  m_changed.notify_all();
  return {};
}

void ChunkQueue::close() {
  {
    std::lock_guard lock(m_mutex);
    m_eof = true;
  }
  m_changed.notify_all();
}

void ChunkQueue::abort() {
  {
    std::lock_guard lock(m_mutex);
    m_aborted = true;
  }
  m_changed.notify_all();
}

Result<std::string_view> ChunkQueue::next() {
  std::unique_lock lock(m_mutex);
  m_changed.wait(lock, [&] { return !m_chunks.empty() || m_eof || m_aborted; });
  if (m_aborted) return unexpected(ErrorCode::cancelled, "unpack aborted");
  if (m_chunks.empty()) return std::string_view();
  if (m_spare.capacity() < m_current.capacity()) m_spare = std::move(m_current);
  m_current = std::move(m_chunks.front());
  m_chunks.pop_front();
  m_queued -= m_current.size();
  m_changed.notify_all();
  return std::string_view(m_current);
}

void ChunkQueue::consumer_stopped(std::optional<Error> failure) {
  std::lock_guard lock(m_mutex);
  m_failure = std::move(failure);
  m_stopped = true;
  m_changed.notify_all();
}

// ---- Decompression and the diff_id hash ---------------------------------------------------------

struct StreamDecoder::Codec {
  Codec() = default;
  ~Codec() {
    if (z_ready) ::inflateEnd(&z);
    if (zstd != nullptr) ::ZSTD_freeDCtx(zstd);
  }
  Codec(const Codec&) = delete;
  Codec& operator=(const Codec&) = delete;

  z_stream z{};
  bool z_ready = false;
  ZSTD_DCtx* zstd = nullptr;
  std::vector<char> out;
};

Result<StreamDecoder> StreamDecoder::create(LayerCompression compression, ChunkSource& source,
                                            std::uint64_t max_bytes) {
  auto codec = std::make_unique<Codec>();
  if (compression == LayerCompression::gzip) {
    if (::inflateInit2(&codec->z, 15 + 16) != Z_OK)
      return unexpected(ErrorCode::internal, "inflateInit2");
    codec->z_ready = true;
  } else if (compression == LayerCompression::zstd) {
    codec->zstd = ::ZSTD_createDCtx();
    if (codec->zstd == nullptr) return unexpected(ErrorCode::internal, "ZSTD_createDCtx");
  }
  if (compression != LayerCompression::none) codec->out.resize(k_out_chunk);
  return StreamDecoder(compression, source, max_bytes, std::move(codec));
}

StreamDecoder::StreamDecoder(LayerCompression compression, ChunkSource& source,
                             std::uint64_t max_bytes, std::unique_ptr<Codec> codec)
    : m_compression(compression), m_source(source), m_max(max_bytes), m_codec(std::move(codec)) {}

StreamDecoder::~StreamDecoder() = default;
StreamDecoder::StreamDecoder(StreamDecoder&&) noexcept = default;

Result<std::string_view> StreamDecoder::read() {
  for (;;) {
    if (m_pending.empty() && !m_flush && !m_eof) {
      ENVD_TRY(m_pending, m_source.next());
      if (m_pending.empty()) m_eof = true;
    }
    ENVD_TRY(std::string_view out, produce());
    // A full output buffer may leave output inside the decompressor: ask again before reading
    // more input.
    m_flush = m_compression != LayerCompression::none && out.size() == m_codec->out.size();
    if (!out.empty()) {
      m_total += out.size();
      if (m_total > m_max)
        return unexpected(ErrorCode::invalid_argument, "uncompressed stream exceeds the limit of " +
                                                           std::to_string(m_max) + " bytes");
      m_hash.update(out);
      return out;
    }
    if (m_eof && m_pending.empty()) {
      if (m_compression != LayerCompression::none && (m_in_frame || !m_started))
        return unexpected(ErrorCode::invalid_argument,
                          std::string(m_started ? "truncated " : "empty ") +
                              (m_compression == LayerCompression::gzip ? "gzip" : "zstd") +
                              " stream");
      return std::string_view();
    }
  }
}

Result<void> StreamDecoder::drain() {
  for (;;) {
    ENVD_TRY(std::string_view out, read());
    if (out.empty()) return {};
  }
}

oci::Digest StreamDecoder::finish() {
  return m_hash.finish();
}

Result<std::string_view> StreamDecoder::produce() {
  if (m_compression == LayerCompression::gzip) return inflate_some();
  if (m_compression == LayerCompression::zstd) return zstd_some();
  return std::exchange(m_pending, {});
}

Result<std::string_view> StreamDecoder::inflate_some() {
  z_stream& z = m_codec->z;
  std::vector<char>& out = m_codec->out;
  if (!m_in_frame) {  // between members: only new input starts the next one
    if (m_pending.empty()) return std::string_view();
    if (m_started && ::inflateReset(&z) != Z_OK)
      return unexpected(ErrorCode::internal, "inflateReset");
    m_started = m_in_frame = true;
  }
  uInt avail = static_cast<uInt>(std::min<std::size_t>(m_pending.size(), 1u << 30));
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(m_pending.data()));
  z.avail_in = avail;
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  int rc = ::inflate(&z, Z_NO_FLUSH);
  m_pending.remove_prefix(avail - z.avail_in);
  if (rc == Z_STREAM_END) {
    m_in_frame = false;
  } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
    return unexpected(ErrorCode::invalid_argument,
                      std::string("corrupt gzip stream: ") + (z.msg ? z.msg : "inflate failed"));
  }
  return std::string_view(out.data(), out.size() - z.avail_out);
}

Result<std::string_view> StreamDecoder::zstd_some() {
  // No input: only output still inside the decompressor can come, and only from an unfinished
  // frame. After a frame that ended exactly as it filled the buffer (rc 0), a call without input
  // would start the next frame and report it unfinished: a spurious "truncated".
  if (m_pending.empty() && (!m_flush || !m_in_frame)) return std::string_view();
  if (!m_pending.empty()) m_started = true;
  ZSTD_inBuffer in{m_pending.data(), m_pending.size(), 0};
  ZSTD_outBuffer out{m_codec->out.data(), m_codec->out.size(), 0};
  std::size_t rc = ::ZSTD_decompressStream(m_codec->zstd, &out, &in);
  if (::ZSTD_isError(rc))
    return unexpected(ErrorCode::invalid_argument,
                      std::string("corrupt zstd stream: ") + ::ZSTD_getErrorName(rc));
  m_pending.remove_prefix(in.pos);
  // 0: a frame is complete and flushed; anything else: inside a frame (or output pending).
  m_in_frame = rc != 0;
  return std::string_view(m_codec->out.data(), out.pos);
}

}  // namespace detail

}  // namespace envd::node
