// FileContentSource with a vouch: a file vouched for by its stat is streamed unhashed, and any
// change to it (before the read or during it) is still caught.
#include "builder/content_source.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>

#include "support/scratch_dir.hpp"

namespace fs = std::filesystem;
using namespace envd;
using builder::FileContentSource;
using builder::LayerEntry;
using test::ScratchDir;

namespace {

StatKey stat_of(const fs::path& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return stat_key(st);
}

LayerEntry entry_for(const fs::path& source, std::string_view content) {
  LayerEntry e;
  e.path = "opt/app/f";
  e.size = content.size();
  e.digest = oci::sha256_of(content);
  e.source = source.string();
  return e;
}

// A vouch like the stat cache's: yes for exactly the stat recorded with the digest.
struct RecordingVouch {
  StatKey recorded;
  oci::Digest digest;
  std::atomic<int> asked{0};
  builder::ContentVouch fn() {
    return [this](const LayerEntry& e, const StatKey& st) {
      ++asked;
      return st == recorded && e.digest && *e.digest == digest;
    };
  }
};

Result<std::string> read_all(builder::ContentSource& source, const LayerEntry& e) {
  std::string out;
  auto r = source.read(e, [&](std::string_view chunk) -> Result<void> {
    out.append(chunk);
    return {};
  });
  if (!r) return r.error();
  return out;
}

}  // namespace

TEST_CASE("a vouched file is read at its recorded stat without hashing it again") {
  ScratchDir dir;
  const std::string content(600 * 1024, 'x');  // several chunks
  test::write_file(dir / "f", content);
  RecordingVouch vouch{stat_of(dir / "f"), oci::sha256_of(content)};
  FileContentSource source(vouch.fn());

  auto r = read_all(source, entry_for(dir / "f", content));
  REQUIRE(r);
  CHECK(*r == content);
  CHECK(vouch.asked == 1);

  // Proof that the hash is skipped: a vouch that wrongly says yes lets a wrong digest through,
  // which a verified read never does (the size is still checked).
  LayerEntry wrong = entry_for(dir / "f", content);
  wrong.digest = oci::sha256_of("other");
  FileContentSource blind([](const LayerEntry&, const StatKey&) { return true; });
  CHECK(read_all(blind, wrong));
  FileContentSource plain;
  auto verified = read_all(plain, wrong);
  REQUIRE(!verified);
  CHECK(verified.error().code() == ErrorCode::digest_mismatch);
}

TEST_CASE("a file changed after it was hashed is not vouched for and fails verification") {
  ScratchDir dir;
  const std::string content = "print('hello')\n";
  test::write_file(dir / "f", content);
  RecordingVouch vouch{stat_of(dir / "f"), oci::sha256_of(content)};
  const LayerEntry e = entry_for(dir / "f", content);

  SUBCASE("same size, other bytes, new inode") {
    test::write_file(dir / "g", "PRINT('HELLO')\n");
    fs::rename(dir / "g", dir / "f");
  }
  SUBCASE("same size, other bytes, in place, mtime moved") {
    {
      std::ofstream out(dir / "f", std::ios::binary | std::ios::in | std::ios::out);
      out << "PRINT";
    }
    struct timespec times[2] = {{1, 0}, {1, 0}};
    REQUIRE(::utimensat(AT_FDCWD, (dir / "f").c_str(), times, 0) == 0);
  }
  SUBCASE("grown") {
    std::ofstream out(dir / "f", std::ios::binary | std::ios::app);
    out << "# more\n";
  }
  SUBCASE("shrunk") {
    REQUIRE(::truncate((dir / "f").c_str(), 3) == 0);
  }
  FileContentSource source(vouch.fn());
  auto r = read_all(source, e);
  REQUIRE(!r);
  CHECK(r.error().code() == ErrorCode::digest_mismatch);
  CHECK(r.error().message().find((dir / "f").string()) != std::string::npos);
}

TEST_CASE("a vouched file that changes while it is read fails with digest_mismatch") {
  ScratchDir dir;
  const std::string content(600 * 1024, 'y');
  test::write_file(dir / "f", content);
  RecordingVouch vouch{stat_of(dir / "f"), oci::sha256_of(content)};
  FileContentSource source(vouch.fn());
  bool wrote = false;
  auto r = source.read(entry_for(dir / "f", content), [&](std::string_view) -> Result<void> {
    if (!wrote) {  // a writer appends after the first chunk: the stat after the read differs
      std::ofstream out(dir / "f", std::ios::binary | std::ios::app);
      out << "z";
      wrote = true;
    }
    return {};
  });
  REQUIRE(!r);
  CHECK(vouch.asked == 1);
  CHECK(r.error().code() == ErrorCode::digest_mismatch);
  CHECK(r.error().message().find("changed while it was read") != std::string::npos);
}
