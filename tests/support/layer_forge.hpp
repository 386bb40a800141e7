// Test support: crafting OCI layers byte by byte, well-formed or malicious (names like "../x",
// links out of the root, device nodes, whiteout tricks, compression bombs, damaged streams), so
// that the unpacker, the puller and the CLI can be shown to refuse them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "envd/oci/digest.hpp"

namespace envd::test {

enum class ForgeCompression { none, gzip, zstd };

// The OCI layer media type for a compression ("application/vnd.oci.image.layer.v1.tar+gzip").
std::string_view forge_media_type(ForgeCompression compression);

// One tar entry. `name` and `link` are written exactly as given (no normalisation: "../x",
// "/abs", ".wh..wh..opq" and 300-character names all reach the tar, the long ones through pax
// headers). Build with the factories, adjust with the with_* setters:
//   ForgeEntry::file("etc/passwd", "root:x:0:0\n").with_mode(04755).with_mtime(1700000000)
struct ForgeEntry {
  enum class Type { file, dir, symlink, hardlink, char_device, block_device, fifo };

  Type type = Type::file;
  std::string name;
  std::string content;          // file: its bytes
  std::string link;             // symlink: the target; hardlink: the name it links to
  std::uint32_t mode = 0644;    // permission bits, setuid/setgid/sticky included as given
  std::int64_t mtime = 0;       // seconds since the epoch
  std::int64_t mtime_nsec = 0;  // written (pax) when non-zero
  std::uint32_t dev_major = 0;  // char/block devices
  std::uint32_t dev_minor = 0;
  std::uint64_t zero_bytes = 0;  // file: this many zero bytes follow `content` (bombs, big files)

  static ForgeEntry file(std::string name, std::string content, std::uint32_t mode = 0644);
  static ForgeEntry dir(std::string name, std::uint32_t mode = 0755);
  static ForgeEntry symlink(std::string name, std::string target);
  static ForgeEntry hardlink(std::string name, std::string target);
  static ForgeEntry char_device(std::string name, std::uint32_t major = 1, std::uint32_t minor = 3);
  static ForgeEntry block_device(std::string name, std::uint32_t major = 8,
                                 std::uint32_t minor = 0);
  static ForgeEntry fifo(std::string name);
  // An OCI whiteout removing `path` ("usr/lib/x" gives "usr/lib/.wh.x"), an empty file.
  static ForgeEntry whiteout(std::string_view path);
  // An OCI opaque marker for directory `dir` ("usr/lib" gives "usr/lib/.wh..wh..opq").
  static ForgeEntry opaque(std::string_view dir);

  ForgeEntry&& with_mode(std::uint32_t m) && {
    mode = m;
    return std::move(*this);
  }
  ForgeEntry&& with_mtime(std::int64_t sec, std::int64_t nsec = 0) && {
    mtime = sec;
    mtime_nsec = nsec;
    return std::move(*this);
  }
};

// A forged layer: the blob as a registry serves it, with the digests a manifest and a config
// would name.
struct ForgedLayer {
  std::string blob;  // compressed bytes
  ForgeCompression compression = ForgeCompression::gzip;
  oci::Digest digest;   // sha256 of `blob`
  oci::Digest diff_id;  // sha256 of the uncompressed tar
  std::uint64_t uncompressed_size = 0;

  std::string_view media_type() const { return forge_media_type(compression); }
};

// A pax tar (what OCI layers are; subsecond mtimes kept) of `entries`, in order, ending with the
// end-of-archive blocks. Throws std::runtime_error when libarchive refuses an entry.
std::string forge_tar(const std::vector<ForgeEntry>& entries);

// `data` compressed as the layer media types expect (gzip: one member; zstd: one frame).
std::string forge_compress(std::string_view data, ForgeCompression compression);

// The layer of `entries`. The tar streams through the compressor: a layer with gigabytes of
// zero_bytes needs no gigabytes of memory (only its compressed form is kept).
ForgedLayer forge_layer(const std::vector<ForgeEntry>& entries,
                        ForgeCompression compression = ForgeCompression::gzip);

// A layer whose uncompressed tar is `tar` exactly (e.g. hand-edited headers).
ForgedLayer forge_layer_from_tar(std::string_view tar, ForgeCompression compression);

// A compression bomb: one file "bomb" of `uncompressed_bytes` zero bytes (1 GiB is a few MB of
// gzip and a few tens of kB of zstd). diff_id and digest are correct: only limits stop it.
ForgedLayer forge_compression_bomb(std::uint64_t uncompressed_bytes,
                                   ForgeCompression compression = ForgeCompression::zstd);

// Damaged copies of a layer. `digest` is recomputed over the damaged blob (so a registry serves
// it as valid content); `diff_id` stays the original one, as the image config would name it.
// The first `keep` bytes of the blob.
ForgedLayer forge_truncated(const ForgedLayer& layer, std::size_t keep);
// The blob with the byte at `offset` XORed with `mask`.
ForgedLayer forge_flipped_byte(const ForgedLayer& layer, std::size_t offset,
                               std::uint8_t mask = 0x01);
// The blob followed by `extra` (trailing garbage after the compressed stream).
ForgedLayer forge_appended(const ForgedLayer& layer, std::string_view extra);

}  // namespace envd::test
