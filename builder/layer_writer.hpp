// The reproducible layer writer: a sorted list of files becomes one OCI layer (a pax tar,
// compressed) committed to a blob store, with the same bytes for the same content on every run.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "builder/content_source.hpp"
#include "envd/oci/digest.hpp"
#include "envd/oci/image.hpp"
#include "envd/store/blob_store.hpp"
#include "envd/util/error.hpp"

namespace envd::builder {

enum class Compression { zstd, gzip, none };

// The OCI layer media type for a compression (tar, tar+gzip, tar+zstd). Pure.
std::string_view media_type_for(Compression compression);

struct BuiltLayer {
  oci::Descriptor blob;                 // media type, digest and size of the committed blob
  oci::Digest diff_id;                  // sha256 of the uncompressed tar (config rootfs.diff_ids)
  std::uint64_t uncompressed_size = 0;  // bytes of the uncompressed tar
  std::uint64_t files = 0;              // entries written (regular files and symlinks)
};

// zstd compression contexts kept between the layers of one build. A context holds tens of MB of
// buffers, which the kernel hands out zeroed page by page on first touch; a layer that takes a
// context another layer finished with skips that. Keeps at most as many contexts as were in use
// at once; frees them when destroyed. Thread-safe.
class CompressionContexts {
 public:
  CompressionContexts();
  ~CompressionContexts();
  CompressionContexts(const CompressionContexts&) = delete;
  CompressionContexts& operator=(const CompressionContexts&) = delete;

  struct Impl;  // defined in layer_compressor.cpp
  Impl& impl() { return *m_impl; }

 private:
  std::unique_ptr<Impl> m_impl;
};

// Writes `entries` as one reproducible layer into `out`, committed under its digest, and returns
// its descriptor and diff_id. The tar (pax restricted, as libarchive writes it) holds every
// ancestor directory once before its children (0755), then the entries in the given order; uid
// and gid 0 with empty names; modes masked to 0777 (no setuid/setgid/sticky); mtime 0, except a
// .py whose timestamp-based .pyc is in the same layer, which gets the source mtime recorded in
// that .pyc so the bytecode stays valid (see layer_writer.cpp). Hard links (LayerEntry::link):
// the first entry of a link group written in this layer has the content, the group's later
// entries in this layer are hard link entries to its path, without data; a group split over
// layers has its content once in each. gzip and zstd are produced by zlib and libzstd with fixed
// parameters, so the blob digest, too, depends only on the content. Hashing and compression
// happen while streaming: memory stays bounded whatever the layer size (apart from what `out`
// itself buffers).
//
// Errors, with nothing committed: invalid_argument (entries unsorted, duplicated or not
// normalised; a path that is both a file and a directory; a regular file without digest; an empty
// symlink target; a link on a symlink, not normalised or naming the entry itself),
// digest_mismatch naming the file (content differs from entry.digest or entry.size), any error of
// `content` (not_found naming a missing source, ...), io from `out`.
//
// Thread-safe for distinct calls (layers are built in parallel) provided `content` is.
// `contexts`, when given, lends the compression context (the bytes written do not depend on it).
Result<BuiltLayer> write_layer(const std::vector<LayerEntry>& entries, ContentSource& content,
                               Compression compression, store::BlobStore& out,
                               CompressionContexts* contexts = nullptr);

}  // namespace envd::builder
