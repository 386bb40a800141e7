// Tests for where an envd image's files belong: read from its snapshot (file lists skipped, the
// file never followed out of the image), and the roots record written beside an assembled rootfs,
// which a launch reads instead, falling back to the snapshot when there is none or it is damaged.
#include "envd/node/image_roots.hpp"

#include <doctest/doctest.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>

#include "support/scratch_dir.hpp"

namespace fs = std::filesystem;
using envd::ErrorCode;
using envd::node::detail::ImageRoots;
using envd::node::detail::load_image_roots;
using envd::node::detail::read_image_roots;
using envd::node::detail::read_roots_record;
using envd::node::detail::roots_record_path;
using envd::node::detail::roots_record_text;
using envd::node::detail::write_roots_record;
using envd::test::read_file;
using envd::test::ScratchDir;
using envd::test::tree_listing;
using envd::test::write_file;

namespace {

// A snapshot naming `prefix` (a venv), a partial base at /usr and the source root `src`, with file
// lists holding characters a careless scan would trip on.
std::string snapshot_text(const std::string& prefix, const std::string& src) {
  const std::string files = R"([{"path":"a]\"b[\\","size":1,"type":"file"}])";
  return R"({"environments":[{"kind":"venv","packages":[{"files":)" + files +
         R"(,"name":"p"}],"partial":false,"prefix":")" + prefix + R"(","unowned":)" + files +
         R"(},{"kind":"prefix","packages":[],"partial":true,"prefix":"/usr","unowned":[]}],)"
         R"("sources":[{"files":)" +
         files + R"(,"root":")" + src + R"("}]})";
}

fs::path make_rootfs(const ScratchDir& dir, const std::string& prefix = "/opt/team/env",
                     const std::string& src = "/srv/app") {
  const fs::path rootfs = dir / "env/rootfs";
  write_file(rootfs / ".envd/snapshot.json", snapshot_text(prefix, src));
  return rootfs;
}

void check_roots(const ImageRoots& roots, const std::string& prefix, const std::string& src) {
  REQUIRE(roots.environments.size() == 2);
  CHECK(roots.environments[0].prefix == prefix);
  CHECK(roots.environments[0].kind == "venv");
  CHECK_FALSE(roots.environments[0].partial);
  CHECK(roots.environments[1].prefix == "/usr");
  CHECK(roots.environments[1].kind == "prefix");
  CHECK(roots.environments[1].partial);
  CHECK(roots.sources == std::vector<std::string>{src});
}

}  // namespace

TEST_CASE("the snapshot's roots are read past its file lists") {
  ScratchDir dir;
  const fs::path rootfs = make_rootfs(dir);
  auto roots = read_image_roots(rootfs / ".envd/snapshot.json");
  REQUIRE_MESSAGE(roots, (roots ? "" : roots.error().message()));
  check_roots(*roots, "/opt/team/env", "/srv/app");
}

TEST_CASE("a snapshot that is a symlink or not a regular file is refused, not followed") {
  ScratchDir dir;
  const fs::path envd_dir = dir / "rootfs/.envd";
  fs::create_directories(envd_dir);
  // /dev/zero would never end; a FIFO would block the open.
  fs::create_symlink("/dev/zero", envd_dir / "snapshot.json");
  const auto started = std::chrono::steady_clock::now();
  auto link = read_image_roots(envd_dir / "snapshot.json");
  REQUIRE_FALSE(link);
  CHECK(link.error().code() == ErrorCode::invalid_argument);
  CHECK(link.error().message().find("symlink") != std::string::npos);
  fs::remove(envd_dir / "snapshot.json");
  REQUIRE(::mkfifo((envd_dir / "snapshot.json").c_str(), 0600) == 0);
  auto fifo = read_image_roots(envd_dir / "snapshot.json");
  REQUIRE_FALSE(fifo);
  CHECK(fifo.error().code() == ErrorCode::invalid_argument);
  CHECK(fifo.error().message().find("not a regular file") != std::string::npos);
  CHECK(std::chrono::steady_clock::now() - started < std::chrono::seconds(5));
}

TEST_CASE("the record is written beside the rootfs and read back with the snapshot's roots") {
  ScratchDir dir;
  const fs::path rootfs = make_rootfs(dir);
  const auto rootfs_before = tree_listing(rootfs);
  auto written = write_roots_record(rootfs);
  REQUIRE_MESSAGE(written, (written ? "" : written.error().message()));
  CHECK(*written);
  const fs::path record = dir / "env/rootfs.roots.json";
  CHECK(roots_record_path(rootfs) == record);
  CHECK(roots_record_path(rootfs.string()) == record);
  CHECK(tree_listing(rootfs) == rootfs_before);  // the image itself is untouched
  CHECK(tree_listing(dir / "env").size() == rootfs_before.size() + 2);  // rootfs/ and the record
  const std::string text = read_file(record);
  CHECK(text.size() < 400);
  CHECK(text.find("application/vnd.envd.image-roots.v1+json") != std::string::npos);
  auto roots = read_roots_record(record);
  REQUIRE_MESSAGE(roots, (roots ? "" : roots.error().message()));
  check_roots(*roots, "/opt/team/env", "/srv/app");
}

TEST_CASE("no record for a rootfs without a snapshot or with one that is refused") {
  ScratchDir dir;
  write_file(dir / "plain/rootfs/bin/sh", "#!\n");
  const auto before = tree_listing(dir.path());
  auto plain = write_roots_record(dir / "plain/rootfs");
  REQUIRE(plain);
  CHECK_FALSE(*plain);
  CHECK(tree_listing(dir.path()) == before);

  const fs::path bad = make_rootfs(dir, "/opt/../etc");
  auto refused = write_roots_record(bad);
  REQUIRE(refused);
  CHECK_FALSE(*refused);
  CHECK_FALSE(fs::exists(roots_record_path(bad)));
  // The launch reads the snapshot and reports the problem then.
  auto loaded = load_image_roots(bad);
  REQUIRE_FALSE(loaded);
  CHECK(loaded.error().code() == ErrorCode::invalid_argument);
  CHECK(loaded.error().message().find("/opt/../etc") != std::string::npos);
}

TEST_CASE("a launch reads the record when there is one, else the snapshot") {
  ScratchDir dir;
  const fs::path rootfs = make_rootfs(dir);
  // No record (assembled by an older envd): the snapshot.
  auto old = load_image_roots(rootfs);
  REQUIRE_MESSAGE(old, (old ? "" : old.error().message()));
  check_roots(*old, "/opt/team/env", "/srv/app");

  // A record naming other roots than the snapshot shows that the record, not the snapshot, is
  // what is read.
  ImageRoots other;
  other.environments.push_back({"/opt/other", "conda", false});
  write_file(roots_record_path(rootfs), roots_record_text(other));
  auto recorded = load_image_roots(rootfs);
  REQUIRE_MESSAGE(recorded, (recorded ? "" : recorded.error().message()));
  REQUIRE(recorded->environments.size() == 1);
  CHECK(recorded->environments[0].prefix == "/opt/other");
  CHECK(recorded->environments[0].kind == "conda");
  CHECK(recorded->sources.empty());
}

TEST_CASE("a damaged record is refused, and a launch reads the snapshot instead") {
  ScratchDir dir;
  const fs::path rootfs = make_rootfs(dir);
  const fs::path record = roots_record_path(rootfs);
  const std::string media = R"("media_type":"application/vnd.envd.image-roots.v1+json")";
  const std::vector<std::string> damages = {
      "",
      "{\"environments\": [",
      R"({"media_type":"application/vnd.envd.image-roots.v2+json","environments":[],"sources":[]})",
      R"({"environments":[],"sources":[]})",
      "{" + media + R"(,"environments":[{"prefix":"/opt/../etc","kind":"venv"}],"sources":[]})",
      "{" + media + R"(,"environments":[],"sources":[{"root":"relative"}]})",
      "{" + media + R"(,"environments":[{"kind":"venv"}],"sources":[]})",
      "[]"};
  for (const std::string& damaged : damages) {
    CAPTURE(damaged);
    write_file(record, damaged);
    auto direct = read_roots_record(record);
    REQUIRE_FALSE(direct);
    CHECK(direct.error().code() == ErrorCode::invalid_argument);
    CHECK(direct.error().message().find(record.string()) != std::string::npos);
    auto loaded = load_image_roots(rootfs);
    REQUIRE_MESSAGE(loaded, (loaded ? "" : loaded.error().message()));
    check_roots(*loaded, "/opt/team/env", "/srv/app");
  }
  // A record that is a symlink is not followed either.
  fs::remove(record);
  fs::create_symlink("/dev/zero", record);
  CHECK(read_roots_record(record).error().code() == ErrorCode::invalid_argument);
  auto loaded = load_image_roots(rootfs);
  REQUIRE(loaded);
  check_roots(*loaded, "/opt/team/env", "/srv/app");
  fs::remove(record);
  CHECK(read_roots_record(record).error().code() == ErrorCode::not_found);
}
