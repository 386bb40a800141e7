// write_file_atomic, fsync_directory and read_file: content, modes, and that a failure leaves the
// target and its directory exactly as they were.
#include "envd/util/atomic_file.hpp"

#include <doctest/doctest.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <latch>
#include <string>
#include <thread>
#include <vector>

#include "support/scratch_dir.hpp"

namespace envd {
namespace {

namespace fs = std::filesystem;
using envd::test::ScratchDir;
using envd::test::tree_listing;

std::vector<std::string> names_in(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST_CASE("write_file_atomic creates a file with the content and mode, and no temp file") {
  ScratchDir scratch;
  auto r = write_file_atomic(scratch / "out.txt", "new content", 0600);
  REQUIRE_MESSAGE(r.has_value(), r.error().message());
  CHECK(envd::test::read_file(scratch / "out.txt") == "new content");
  struct stat st {};
  REQUIRE(::stat((scratch / "out.txt").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);
  CHECK(names_in(scratch.path()) == std::vector<std::string>{"out.txt"});
}

TEST_CASE("write_file_atomic replaces existing content") {
  ScratchDir scratch;
  envd::test::write_file(scratch / "out.txt", "old content that is longer than the new");
  REQUIRE(write_file_atomic(scratch / "out.txt", "new").has_value());
  CHECK(envd::test::read_file(scratch / "out.txt") == "new");
  REQUIRE(write_file_atomic(scratch / "out.txt", "").has_value());
  CHECK(envd::test::read_file(scratch / "out.txt") == "");
  CHECK(names_in(scratch.path()) == std::vector<std::string>{"out.txt"});
}

TEST_CASE("write_file_atomic into a missing directory fails with not_found and writes nothing") {
  ScratchDir scratch;
  envd::test::write_file(scratch / "keep", "x");
  const auto before = tree_listing(scratch.path());
  auto r = write_file_atomic(scratch / "missing" / "out.txt", "content");
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code() == ErrorCode::not_found);
  CHECK(tree_listing(scratch.path()) == before);
}

TEST_CASE("write_file_atomic onto a directory fails and leaves it and its parent unchanged") {
  ScratchDir scratch;
  envd::test::write_file(scratch / "target" / "inside", "kept");
  const auto before = tree_listing(scratch.path());
  auto r = write_file_atomic(scratch / "target", "content");
  REQUIRE_FALSE(r.has_value());
  CHECK(fs::is_directory(scratch / "target"));
  CHECK(envd::test::read_file(scratch / "target" / "inside") == "kept");
  CHECK(tree_listing(scratch.path()) == before);  // no temp file left next to the target
}

TEST_CASE("write_file_atomic from many threads leaves one whole version and no temp files") {
  ScratchDir scratch;
  constexpr int k_threads = 8;
  std::vector<std::string> versions;
  for (int i = 0; i < k_threads; ++i) versions.push_back(std::string(100000, char('a' + i)));
  std::latch start(k_threads);
  std::vector<int> failed(k_threads, 0);
  std::vector<std::thread> threads;
  for (int i = 0; i < k_threads; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      failed[i] = write_file_atomic(scratch / "shared", versions[i]).has_value() ? 0 : 1;
    });
  }
  for (auto& t : threads) t.join();
  CHECK(std::count(failed.begin(), failed.end(), 1) == 0);
  auto content = envd::test::read_file(scratch / "shared");
  CHECK(std::find(versions.begin(), versions.end(), content) != versions.end());
  CHECK(names_in(scratch.path()) == std::vector<std::string>{"shared"});
}

TEST_CASE("read_file returns the bytes, including NULs") {
  ScratchDir scratch;
  const std::string data("a\0b\nc", 5);
  envd::test::write_file(scratch / "f", data);
  auto r = read_file(scratch / "f");
  REQUIRE(r.has_value());
  CHECK(*r == data);
}

TEST_CASE("read_file of a missing path gives not_found") {
  ScratchDir scratch;
  envd::test::write_file(scratch / "file", "x");
  auto missing = read_file(scratch / "nope");
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().code() == ErrorCode::not_found);
  // A path through a regular file (ENOTDIR) is just as missing.
  auto through_file = read_file(scratch / "file" / "child");
  REQUIRE_FALSE(through_file.has_value());
  CHECK(through_file.error().code() == ErrorCode::not_found);
}

TEST_CASE("fsync_directory succeeds on a directory and fails with not_found when missing") {
  ScratchDir scratch;
  CHECK(fsync_directory(scratch.path()).has_value());
  auto r = fsync_directory(scratch / "missing");
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code() == ErrorCode::not_found);
}

}  // namespace envd
