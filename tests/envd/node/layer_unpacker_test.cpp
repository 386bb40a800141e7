// Tests for the safe layer unpacker: forged layers (valid ones in every compression, and every
// malicious trick the issue lists) are streamed in from another thread; each refusal names the
// layer and the entry, and a canary directory beside the destination never changes.
#include "envd/node/layer_unpacker.hpp"

#include <doctest/doctest.h>
#include <sys/stat.h>

#include <optional>
#include <random>
#include <thread>

#include "support/layer_forge.hpp"
#include "support/scratch_dir.hpp"

#ifdef ENVD_TEST_WITH_BUILDER_LAYER
#include "builder/layer_writer.hpp"
#include "envd/store/memory_blob_store.hpp"
#endif

namespace fs = std::filesystem;
using namespace envd;
using node::LayerCompression;
using node::LayerUnpacker;
using node::UnpackLimits;
using node::UnpackStats;
using test::ForgeCompression;
using test::ForgedLayer;
using test::ForgeEntry;

namespace {

const std::string k_what = "layer sha256:feedface of test/evil:v1";

LayerCompression compression_of(ForgeCompression c) {
  switch (c) {
    case ForgeCompression::none:
      return LayerCompression::none;
    case ForgeCompression::gzip:
      return LayerCompression::gzip;
    case ForgeCompression::zstd:
      return LayerCompression::zstd;
  }
  return LayerCompression::none;
}

// A destination directory with a canary directory beside it.
struct Sandbox {
  test::ScratchDir scratch;
  fs::path dest = scratch / "layer";
  fs::path canary = scratch / "canary";
  std::map<std::string, std::string> before;

  Sandbox() {
    fs::create_directory(dest);
    test::write_file(canary / "secret", "secret\n");
    test::write_file(canary / "dir/file", "file\n");
    ::chmod((canary / "secret").c_str(), 0600);
    before = outside();
  }
  // The canary's tree and the scratch directory's own entries, destination left out.
  // (tree_listing of the scratch directory itself would not do: its keys come from
  // fs::relative, which resolves the symlinks a layer creates, e.g. layer/evil -> ../canary.)
  std::map<std::string, std::string> outside() const {
    auto out = test::tree_listing(canary);
    for (const auto& e : fs::directory_iterator(scratch.path())) {
      if (e.path().filename() == "layer") continue;
      struct stat st {};
      ::lstat(e.path().c_str(), &st);
      out["../" + e.path().filename().string()] = std::to_string(st.st_mode) + " " +
                                                  std::to_string(st.st_mtim.tv_sec) + "." +
                                                  std::to_string(st.st_mtim.tv_nsec);
    }
    return out;
  }
};

// Streams `layer` into an unpacker from a thread other than the one that started it, `chunk`
// bytes per write(); stops feeding at the first failed write (finish() then reports it).
Result<UnpackStats> unpack(const ForgedLayer& layer, const fs::path& dest, UnpackLimits limits = {},
                           std::size_t chunk = 4093, std::optional<oci::Digest> diff_id = {}) {
  auto started = LayerUnpacker::start(dest, compression_of(layer.compression),
                                      diff_id.value_or(layer.diff_id), limits, k_what);
  REQUIRE(started);
  std::optional<Result<UnpackStats>> out;
  std::thread feeder([&] {
    std::string_view blob = layer.blob;
    for (std::size_t offset = 0; offset < blob.size(); offset += chunk)
      if (!(*started)->write(blob.substr(offset, chunk))) break;
    out.emplace((*started)->finish());
  });
  feeder.join();
  return std::move(*out);
}

bool contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

void check_refused(const Result<UnpackStats>& r, const Sandbox& box, std::string_view entry,
                   ErrorCode code = ErrorCode::invalid_argument) {
  REQUIRE_FALSE(r);
  INFO(r.error().message());
  CHECK(r.error().code() == code);
  CHECK(contains(r.error().message(), k_what));
  CHECK(contains(r.error().message(), entry));
  auto now = box.outside();
  for (const auto& [k, v] : now)
    if (box.before.count(k) == 0 || box.before.at(k) != v) MESSAGE("changed: " << k << " " << v);
  CHECK(now == box.before);
  CHECK(test::read_file(box.canary / "secret") == "secret\n");
}

struct stat lstat_of(const fs::path& p) {
  struct stat st {};
  REQUIRE(::lstat(p.c_str(), &st) == 0);
  return st;
}

std::string random_bytes(std::size_t n, unsigned seed = 7) {
  std::mt19937_64 rng(seed);
  std::string out(n, '\0');
  for (std::size_t i = 0; i < n; i += 8) {
    std::uint64_t v = rng();
    for (std::size_t j = 0; j < 8 && i + j < n; ++j) out[i + j] = static_cast<char>(v >> (8 * j));
  }
  return out;
}

struct EvilCase {
  std::string label;
  std::vector<ForgeEntry> entries;
  std::string entry;  // what the message must name
};

std::vector<EvilCase> evil_cases(const fs::path& canary) {
  using E = ForgeEntry;
  const std::string abs_canary = canary.string();
  return {
      {"dot-dot", {E::file("../escape", "x")}, "../escape"},
      {"dot-dot inside a path", {E::dir("a"), E::file("a/../../escape", "x")}, "a/../../escape"},
      {"absolute dot-dot", {E::file("/../escape", "x")}, "/../escape"},
      {"write through a relative symlink",
       {E::symlink("evil", "../canary"), E::file("evil/pwned", "x")},
       "evil/pwned"},
      {"write through an absolute symlink",
       {E::symlink("evil", abs_canary), E::file("evil/pwned", "x")},
       "evil/pwned"},
      {"mkdir through a symlink",
       {E::symlink("evil", "../canary"), E::dir("evil/newdir")},
       "evil/newdir"},
      {"symlink through a symlink",
       {E::symlink("evil", "../canary"), E::symlink("evil/l", "/x")},
       "evil/l"},
      {"symlink chain",
       {E::symlink("a", "b"), E::symlink("b", "../canary"), E::file("a/pwned", "x")},
       "a/pwned"},
      {"symlink chain across directories",
       {E::dir("d"), E::symlink("d/l1", "../l2"), E::symlink("l2", "../canary"),
        E::file("d/l1/pwned", "x")},
       "d/l1/pwned"},
      {"hardlink with dot-dot", {E::hardlink("h", "../canary/secret")}, "\"h\""},
      {"hardlink to an absolute outside path", {E::hardlink("h", abs_canary + "/secret")}, "\"h\""},
      {"hardlink through a symlink",
       {E::symlink("l", "../canary"), E::hardlink("h", "l/secret")},
       "\"h\""},
      {"hardlink placed through a symlink",
       {E::file("f", "x"), E::symlink("l", "../canary"), E::hardlink("l/h", "f")},
       "l/h"},
      {"hardlink to a directory", {E::dir("d"), E::hardlink("h", "d")}, "\"h\""},
      {"symlink then hardlink then chmod",
       {E::symlink("s", "../canary/secret"), E::hardlink("h", "s"), E::file("h", "pwned", 0777)},
       "\"h\""},
      {"symlink then hardlink then chmod, absolute",
       {E::symlink("s", abs_canary + "/secret"), E::hardlink("h", "s"),
        E::file("h", "pwned", 0777)},
       "\"h\""},
      {"whiteout of ..", {E::file(".wh..", "")}, ".wh.."},
      {"whiteout of .. in a directory", {E::dir("a"), E::file("a/.wh..", "")}, "a/.wh.."},
      {"whiteout of nothing", {E::file("a/.wh.", "")}, "\"a/.wh.\""},
      {"whiteout through a symlinked parent",
       {E::symlink("l", "../canary"), E::whiteout("l/secret")},
       "l/.wh.secret"},
      {"opaque through a symlinked parent",
       {E::symlink("l", "../canary"), E::opaque("l")},
       "l/.wh..wh..opq"},
      {"whiteout used as a directory", {E::file(".wh.x/y", "")}, ".wh.x/y"},
      {"component over the limit",
       {E::file("d/" + std::string(300, 'n'), "x")},
       std::string(40, 'n')},
  };
}

}  // namespace

TEST_CASE("malicious layers are refused, naming the layer and the entry, and nothing escapes") {
  Sandbox probe;
  for (const EvilCase& c : evil_cases(probe.canary)) {
    for (ForgeCompression comp : {ForgeCompression::gzip, ForgeCompression::zstd}) {
      CAPTURE(c.label);
      CAPTURE(static_cast<int>(comp));
      Sandbox box;
      // The absolute cases name the probe's canary: point them at this box's one.
      std::vector<ForgeEntry> entries = c.entries;
      for (ForgeEntry& e : entries)
        if (e.link.starts_with(probe.canary.string()))
          e.link = box.canary.string() + e.link.substr(probe.canary.string().size());
      check_refused(unpack(test::forge_layer(entries, comp), box.dest), box, c.entry);
    }
  }
}

TEST_CASE(
    "a valid layer unpacks with modes, mtimes, links and whiteout markers, in every compression") {
  using E = ForgeEntry;
  const std::string long_dir = std::string(120, 'd');
  const std::string long_name = long_dir + "/" + std::string(200, 'f') + ".txt";
  const std::vector<ForgeEntry> entries = {
      E::dir("usr").with_mtime(1000),
      E::dir("usr/lib", 0750).with_mtime(2000, 500),
      E::file("usr/lib/a.py", "print(1)\n").with_mtime(1700000000, 123456789),
      E::file("usr/bin/tool", "#!/bin/sh\n", 0755).with_mtime(1700000001),  // implicit usr/bin
      E::symlink("usr/bin/link", "tool").with_mtime(1600000000),
      E::hardlink("usr/bin/tool2", "usr/bin/tool"),
      E::file("/abs/inside", "absolute name"),
      E::file("./dot/x", "dot"),
      E::file(long_name, "pax long name"),
      E::file("setuid", "s", 04755),
      E::file("setgid", "s", 02750),
      E::dir("sticky", 01777),
      E::char_device("dev/null"),
      E::block_device("dev/sda"),
      E::fifo("fifo"),
      E::whiteout("usr/old"),
      E::opaque("usr/lib"),
      E::file("empty", ""),
      E::file("donn\xc3\xa9"
              "es/na\xc3\xaf"
              "ve.txt",
              "utf-8 name"),
      E::file("dup", "first"),
      E::file("dup", "second", 0600),
      E::file("was-dir/child", "x"),
      E::file("was-dir", "now a file"),
      E::file("was-file", "x"),
      E::dir("was-file"),
      E::file("was-file/child", "y"),
      E::symlink("was-link", "../canary/secret"),
      E::file("was-link", "regular"),
  };
  for (ForgeCompression comp :
       {ForgeCompression::none, ForgeCompression::gzip, ForgeCompression::zstd}) {
    CAPTURE(static_cast<int>(comp));
    Sandbox box;
    ForgedLayer layer = test::forge_layer(entries, comp);
    auto r = unpack(layer, box.dest);
    REQUIRE_MESSAGE(r, (r ? "" : r.error().message()));
    CHECK(r->diff_id == layer.diff_id);
    CHECK(r->entries == entries.size());
    CHECK(r->whiteouts == 2);
    const fs::path& d = box.dest;

    struct stat lib = lstat_of(d / "usr/lib");
    CHECK((lib.st_mode & 07777) == 0750);
    CHECK(lib.st_mtim.tv_sec == 2000);
    CHECK(lib.st_mtim.tv_nsec == 500);
    CHECK(lstat_of(d / "usr").st_mtim.tv_sec == 1000);
    struct stat py = lstat_of(d / "usr/lib/a.py");
    CHECK(py.st_mtim.tv_sec == 1700000000);
    CHECK(py.st_mtim.tv_nsec == 123456789);
    CHECK((py.st_mode & 07777) == 0644);
    CHECK((lstat_of(d / "usr/bin").st_mode & 07777) == 0755);
    struct stat tool = lstat_of(d / "usr/bin/tool");
    CHECK((tool.st_mode & 07777) == 0755);
    CHECK(tool.st_mtim.tv_sec == 1700000001);
    CHECK(tool.st_nlink == 2);
    CHECK(lstat_of(d / "usr/bin/tool2").st_ino == tool.st_ino);
    CHECK(fs::read_symlink(d / "usr/bin/link") == "tool");
    CHECK(lstat_of(d / "usr/bin/link").st_mtim.tv_sec == 1600000000);
    CHECK(test::read_file(d / "abs/inside") == "absolute name");
    CHECK(test::read_file(d / "dot/x") == "dot");
    CHECK(test::read_file(d / long_name) == "pax long name");
    CHECK((lstat_of(d / "setuid").st_mode & 07777) == 0755);
    CHECK((lstat_of(d / "setgid").st_mode & 07777) == 0750);
    CHECK((lstat_of(d / "sticky").st_mode & 07777) == 0777);
    CHECK_FALSE(fs::exists(fs::symlink_status(d / "dev/null")));
    CHECK_FALSE(fs::exists(fs::symlink_status(d / "dev/sda")));
    CHECK_FALSE(fs::exists(fs::symlink_status(d / "fifo")));
    CHECK(fs::is_regular_file(fs::symlink_status(d / "usr/.wh.old")));
    CHECK(fs::file_size(d / "usr/.wh.old") == 0);
    CHECK(fs::is_regular_file(fs::symlink_status(d / "usr/lib/.wh..wh..opq")));
    CHECK(fs::file_size(d / "empty") == 0);
    CHECK(test::read_file(d / "donn\xc3\xa9"
                              "es/na\xc3\xaf"
                              "ve.txt") == "utf-8 name");
    CHECK(test::read_file(d / "dup") == "second");
    CHECK((lstat_of(d / "dup").st_mode & 07777) == 0600);
    CHECK(test::read_file(d / "was-dir") == "now a file");
    CHECK(test::read_file(d / "was-file/child") == "y");
    CHECK(fs::is_regular_file(fs::symlink_status(d / "was-link")));
    CHECK(test::read_file(d / "was-link") == "regular");
    CHECK(box.outside() == box.before);
  }
}

TEST_CASE("a compression bomb stops at the size limit") {
  UnpackLimits limits;
  limits.max_bytes = 16u << 20;
  for (ForgeCompression comp : {ForgeCompression::gzip, ForgeCompression::zstd}) {
    CAPTURE(static_cast<int>(comp));
    ForgedLayer bomb = test::forge_compression_bomb(256u << 20, comp);
    CHECK(bomb.blob.size() < (1u << 20));
    Sandbox box;
    check_refused(unpack(bomb, box.dest, limits), box, "\"bomb\"");
    CHECK_FALSE(fs::exists(box.dest / "bomb"));
  }
  SUBCASE("many files, each under the limit, add up over it") {
    std::vector<ForgeEntry> entries;
    for (int i = 0; i < 5; ++i) {
      entries.push_back(ForgeEntry::file("f" + std::to_string(i), ""));
      entries.back().zero_bytes = 4u << 20;
    }
    Sandbox box;
    check_refused(unpack(test::forge_layer(entries, ForgeCompression::zstd), box.dest, limits), box,
                  "\"f4\"");
  }
  SUBCASE("zeros after the end of the tar stop at the stream limit") {
    limits.max_bytes = 1u << 20;
    limits.max_entries = 10;
    std::string tar =
        test::forge_tar({ForgeEntry::file("small", "x")}) + std::string(64u << 20, '\0');
    Sandbox box;
    auto r = unpack(test::forge_layer_from_tar(tar, ForgeCompression::gzip), box.dest, limits);
    check_refused(r, box, "exceeds the limit");
  }
}

TEST_CASE("limits on entry count and name length") {
  UnpackLimits limits;
  limits.max_entries = 10;
  std::vector<ForgeEntry> entries;
  for (int i = 0; i < 20; ++i) entries.push_back(ForgeEntry::file("e" + std::to_string(i), "x"));
  Sandbox box;
  check_refused(unpack(test::forge_layer(entries), box.dest, limits), box, "\"e10\"");

  UnpackLimits short_paths;
  short_paths.max_path_length = 100;
  std::string name = std::string(60, 'a') + "/" + std::string(60, 'b');
  Sandbox box2;
  check_refused(unpack(test::forge_layer({ForgeEntry::file(name, "x")}), box2.dest, short_paths),
                box2, std::string(60, 'b'));
}

TEST_CASE("truncated streams are refused, naming the entry being read") {
  std::vector<ForgeEntry> entries = {ForgeEntry::file("small", "x"),
                                     ForgeEntry::file("big.bin", random_bytes(1u << 20))};
  for (ForgeCompression comp :
       {ForgeCompression::none, ForgeCompression::gzip, ForgeCompression::zstd}) {
    CAPTURE(static_cast<int>(comp));
    ForgedLayer layer = test::forge_layer(entries, comp);
    Sandbox box;
    check_refused(unpack(test::forge_truncated(layer, layer.blob.size() / 2), box.dest), box,
                  "big.bin");
  }
  SUBCASE("a compressed stream cut in its trailer") {
    for (ForgeCompression comp : {ForgeCompression::gzip, ForgeCompression::zstd}) {
      ForgedLayer layer = test::forge_layer({ForgeEntry::file("a", "x")}, comp);
      Sandbox box;
      check_refused(unpack(test::forge_truncated(layer, layer.blob.size() - 3), box.dest), box,
                    "truncated");
    }
  }
}

TEST_CASE("a wrong diff_id, one flipped byte and trailing garbage are refused") {
  std::vector<ForgeEntry> entries = {ForgeEntry::file("data.bin", random_bytes(200000, 3))};
  for (ForgeCompression comp :
       {ForgeCompression::none, ForgeCompression::gzip, ForgeCompression::zstd}) {
    CAPTURE(static_cast<int>(comp));
    ForgedLayer layer = test::forge_layer(entries, comp);
    Sandbox box;
    auto wrong = unpack(layer, box.dest, {}, 4093, oci::sha256_of("another layer"));
    check_refused(wrong, box, oci::sha256_of("another layer").str(), ErrorCode::digest_mismatch);

    for (std::size_t offset : {std::size_t{600}, layer.blob.size() / 2, layer.blob.size() - 1}) {
      CAPTURE(offset);
      Sandbox flipped;
      auto r = unpack(test::forge_flipped_byte(layer, offset), flipped.dest);
      REQUIRE_FALSE(r);
      CHECK((r.error().code() == ErrorCode::digest_mismatch ||
             r.error().code() == ErrorCode::invalid_argument));
      CHECK(contains(r.error().message(), k_what));
      CHECK(flipped.outside() == flipped.before);
    }
    Sandbox garbage;
    auto r = unpack(test::forge_appended(layer, "garbage!"), garbage.dest);
    REQUIRE_FALSE(r);
    CHECK(contains(r.error().message(), k_what));
  }
  SUBCASE("not a tar") {
    Sandbox box;
    auto r = unpack(test::forge_layer_from_tar(std::string(4096, 'z'), ForgeCompression::gzip),
                    box.dest);
    check_refused(r, box, "tar");
  }
}

TEST_CASE("streaming: one-byte writes, and a large layer through the bounded queue") {
  ForgedLayer small = test::forge_layer({ForgeEntry::dir("d"), ForgeEntry::file("d/f", "hello")},
                                        ForgeCompression::gzip);
  Sandbox box;
  auto r = unpack(small, box.dest, {}, 1);
  REQUIRE(r);
  CHECK(test::read_file(box.dest / "d/f") == "hello");

  std::string big = random_bytes(24u << 20, 11);
  ForgedLayer layer = test::forge_layer({ForgeEntry::file("big", big)}, ForgeCompression::zstd);
  Sandbox box2;
  auto r2 = unpack(layer, box2.dest, {}, 64 * 1024);
  REQUIRE(r2);
  CHECK(r2->bytes == big.size());
  CHECK(oci::sha256_file(box2.dest / "big")->digest == oci::sha256_of(big));
}

TEST_CASE("gzip members and zstd frames may be concatenated") {
  std::string tar = test::forge_tar(
      {ForgeEntry::file("a", random_bytes(100000, 1)), ForgeEntry::file("b", "bee")});
  std::string_view first = std::string_view(tar).substr(0, 70001);
  std::string_view rest = std::string_view(tar).substr(70001);
  for (ForgeCompression comp : {ForgeCompression::gzip, ForgeCompression::zstd}) {
    CAPTURE(static_cast<int>(comp));
    ForgedLayer layer = test::forge_layer_from_tar(tar, comp);
    layer.blob = test::forge_compress(first, comp) + test::forge_compress(rest, comp);
    Sandbox box;
    auto r = unpack(layer, box.dest);
    REQUIRE_MESSAGE(r, (r ? "" : r.error().message()));
    CHECK(r->diff_id == oci::sha256_of(tar));
    CHECK(test::read_file(box.dest / "b") == "bee");
  }
}

TEST_CASE("a failure stops write(): the feeder learns it before sending the rest") {
  std::vector<ForgeEntry> entries = {ForgeEntry::file("../escape", "x"),
                                     ForgeEntry::file("big", random_bytes(24u << 20, 5))};
  ForgedLayer layer = test::forge_layer(entries, ForgeCompression::none);
  Sandbox box;
  auto started = LayerUnpacker::start(box.dest, LayerCompression::none, layer.diff_id, {}, k_what);
  REQUIRE(started);
  std::optional<Error> write_error;
  std::optional<Result<UnpackStats>> finished;
  std::thread feeder([&] {
    std::string_view blob = layer.blob;
    for (std::size_t offset = 0; offset < blob.size(); offset += 65536) {
      auto w = (*started)->write(blob.substr(offset, 65536));
      if (!w) {
        write_error = w.error();
        break;
      }
    }
    finished.emplace((*started)->finish());
  });
  feeder.join();
  REQUIRE(write_error);
  CHECK(write_error->code() == ErrorCode::invalid_argument);
  CHECK(contains(write_error->message(), "../escape"));
  REQUIRE_FALSE(*finished);
  CHECK(finished->error().message() == write_error->message());
  CHECK(box.outside() == box.before);
}

TEST_CASE("an unpacker destroyed mid-stream stops; write after finish is refused") {
  ForgedLayer layer = test::forge_layer({ForgeEntry::file("big", random_bytes(4u << 20))});
  Sandbox box;
  {
    auto started =
        LayerUnpacker::start(box.dest, LayerCompression::gzip, layer.diff_id, {}, k_what);
    REQUIRE(started);
    REQUIRE((*started)->write(std::string_view(layer.blob).substr(0, layer.blob.size() / 2)));
  }  // destroyed: the unpack thread is told to stop and joined
  Sandbox box2;
  auto started = LayerUnpacker::start(box2.dest, LayerCompression::gzip, layer.diff_id, {}, k_what);
  REQUIRE(started);
  REQUIRE((*started)->write(layer.blob));
  REQUIRE((*started)->finish());
  auto late = (*started)->write("more");
  REQUIRE_FALSE(late);
  CHECK(late.error().code() == ErrorCode::failed_precondition);

  auto missing =
      LayerUnpacker::start(box.scratch / "nope", LayerCompression::gzip, layer.diff_id, {}, k_what);
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code() == ErrorCode::not_found);
}

TEST_CASE("unpack_layer_file unpacks a blob on disk") {
  ForgedLayer layer =
      test::forge_layer({ForgeEntry::file("etc/os-release", "ID=test\n")}, ForgeCompression::zstd);
  Sandbox box;
  test::write_file(box.scratch / "blob", layer.blob);
  auto r = node::unpack_layer_file(box.scratch / "blob", box.dest, LayerCompression::zstd,
                                   layer.diff_id, {}, k_what);
  REQUIRE(r);
  CHECK(r->diff_id == layer.diff_id);
  CHECK(test::read_file(box.dest / "etc/os-release") == "ID=test\n");

  Sandbox box2;
  auto bad = node::unpack_layer_file(box2.scratch / "blob", box2.dest, LayerCompression::zstd,
                                     layer.diff_id, {}, k_what);
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code() == ErrorCode::not_found);
  CHECK(contains(bad.error().message(), k_what));
}

TEST_CASE("layer media types") {
  CHECK(*node::layer_compression("application/vnd.oci.image.layer.v1.tar") ==
        LayerCompression::none);
  CHECK(*node::layer_compression("application/vnd.oci.image.layer.v1.tar+gzip") ==
        LayerCompression::gzip);
  CHECK(*node::layer_compression("application/vnd.oci.image.layer.v1.tar+zstd") ==
        LayerCompression::zstd);
  CHECK(*node::layer_compression("application/vnd.docker.image.rootfs.diff.tar.gzip") ==
        LayerCompression::gzip);
  auto foreign =
      node::layer_compression("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip");
  REQUIRE_FALSE(foreign);
  CHECK(foreign.error().code() == ErrorCode::invalid_argument);
  CHECK_FALSE(node::layer_compression("application/vnd.oci.image.layer.v1.tar+gzip+encrypted"));
}

#ifdef ENVD_TEST_WITH_BUILDER_LAYER
TEST_CASE("a layer written by envd's builder round-trips") {
  Sandbox box;
  test::write_file(box.scratch / "src/lib/mod.py", "x = 1\n");
  test::write_file(box.scratch / "src/bin/tool", "#!/bin/sh\n");
  auto entry = [&](std::string path, const fs::path& source, std::uint32_t mode) {
    builder::LayerEntry e;
    e.path = std::move(path);
    e.mode = mode;
    auto hashed = oci::sha256_file(source);
    REQUIRE(hashed);
    e.size = hashed->size;
    e.digest = hashed->digest;
    e.source = source.string();
    return e;
  };
  builder::LayerEntry link;
  link.path = "opt/env/bin/python";
  link.type = snapshot::FileType::symlink;
  link.target = "/usr/bin/python3";
  std::vector<builder::LayerEntry> entries = {
      // sorted by path, as write_layer wants
      link, entry("opt/env/bin/tool", box.scratch / "src/bin/tool", 0755),
      entry("opt/env/lib/mod.py", box.scratch / "src/lib/mod.py", 0644)};
  for (auto [bc, lc] : {std::pair{builder::Compression::zstd, LayerCompression::zstd},
                        std::pair{builder::Compression::gzip, LayerCompression::gzip}}) {
    store::MemoryBlobStore blobs;
    builder::FileContentSource content;
    auto built = builder::write_layer(entries, content, bc, blobs);
    REQUIRE_MESSAGE(built, (built ? "" : built.error().message()));
    auto bytes = blobs.read_all(built->blob.digest);
    REQUIRE(bytes);
    fs::path dest = box.scratch / ("layer-" + std::to_string(static_cast<int>(bc)));
    fs::create_directory(dest);
    auto started = LayerUnpacker::start(dest, lc, built->diff_id, {}, k_what);
    REQUIRE(started);
    REQUIRE((*started)->write(*bytes));
    auto r = (*started)->finish();
    REQUIRE_MESSAGE(r, (r ? "" : r.error().message()));
    CHECK(test::read_file(dest / "opt/env/lib/mod.py") == "x = 1\n");
    CHECK((lstat_of(dest / "opt/env/bin/tool").st_mode & 0777) == 0755);
    CHECK(fs::read_symlink(dest / "opt/env/bin/python") == "/usr/bin/python3");
  }
}
#endif
