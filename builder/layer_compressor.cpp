// Compressors for layer blobs (see layer_compressor.hpp), and the pool of zstd contexts that
// the layers of one build share.
#include "builder/layer_compressor.hpp"

#include <zlib.h>
#include <zstd.h>

#include <mutex>
#include <string>
#include <vector>

namespace envd::builder {

namespace {

constexpr std::size_t k_out_chunk = 256 * 1024;

class PassThrough final : public Compressor {
 public:
  explicit PassThrough(BlobSink& out) : m_out(out) {}
  Result<void> write(std::string_view data) override {
    return m_out.write(data.data(), data.size());
  }
  Result<void> finish() override { return {}; }

 private:
  BlobSink& m_out;
};

// gzip through zlib's deflate with a gzip wrapper (windowBits 15+16), level 6 as `gzip -6`, and
// a fixed header: mtime 0, no name, OS 3 (Unix) whatever the platform, so equal tars give equal
// blobs. https://www.rfc-editor.org/rfc/rfc1952 §2.3; https://zlib.net/manual.html (deflateInit2)
class GzipCompressor final : public Compressor {
 public:
  explicit GzipCompressor(BlobSink& out) : m_out(out), m_buffer(k_out_chunk) {}
  ~GzipCompressor() override {
    if (m_initialised) ::deflateEnd(&m_stream);
  }
  GzipCompressor(const GzipCompressor&) = delete;
  GzipCompressor& operator=(const GzipCompressor&) = delete;

  Result<void> init() {
    if (::deflateInit2(&m_stream, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
      return Error(ErrorCode::internal, "gzip: deflateInit2 failed");
    }
    m_initialised = true;
    m_header.time = 0;
    m_header.os = 3;
    // zlib keeps a pointer to m_header until the header is written: it is a member for that.
    if (::deflateSetHeader(&m_stream, &m_header) != Z_OK) {
      return Error(ErrorCode::internal, "gzip: deflateSetHeader failed");
    }
    return {};
  }

  Result<void> write(std::string_view data) override {
    while (!data.empty()) {
      // avail_in is 32 bits wide: feed very large inputs in pieces.
      std::size_t piece = std::min<std::size_t>(data.size(), 1u << 30);
      m_stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
      m_stream.avail_in = static_cast<uInt>(piece);
      do {
        ENVD_TRY_VOID(step(Z_NO_FLUSH));
      } while (m_stream.avail_out == 0);
      data.remove_prefix(piece);
    }
    return {};
  }

  Result<void> finish() override {
    m_stream.next_in = nullptr;
    m_stream.avail_in = 0;
    int rc = Z_OK;
    while (rc != Z_STREAM_END) {
      ENVD_TRY(rc, step(Z_FINISH));
    }
    return {};
  }

 private:
  Result<int> step(int flush) {
    m_stream.next_out = reinterpret_cast<Bytef*>(m_buffer.data());
    m_stream.avail_out = static_cast<uInt>(m_buffer.size());
    int rc = ::deflate(&m_stream, flush);
    if (rc == Z_STREAM_ERROR) return Error(ErrorCode::internal, "gzip: deflate failed");
    ENVD_TRY_VOID(m_out.write(m_buffer.data(), m_buffer.size() - m_stream.avail_out));
    return rc;
  }

  BlobSink& m_out;
  std::vector<char> m_buffer;
  z_stream m_stream{};
  gz_header m_header{};
  bool m_initialised = false;
};

// zstd through libzstd's streaming API: level 3 (the CLI default), content checksum on (as the
// CLI writes it), and multithreaded mode with a fixed worker count. In that mode the output
// depends neither on the number of workers nor on scheduling (`zstd -T1`, `-T2` and `-T4` give
// identical bytes; only single-thread mode, nbWorkers 0, differs), so digests stay reproducible
// across machines while compression overlaps with reading, hashing and tar on the calling
// thread, as in `tar | zstd -T0`. https://github.com/facebook/zstd/blob/v1.5.4/lib/zstd.h
constexpr int k_zstd_workers = 2;

struct FreeCctx {
  void operator()(ZSTD_CCtx* ctx) const { ::ZSTD_freeCCtx(ctx); }
};
using CctxPtr = std::unique_ptr<ZSTD_CCtx, FreeCctx>;

Error zstd_failure(std::size_t rc) {
  return Error(ErrorCode::internal, std::string("zstd: ") + ::ZSTD_getErrorName(rc));
}

Result<CctxPtr> new_zstd_context() {
  CctxPtr ctx(::ZSTD_createCCtx());
  if (!ctx) return Error(ErrorCode::internal, "zstd: cannot create a compression context");
  for (auto [param, value] :
       {std::pair{ZSTD_c_compressionLevel, 3}, std::pair{ZSTD_c_checksumFlag, 1},
        std::pair{ZSTD_c_nbWorkers, k_zstd_workers}}) {
    std::size_t rc = ::ZSTD_CCtx_setParameter(ctx.get(), param, value);
    if (::ZSTD_isError(rc)) return zstd_failure(rc);
  }
  return ctx;
}

}  // namespace

// Idle contexts, each reset to a new frame with its parameters (set once, above) kept: what the
// next layer gets is indistinguishable from a new context but for its allocated buffers.
struct CompressionContexts::Impl {
  std::mutex mutex;
  std::vector<CctxPtr> idle;

  Result<CctxPtr> take() {
    {
      std::lock_guard lock(mutex);
      if (!idle.empty()) {
        CctxPtr ctx = std::move(idle.back());
        idle.pop_back();
        return ctx;
      }
    }
    return new_zstd_context();
  }
  void give_back(CctxPtr ctx) {
    // Ends whatever frame was in progress (a failed layer), waiting for its jobs.
    if (::ZSTD_isError(::ZSTD_CCtx_reset(ctx.get(), ZSTD_reset_session_only))) return;
    std::lock_guard lock(mutex);
    idle.push_back(std::move(ctx));
  }
};

CompressionContexts::CompressionContexts() : m_impl(std::make_unique<Impl>()) {}
CompressionContexts::~CompressionContexts() = default;

namespace {

class ZstdCompressor final : public Compressor {
 public:
  ZstdCompressor(BlobSink& out, CompressionContexts* contexts)
      : m_out(out), m_buffer(k_out_chunk), m_contexts(contexts) {}
  ~ZstdCompressor() override {
    if (m_contexts != nullptr && m_ctx) m_contexts->impl().give_back(std::move(m_ctx));
  }
  ZstdCompressor(const ZstdCompressor&) = delete;
  ZstdCompressor& operator=(const ZstdCompressor&) = delete;

  Result<void> init() {
    if (m_contexts != nullptr) {
      ENVD_TRY(m_ctx, m_contexts->impl().take());
    } else {
      ENVD_TRY(m_ctx, new_zstd_context());
    }
    return {};
  }

  Result<void> write(std::string_view data) override {
    ZSTD_inBuffer in{data.data(), data.size(), 0};
    while (in.pos < in.size) {
      ENVD_TRY_VOID(step(in, ZSTD_e_continue));
    }
    return {};
  }

  Result<void> finish() override {
    ZSTD_inBuffer in{nullptr, 0, 0};
    std::size_t remaining = 1;
    while (remaining != 0) {
      ENVD_TRY(remaining, step(in, ZSTD_e_end));
    }
    return {};
  }

 private:
  Result<std::size_t> step(ZSTD_inBuffer& in, ZSTD_EndDirective mode) {
    ZSTD_outBuffer out{m_buffer.data(), m_buffer.size(), 0};
    std::size_t rc = ::ZSTD_compressStream2(m_ctx.get(), &out, &in, mode);
    if (::ZSTD_isError(rc)) return zstd_failure(rc);
    ENVD_TRY_VOID(m_out.write(m_buffer.data(), out.pos));
    return rc;
  }

  BlobSink& m_out;
  std::vector<char> m_buffer;
  CompressionContexts* m_contexts;
  CctxPtr m_ctx;
};

}  // namespace

Result<std::unique_ptr<Compressor>> make_compressor(Compression compression, BlobSink& out,
                                                    CompressionContexts* contexts) {
  switch (compression) {
    case Compression::gzip: {
      auto gzip = std::make_unique<GzipCompressor>(out);
      ENVD_TRY_VOID(gzip->init());
      return std::unique_ptr<Compressor>(std::move(gzip));
    }
    case Compression::zstd: {
      auto zstd = std::make_unique<ZstdCompressor>(out, contexts);
      ENVD_TRY_VOID(zstd->init());
      return std::unique_ptr<Compressor>(std::move(zstd));
    }
    case Compression::none:
      return std::unique_ptr<Compressor>(std::make_unique<PassThrough>(out));
  }
  return Error(ErrorCode::invalid_argument, "unknown compression");
}

}  // namespace envd::builder
