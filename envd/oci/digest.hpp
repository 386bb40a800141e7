// Digest (a validated "sha256:<64 lowercase hex>") and streaming SHA-256 through OpenSSL EVP.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "envd/util/error.hpp"

namespace envd::oci {

// A content digest. Only sha256 is accepted; the hex part is exactly 64 lowercase hex digits, so
// a Digest is always safe to use as a path component. Stored inline (no heap allocation): a
// snapshot holds one per file.
class Digest {
 public:
  // Errors: invalid_argument naming the bad text (wrong algorithm, length, case or characters).
  static Result<Digest> parse(std::string_view text);
  // From 32 raw bytes.
  static Digest from_bytes(std::span<const std::uint8_t, 32> bytes);

  static constexpr std::size_t k_text_size = 71;  // "sha256:" + 64 hex

  std::string str() const { return std::string(view()); }  // "sha256:..."
  std::string_view view() const { return std::string_view(m_text.data(), k_text_size); }
  std::string_view hex() const { return view().substr(7); }
  std::string_view algorithm() const { return "sha256"; }

  friend bool operator==(const Digest&, const Digest&) = default;
  friend auto operator<=>(const Digest&, const Digest&) = default;

 private:
  Digest() = default;
  std::array<char, k_text_size> m_text{};
};

// Incremental SHA-256. Not thread-safe; one instance per stream.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void update(const void* data, std::size_t size);
  void update(std::string_view data) { update(data.data(), data.size()); }
  // Finishes the stream; the object must not be updated afterwards.
  Digest finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

Digest sha256_of(std::string_view data);

// Result of hashing a file: its digest and the number of bytes read.
struct FileDigest {
  Digest digest;
  std::uint64_t size;
};

// Hashes an open file descriptor from its current offset to EOF (does not close it). With
// `expected_size`, stops after that many bytes without the final zero-length read: for callers
// that verify the size independently (fstat before and after), it saves a syscall per file.
// Errors: io naming `what`.
Result<FileDigest> sha256_fd(int fd, std::string_view what,
                             std::optional<std::uint64_t> expected_size = std::nullopt);

// Opens and hashes a file (O_NOFOLLOW: a symlink is an error). Errors: not_found,
// permission_denied, io.
Result<FileDigest> sha256_file(const std::filesystem::path& path);

}  // namespace envd::oci

template <>
struct std::hash<envd::oci::Digest> {
  std::size_t operator()(const envd::oci::Digest& d) const noexcept {
    return std::hash<std::string_view>{}(d.view());
  }
};
