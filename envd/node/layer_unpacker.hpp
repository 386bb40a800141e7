// Unpacking one OCI layer (tar, gzip or zstd) into its own directory, safely: nothing is ever
// written outside that directory whatever the layer contains, and the uncompressed stream is
// verified against the layer's diff_id. Streams: bytes are fed as they download.
// Spec: https://github.com/opencontainers/image-spec/blob/v1.1.0/layer.md
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "envd/oci/digest.hpp"
#include "envd/registry/registry_client.hpp"
#include "envd/util/error.hpp"

namespace envd::node {

enum class LayerCompression { none, gzip, zstd };

// The compression a layer media type names (OCI and Docker layer types, "+gzip", "+zstd").
// Errors: invalid_argument for other media types (e.g. foreign or encrypted layers).
Result<LayerCompression> layer_compression(std::string_view media_type);

// Limits that stop a hostile layer (a compression bomb, millions of entries, huge names). A file
// whose header size exceeds what is left of max_bytes is refused before its data is
// decompressed. The uncompressed stream as a whole (headers, padding, bytes after the tar's end)
// is capped at max_bytes + max_entries * (16 KiB + 2 * max_path_length) + 1 MiB.
struct UnpackLimits {
  std::uint64_t max_bytes = 64ull << 30;  // file data, uncompressed
  std::uint64_t max_entries = 4'000'000;
  std::size_t max_path_length = 4096;      // entry names, hardlink and symlink targets
  std::size_t max_component_length = 255;  // one name component
};

struct UnpackStats {
  std::uint64_t entries = 0;    // tar entries read, skipped ones included
  std::uint64_t bytes = 0;      // file data written
  std::uint64_t whiteouts = 0;  // whiteout and opaque markers kept for assembly
  oci::Digest diff_id;          // SHA-256 of the uncompressed tar stream
};

// Unpacks one layer into `dest`, an existing empty directory (a staging directory the caller
// renames into place after finish() succeeded: until then its content is unverified).
//
// Layout of `dest`: the layer's entries at their paths (absolute and "./" names taken relative
// to dest); whiteouts (".wh.NAME") and opaque markers (".wh..wh..opq") are kept as empty regular
// files of those names, for assemble_rootfs to apply (other ".wh..wh." AUFS metadata is
// skipped); hardlinks inside the layer are hardlinks. A later entry for a path replaces an
// earlier one (a directory merges with a directory). Modes (permission bits) and mtimes, with
// nanoseconds, are applied; directories get theirs once the layer is complete; parents the
// layer does not list are created 0755 with the unpack time as mtime.
//
// Every entry is written relative to a directory fd opened with O_NOFOLLOW, component by
// component: nothing is ever written through a symlink. Refused with invalid_argument naming the
// layer and the entry: ".." components, names over the limits, a parent that is a symlink (also
// a chain of them) or a file, hardlinks whose target goes through a symlink, is missing (not
// earlier in this layer), is a directory, or is a symlink pointing out of the layer (absolute,
// or climbing above the root: the symlink-then-hardlink-then-chmod escape), whiteouts naming
// "", "." or "..", or used as a directory, entries of unknown types, file data beyond the size
// limit. Device nodes, FIFOs and sockets are skipped (logged); setuid/setgid/sticky bits
// dropped; owners, xattrs and the hardlink entries' own modes not applied (files belong to the
// caller). Symlinks themselves may point anywhere: they are never followed here.
// Errors: invalid_argument (bad entries, limits, not a tar stream, corrupt or truncated stream),
// digest_mismatch (stream does not hash to expected_diff_id), io, cancelled (destroyed
// mid-stream).
// Not thread-safe: one feeder at a time (any thread, not necessarily the one that called
// start()); the unpacking itself runs on an internal thread fed through a bounded queue (8 MiB),
// so write() blocks while the disk is behind and can be called from a download's callback.
class LayerUnpacker final : public registry::BlobSink {
 public:
  // `what` names the layer in messages ("layer sha256:ab.. of team/env:v3").
  static Result<std::unique_ptr<LayerUnpacker>> start(std::filesystem::path dest,
                                                      LayerCompression compression,
                                                      oci::Digest expected_diff_id,
                                                      UnpackLimits limits, std::string what);
  ~LayerUnpacker() override;  // aborts an unfinished unpack (dest keeps partial content)
  LayerUnpacker(const LayerUnpacker&) = delete;
  LayerUnpacker& operator=(const LayerUnpacker&) = delete;

  // The next compressed bytes. Errors: the unpack's error once it failed (stop feeding);
  // failed_precondition after finish().
  Result<void> write(std::string_view data) override;
  // End of the stream: waits for the unpack, then checks the diff_id. Call once.
  Result<UnpackStats> finish();

 private:
  struct Impl;
  explicit LayerUnpacker(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> m_impl;
};

// The same for a whole blob on disk (a layer already in the blob store).
Result<UnpackStats> unpack_layer_file(const std::filesystem::path& blob,
                                      const std::filesystem::path& dest,
                                      LayerCompression compression,
                                      const oci::Digest& expected_diff_id,
                                      const UnpackLimits& limits, const std::string& what);

}  // namespace envd::node
