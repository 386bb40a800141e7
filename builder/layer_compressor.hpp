// The compressed half of a layer: the blob's bytes hashed and counted on their way to the store,
// and the compressors (gzip, zstd, none) that feed them, with fixed parameters so equal tars give
// equal blobs. Used by write_layer (layer_writer.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>

#include "builder/layer_writer.hpp"
#include "envd/oci/digest.hpp"
#include "envd/store/blob_store.hpp"

namespace envd::builder {

// Hashes and counts the blob's bytes on their way to the store, so the blob digest is known at
// the end without reading the blob back.
class BlobSink {
 public:
  explicit BlobSink(store::BlobWriter& writer) : m_writer(writer) {}

  Result<void> write(const void* data, std::size_t size) {
    if (size == 0) return {};
    std::string_view bytes(static_cast<const char*>(data), size);
    m_hash.update(bytes);
    m_size += size;
    return m_writer.write(bytes);
  }
  std::uint64_t size() const { return m_size; }
  oci::Digest finish() { return m_hash.finish(); }

 private:
  store::BlobWriter& m_writer;
  oci::Sha256 m_hash;
  std::uint64_t m_size = 0;
};

// Takes the tar stream in pieces; finish() ends the compressed stream.
class Compressor {
 public:
  virtual ~Compressor() = default;
  virtual Result<void> write(std::string_view data) = 0;
  virtual Result<void> finish() = 0;
};

// A compressor for `compression` writing into `out`; zstd takes its context from `contexts` when
// given (and returns it when done), else makes its own.
Result<std::unique_ptr<Compressor>> make_compressor(Compression compression, BlobSink& out,
                                                    CompressionContexts* contexts);

}  // namespace envd::builder
