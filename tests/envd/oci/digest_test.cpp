// Digest parsing (the path-safety gate) and SHA-256: NIST vectors, streaming, files.
#include "envd/oci/digest.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <string>

#include "support/scratch_dir.hpp"

namespace envd::oci {
namespace {

constexpr std::string_view k_empty_hex =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
constexpr std::string_view k_abc_hex =
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

std::string sha(std::string_view hex) {
  return "sha256:" + std::string(hex);
}

}  // namespace

TEST_CASE("Digest::parse accepts sha256 with 64 lowercase hex digits") {
  auto d = Digest::parse(sha(k_abc_hex));
  REQUIRE(d.has_value());
  CHECK(d->str() == sha(k_abc_hex));
  CHECK(d->hex() == k_abc_hex);
  CHECK(d->algorithm() == "sha256");
}

TEST_CASE("Digest::parse rejects everything else with invalid_argument") {
  const std::string upper = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";
  const std::string bad[] = {
      "",
      "sha256:../../x",
      "sha256:" + upper,
      "sha256:" + std::string(k_abc_hex.substr(0, 63)),
      sha(k_abc_hex) + "0",
      sha(k_abc_hex) + "/",
      "sha256:" + std::string(k_abc_hex.substr(0, 62)) + "/x",
      "sha256:" + std::string(k_abc_hex.substr(0, 63)) + "g",
      "md5:900150983cd24fb0d6963f7d28e17f72",
      "sha512:" + std::string(k_abc_hex),
      "SHA256:" + std::string(k_abc_hex),
      std::string(k_abc_hex),
      " " + sha(k_abc_hex),
      "sha256:",
  };
  for (const auto& text : bad) {
    INFO("input: \"" << text << "\"");
    auto d = Digest::parse(text);
    REQUIRE_FALSE(d.has_value());
    CHECK(d.error().code() == ErrorCode::invalid_argument);
  }
}

TEST_CASE("Digest::from_bytes renders lowercase hex") {
  std::array<std::uint8_t, 32> bytes{};
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::uint8_t>(i * 8 + 7);
  auto d = Digest::from_bytes(bytes);
  CHECK(d.str() == "sha256:070f171f272f373f474f575f676f777f878f979fa7afb7bfc7cfd7dfe7eff7ff");
  CHECK(Digest::parse(d.str()).has_value());
}

TEST_CASE("SHA-256 matches the NIST vectors") {
  // FIPS 180-2 appendix B / NIST CSRC example values.
  CHECK(sha256_of("").str() == sha(k_empty_hex));
  CHECK(sha256_of("abc").str() == sha(k_abc_hex));
  CHECK(sha256_of("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq").str() ==
        sha("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"));
  CHECK(sha256_of(std::string(1000000, 'a')).str() ==
        sha("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"));
}

TEST_CASE("streaming SHA-256 in pieces equals one-shot") {
  std::string data;
  for (int i = 0; i < 300000; ++i) data += static_cast<char>((i * 131 + i / 7) & 0xff);
  const Digest whole = sha256_of(data);
  for (std::size_t piece : {1u, 63u, 64u, 65u, 4096u, 100003u}) {
    INFO("piece size " << piece);
    Sha256 h;
    h.update("");  // empty updates change nothing
    for (std::size_t off = 0; off < data.size(); off += piece) {
      h.update(std::string_view(data).substr(off, piece));
    }
    CHECK(h.finish() == whole);
  }
  Sha256 moved_from;
  moved_from.update("ab");
  Sha256 moved = std::move(moved_from);
  moved.update("c");
  CHECK(moved.finish().str() == sha(k_abc_hex));
}

TEST_CASE("sha256_file hashes a file and reports its size") {
  envd::test::ScratchDir scratch;
  std::string data(200000, 'x');
  data += "tail";
  envd::test::write_file(scratch / "f", data);
  auto r = sha256_file(scratch / "f");
  REQUIRE(r.has_value());
  CHECK(r->digest == sha256_of(data));
  CHECK(r->size == data.size());

  envd::test::write_file(scratch / "empty", "");
  auto empty = sha256_file(scratch / "empty");
  REQUIRE(empty.has_value());
  CHECK(empty->digest.str() == sha(k_empty_hex));
  CHECK(empty->size == 0);
}

TEST_CASE("sha256_fd hashes from the current offset") {
  envd::test::ScratchDir scratch;
  envd::test::write_file(scratch / "f", "xyzabc");
  int fd = ::open((scratch / "f").c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(::lseek(fd, 3, SEEK_SET) == 3);
  auto r = sha256_fd(fd, "f");
  ::close(fd);
  REQUIRE(r.has_value());
  CHECK(r->digest.str() == sha(k_abc_hex));
  CHECK(r->size == 3);
}

TEST_CASE("sha256_file errors: missing file is not_found, a symlink is refused") {
  envd::test::ScratchDir scratch;
  auto missing = sha256_file(scratch / "missing");
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().code() == ErrorCode::not_found);

  envd::test::write_file(scratch / "real", "abc");
  std::filesystem::create_symlink("real", scratch / "link");
  auto link = sha256_file(scratch / "link");
  REQUIRE_FALSE(link.has_value());
  CHECK(link.error().code() == ErrorCode::io);  // ELOOP from O_NOFOLLOW
  CHECK(link.error().message().find((scratch / "link").string()) != std::string::npos);
}

}  // namespace envd::oci

TEST_CASE("sha256_fd with an expected size reads exactly that many bytes") {
  envd::test::ScratchDir dir;
  envd::test::write_file(dir / "f", "abcdef");
  int fd = ::open((dir / "f").c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  auto r = envd::oci::sha256_fd(fd, "f", 3);
  ::close(fd);
  REQUIRE(r);
  CHECK(r->size == 3);
  CHECK(r->digest == envd::oci::sha256_of("abc"));
}
