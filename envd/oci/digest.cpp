// Digest validation and SHA-256 through OpenSSL's EVP interface (uses the CPU's SHA extensions).
#include "envd/oci/digest.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

namespace envd::oci {

Result<Digest> Digest::parse(std::string_view text) {
  constexpr std::string_view k_prefix = "sha256:";
  auto bad = [&](std::string_view why) {
    std::string shown(text.substr(0, 80));
    return Error(ErrorCode::invalid_argument,
                 "invalid digest \"" + shown + "\": " + std::string(why));
  };
  if (text.substr(0, k_prefix.size()) != k_prefix) return bad("algorithm must be sha256");
  auto hex = text.substr(k_prefix.size());
  if (hex.size() != 64) return bad("sha256 hex must be 64 characters");
  for (char c : hex) {
    bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
    if (!ok) return bad("hex must be lowercase 0-9a-f");
  }
  Digest d;
  std::copy(text.begin(), text.end(), d.m_text.begin());
  return d;
}

Digest Digest::from_bytes(std::span<const std::uint8_t, 32> bytes) {
  static constexpr char k_hex[] = "0123456789abcdef";
  static constexpr std::string_view k_prefix = "sha256:";
  Digest d;
  std::copy(k_prefix.begin(), k_prefix.end(), d.m_text.begin());
  std::size_t i = k_prefix.size();
  for (auto b : bytes) {
    d.m_text[i++] = k_hex[b >> 4];
    d.m_text[i++] = k_hex[b & 0xf];
  }
  return d;
}

namespace {

// OpenSSL 3 looks the algorithm up in its provider registry on every init that names it through
// EVP_sha256() (an "implicit fetch", with locks): measurable at one init per file. Fetch once.
// https://www.openssl.org/docs/man3.0/man7/crypto.html#Performance
const EVP_MD* sha256_md() {
  static EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  return md;
}

}  // namespace

struct Sha256::Impl {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ~Impl() { EVP_MD_CTX_free(ctx); }
};

Sha256::Sha256() : m_impl(std::make_unique<Impl>()) {
  // Allocation failure or a missing sha256 provider is a broken installation, not bad input.
  [[maybe_unused]] int ok = EVP_DigestInit_ex2(m_impl->ctx, sha256_md(), nullptr);
  assert(ok == 1);
}
Sha256::~Sha256() = default;
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::update(const void* data, std::size_t size) {
  EVP_DigestUpdate(m_impl->ctx, data, size);
}

Digest Sha256::finish() {
  std::array<std::uint8_t, 32> out{};
  unsigned int len = 0;
  EVP_DigestFinal_ex(m_impl->ctx, out.data(), &len);
  assert(len == 32);
  return Digest::from_bytes(out);
}

Digest sha256_of(std::string_view data) {
  Sha256 h;
  h.update(data);
  return h.finish();
}

Result<FileDigest> sha256_fd(int fd, std::string_view what,
                             std::optional<std::uint64_t> expected_size) {
  // 256 KiB reads: large enough to amortise syscalls, small enough to stay in L2.
  static thread_local std::vector<char> buf(256 * 1024);
  Sha256 h;
  std::uint64_t total = 0;
  while (!expected_size || total < *expected_size) {
    std::size_t want = buf.size();
    if (expected_size)
      want = static_cast<std::size_t>(std::min<std::uint64_t>(want, *expected_size - total));
    ssize_t n = ::read(fd, buf.data(), want);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::from_errno("read " + std::string(what), errno);
    }
    if (n == 0) break;
    h.update(buf.data(), static_cast<std::size_t>(n));
    total += static_cast<std::uint64_t>(n);
  }
  return FileDigest{h.finish(), total};
}

Result<FileDigest> sha256_file(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return Error::from_errno("open " + path.string(), errno);
  auto r = sha256_fd(fd, path.string());
  ::close(fd);
  return r;
}

}  // namespace envd::oci
