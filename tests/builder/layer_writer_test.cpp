// Tests for the reproducible layer writer: layers are read back with real tools (zstd, gzip, GNU
// tar, Python's tarfile and import system), and digests are compared across runs and stores.
#include "builder/layer_writer.hpp"

#include <archive.h>
#include <archive_entry.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <clocale>
#include <cstring>
#include <map>
#include <thread>

#include "envd/store/fs_blob_store.hpp"
#include "envd/store/memory_blob_store.hpp"
#include "support/run_command.hpp"
#include "support/scratch_dir.hpp"

namespace fs = std::filesystem;
using namespace envd;
using builder::Compression;
using builder::LayerEntry;
using test::run_command;
using test::ScratchDir;

namespace {

constexpr const char* k_python = "/usr/bin/python3";

LayerEntry file_entry(std::string path, const fs::path& source, std::uint32_t mode = 0644) {
  auto hashed = oci::sha256_file(source);
  REQUIRE(hashed);
  LayerEntry e;
  e.path = std::move(path);
  e.mode = mode;
  e.size = hashed->size;
  e.digest = hashed->digest;
  e.source = source.string();
  return e;
}

LayerEntry symlink_entry(std::string path, std::string target) {
  LayerEntry e;
  e.path = std::move(path);
  e.type = snapshot::FileType::symlink;
  e.mode = 0777;
  e.target = std::move(target);
  return e;
}

void sort_entries(std::vector<LayerEntry>& entries) {
  std::sort(entries.begin(), entries.end(), [](auto& a, auto& b) { return a.path < b.path; });
}

void set_mtime(const fs::path& path, std::int64_t seconds) {
  struct timespec times[2] = {{seconds, 0}, {seconds, 0}};
  REQUIRE(::utimensat(AT_FDCWD, path.c_str(), times, AT_SYMLINK_NOFOLLOW) == 0);
}

struct stat lstat_of(const fs::path& path) {
  struct stat st {};
  REQUIRE(::lstat(path.c_str(), &st) == 0);
  return st;
}

const std::string k_long_name = std::string(120, 'n') + ".txt";
const std::string k_long_target = "../" + std::string(150, 't');

// A small tree with every kind of thing a layer holds, and its entries under opt/app/.
struct Fixture {
  ScratchDir src;
  std::vector<LayerEntry> entries;

  Fixture() {
    test::write_file(src / "bin/tool", "#!/bin/sh\necho hi\n");
    test::write_file(src / "lib/data.txt", "data\n");
    test::write_file(src / "lib/empty", "");
    test::write_file(src / "lib/sub/deep/file.bin", std::string("a\0b\xff\n", 5));
    test::write_file(src / ("share/" + k_long_name), "long\n");
    entries = {file_entry("opt/app/bin/tool", src / "bin/tool", 0755),
               file_entry("opt/app/lib/data.txt", src / "lib/data.txt"),
               file_entry("opt/app/lib/empty", src / "lib/empty", 0600),
               file_entry("opt/app/lib/sub/deep/file.bin", src / "lib/sub/deep/file.bin", 0640),
               file_entry("opt/app/share/" + k_long_name, src / ("share/" + k_long_name)),
               symlink_entry("opt/app/bin/link", "../lib/data.txt"),
               symlink_entry("opt/app/share/far", k_long_target)};
    sort_entries(entries);
  }
};

std::string blob_of(const store::BlobStore& store, const builder::BuiltLayer& layer) {
  auto bytes = store.read_all(layer.blob.digest);
  REQUIRE(bytes);
  return *bytes;
}

// The uncompressed tar, decompressed by the real zstd / gzip tools.
std::string tar_of(const ScratchDir& dir, Compression compression, const std::string& blob) {
  if (compression == Compression::none) return blob;
  fs::path file = dir / "blob";
  test::write_file(file, blob);
  auto r = run_command({compression == Compression::zstd ? "zstd" : "gzip", "-dc", file.string()});
  REQUIRE(r.exit_code == 0);
  return r.out;
}

struct Member {
  std::string name, kind, mode, uid, gid, uname, gname, mtime, size, link;
};

// The members as Python's tarfile reads them (pax headers applied).
std::vector<Member> members_of(const fs::path& tar) {
  auto r = run_command({k_python, "-c", R"(
import sys, tarfile
for m in tarfile.open(sys.argv[1]):
    kind = "dir" if m.isdir() else "sym" if m.issym() else "file" if m.isfile() else "other"
    print("|".join(map(str, [m.name, kind, oct(m.mode), m.uid, m.gid, m.uname, m.gname, m.mtime, m.size, m.linkname])))
)",
                        tar.string()});
  REQUIRE(r.exit_code == 0);
  std::vector<Member> out;
  std::size_t start = 0;
  for (std::size_t nl; (nl = r.out.find('\n', start)) != std::string::npos; start = nl + 1) {
    std::vector<std::string> f;
    std::string line = r.out.substr(start, nl - start);
    for (std::size_t s = 0, bar;; s = bar + 1) {
      bar = line.find('|', s);
      f.push_back(line.substr(s, bar == std::string::npos ? bar : bar - s));
      if (bar == std::string::npos) break;
    }
    REQUIRE(f.size() == 10);
    out.push_back({f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9]});
  }
  return out;
}

// A member as libarchive reads it back: its hard link target (empty if none), size and data.
struct TarMember {
  std::string path;
  std::string hardlink;
  std::int64_t size = 0;
  std::string data;
};

std::vector<TarMember> read_tar(const std::string& tar) {
  struct archive* a = ::archive_read_new();
  REQUIRE(a != nullptr);
  ::archive_read_support_format_tar(a);
  REQUIRE(::archive_read_open_memory(a, tar.data(), tar.size()) == ARCHIVE_OK);
  std::vector<TarMember> out;
  struct archive_entry* e = nullptr;
  int rc;
  while ((rc = ::archive_read_next_header(a, &e)) == ARCHIVE_OK) {
    TarMember m;
    m.path = ::archive_entry_pathname(e);
    if (const char* link = ::archive_entry_hardlink(e)) m.hardlink = link;
    m.size = ::archive_entry_size(e);
    char buf[4096];
    for (la_ssize_t n; (n = ::archive_read_data(a, buf, sizeof buf)) > 0;)
      m.data.append(buf, static_cast<std::size_t>(n));
    out.push_back(std::move(m));
  }
  CHECK(rc == ARCHIVE_EOF);
  ::archive_read_free(a);
  return out;
}

const TarMember& member(const std::vector<TarMember>& members, const std::string& path) {
  for (const auto& m : members)
    if (m.path == path) return m;
  FAIL("no member " << path);
  throw 0;
}

Result<builder::BuiltLayer> build(const std::vector<LayerEntry>& entries, store::BlobStore& out,
                                  Compression compression = Compression::zstd) {
  builder::FileContentSource files;
  return builder::write_layer(entries, files, compression, out);
}

}  // namespace

TEST_CASE("a layer extracts with real tools to exactly the files, modes and links given") {
  Fixture fx;
  for (Compression compression : {Compression::zstd, Compression::gzip, Compression::none}) {
    CAPTURE(static_cast<int>(compression));
    ScratchDir work;
    store::MemoryBlobStore blobs;
    auto layer = build(fx.entries, blobs, compression);
    REQUIRE(layer);
    std::string blob = blob_of(blobs, *layer);
    CHECK(layer->blob.media_type == builder::media_type_for(compression));
    CHECK(layer->blob.digest == oci::sha256_of(blob));
    CHECK(layer->blob.size == blob.size());
    CHECK(layer->files == fx.entries.size());
    std::string tar = tar_of(work, compression, blob);
    CHECK(layer->diff_id == oci::sha256_of(tar));
    CHECK(layer->uncompressed_size == tar.size());
    if (compression == Compression::gzip) {  // RFC 1952 header: deflate, no flags, mtime 0, OS Unix
      CHECK(blob.substr(0, 10) == std::string("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", 10));
    }

    fs::path tar_file = work / "layer.tar";
    test::write_file(tar_file, tar);
    fs::create_directory(work / "x");
    REQUIRE(run_command({"tar", "-x", "-C", (work / "x").string(), "-f", tar_file.string()})
                .exit_code == 0);
    fs::path app = work / "x/opt/app";
    CHECK(test::read_file(app / "bin/tool") == "#!/bin/sh\necho hi\n");
    CHECK(test::read_file(app / "lib/data.txt") == "data\n");
    CHECK(test::read_file(app / "lib/empty").empty());
    CHECK(test::read_file(app / "lib/sub/deep/file.bin") == std::string("a\0b\xff\n", 5));
    CHECK(test::read_file(app / ("share/" + k_long_name)) == "long\n");
    CHECK((lstat_of(app / "bin/tool").st_mode & 07777) == 0755);
    CHECK((lstat_of(app / "lib/empty").st_mode & 07777) == 0600);
    CHECK((lstat_of(app / "lib/sub/deep/file.bin").st_mode & 07777) == 0640);
    CHECK(fs::read_symlink(app / "bin/link") == "../lib/data.txt");
    CHECK(fs::read_symlink(app / "share/far") == k_long_target);
    for (const char* dir : {"opt", "opt/app", "opt/app/lib/sub/deep", "opt/app/share"}) {
      CHECK(S_ISDIR(lstat_of(work / "x" / dir).st_mode));
      CHECK((lstat_of(work / "x" / dir).st_mode & 07777) == 0755);
    }

    // Every member: root-owned by number with no names, mtime 0, each directory once and before
    // everything inside it.
    std::vector<std::string> names;
    for (const Member& m : members_of(tar_file)) {
      CAPTURE(m.name);
      CHECK(m.uid == "0");
      CHECK(m.gid == "0");
      CHECK(m.uname.empty());
      CHECK(m.gname.empty());
      CHECK(m.mtime == "0");
      std::size_t slash = m.name.rfind('/');
      if (slash != std::string::npos) {
        CHECK(std::find(names.begin(), names.end(), m.name.substr(0, slash)) != names.end());
      }
      CHECK(std::find(names.begin(), names.end(), m.name) == names.end());
      names.push_back(m.name);
    }
    CHECK(names == std::vector<std::string>{
                       "opt", "opt/app", "opt/app/bin", "opt/app/bin/link", "opt/app/bin/tool",
                       "opt/app/lib", "opt/app/lib/data.txt", "opt/app/lib/empty",
                       "opt/app/lib/sub", "opt/app/lib/sub/deep", "opt/app/lib/sub/deep/file.bin",
                       "opt/app/share", "opt/app/share/far", "opt/app/share/" + k_long_name});

    // GNU tar agrees: numeric 0/0 even without --numeric-owner (no names), dates at the epoch.
    for (bool numeric : {true, false}) {
      std::vector<std::string> argv = {"tar", "-tvf", tar_file.string()};
      if (numeric) argv.insert(argv.begin() + 1, "--numeric-owner");
      auto listing = run_command(argv, {{"TZ", "UTC"}});
      REQUIRE(listing.exit_code == 0);
      std::size_t lines = std::count(listing.out.begin(), listing.out.end(), '\n');
      CHECK(lines == names.size());
      std::size_t owned = 0, epoch = 0;
      for (std::size_t at = 0; (at = listing.out.find(" 0/0 ", at)) != std::string::npos; ++at)
        ++owned;
      for (std::size_t at = 0;
           (at = listing.out.find(" 1970-01-01 00:00 ", at)) != std::string::npos; ++at)
        ++epoch;
      CHECK(owned == lines);
      CHECK(epoch == lines);
    }
  }
}

TEST_CASE("the same content gives the same digests whatever the mtimes, runs and stores") {
  Fixture fx;
  for (Compression compression : {Compression::zstd, Compression::gzip}) {
    CAPTURE(static_cast<int>(compression));
    store::MemoryBlobStore blobs;
    auto first = build(fx.entries, blobs, compression);
    auto again = build(fx.entries, blobs, compression);
    REQUIRE(first);
    REQUIRE(again);
    CHECK(again->blob == first->blob);
    CHECK(again->diff_id == first->diff_id);

    for (const auto& e : fx.entries) {
      if (!e.source.empty()) set_mtime(e.source, 1234567890 + static_cast<std::int64_t>(e.size));
    }
    auto touched = build(fx.entries, blobs, compression);
    REQUIRE(touched);
    CHECK(touched->blob == first->blob);
    CHECK(touched->diff_id == first->diff_id);

    ScratchDir root;
    auto fs_store = store::FsBlobStore::create(root.path());
    REQUIRE(fs_store);
    auto elsewhere = build(fx.entries, **fs_store, compression);
    REQUIRE(elsewhere);
    CHECK(elsewhere->blob == first->blob);
    CHECK(blob_of(**fs_store, *elsewhere) == blob_of(blobs, *first));
  }
}

TEST_CASE("one changed file changes the layer digest and diff_id") {
  Fixture fx;
  store::MemoryBlobStore blobs;
  auto before = build(fx.entries, blobs);
  REQUIRE(before);
  test::write_file(fx.src / "lib/data.txt", "datA\n");
  for (auto& e : fx.entries) {
    if (e.path == "opt/app/lib/data.txt") e = file_entry(e.path, e.source);
  }
  auto after = build(fx.entries, blobs);
  REQUIRE(after);
  CHECK(after->blob.digest != before->blob.digest);
  CHECK(after->diff_id != before->diff_id);
}

TEST_CASE("content that does not match the snapshot fails naming the file and commits nothing") {
  Fixture fx;
  ScratchDir root;
  auto fs_store = store::FsBlobStore::create(root.path());
  REQUIRE(fs_store);
  auto src_before = test::tree_listing(fx.src.path());
  auto blobs_before = test::tree_listing(root / "blobs");
  fs::path data = fx.src / "lib/data.txt";

  SUBCASE("same size, other bytes") {
    test::write_file(data, "DATA\n");
  }
  SUBCASE("grown") {
    test::write_file(data, "data and more\n");
  }
  SUBCASE("shrunk") {
    test::write_file(data, "d");
  }
  src_before = test::tree_listing(fx.src.path());
  auto r = build(fx.entries, **fs_store);
  REQUIRE(!r);
  CHECK(r.error().code() == ErrorCode::digest_mismatch);
  CHECK(r.error().message().find(data.string()) != std::string::npos);
  CHECK(r.error().message().find("opt/app/lib/data.txt") != std::string::npos);
  // Nothing committed, and the abandoned ingest file is gone (the directories' own mtimes change).
  CHECK(test::tree_listing(root / "blobs") == blobs_before);
  CHECK(fs::is_empty(root / "ingest"));
  CHECK(test::tree_listing(fx.src.path()) == src_before);
}

TEST_CASE("a missing source fails with not_found naming it, commits nothing") {
  Fixture fx;
  store::MemoryBlobStore blobs;
  fs::remove(fx.src / "lib/empty");
  auto r = build(fx.entries, blobs);
  REQUIRE(!r);
  CHECK(r.error().code() == ErrorCode::not_found);
  CHECK(r.error().message().find((fx.src / "lib/empty").string()) != std::string::npos);
  CHECK(blobs.list()->empty());
}

TEST_CASE("a source replaced by a symlink is not followed") {
  Fixture fx;
  store::MemoryBlobStore blobs;
  fs::remove(fx.src / "lib/data.txt");
  fs::create_symlink("/etc/passwd", fx.src / "lib/data.txt");
  auto r = build(fx.entries, blobs);
  REQUIRE(!r);
  CHECK(r.error().code() == ErrorCode::failed_precondition);
  CHECK(r.error().message().find((fx.src / "lib/data.txt").string()) != std::string::npos);
  CHECK(blobs.list()->empty());
}

TEST_CASE("bad entry lists are refused before anything is written") {
  Fixture fx;
  store::MemoryBlobStore blobs;
  auto entries = fx.entries;
  SUBCASE("unsorted") {
    std::swap(entries[0], entries[1]);
  }
  SUBCASE("duplicate") {
    entries.insert(entries.begin() + 1, entries[1]);
  }
  SUBCASE("not normalised") {
    entries[0].path = "opt/app/../bin/link";
  }
  SUBCASE("absolute") {
    entries[0].path = "/opt/app/bin/link";
  }
  SUBCASE("file and directory") {
    entries.insert(entries.begin(), file_entry("opt/app", fx.src / "lib/data.txt"));
  }
  SUBCASE("no digest") {
    entries[1].digest.reset();
  }
  SUBCASE("link on a symlink") {
    entries[0].link = "opt/app/bin/tool";
  }
  SUBCASE("link to itself") {
    entries[1].link = entries[1].path;
  }
  SUBCASE("link not normalised") {
    entries[2].link = "opt/app/./bin/tool";
  }
  auto r = build(entries, blobs);
  REQUIRE(!r);
  CHECK(r.error().code() == ErrorCode::invalid_argument);
  CHECK(blobs.list()->empty());
}

TEST_CASE("hard links: the first member written has the content, later ones link to it") {
  ScratchDir src;
  test::write_file(src / "python", "elf binary\n");
  test::write_file(src / "shared", "shared data\n");
  test::write_file(src / "other", "other\n");
  auto linked = [](LayerEntry e, std::string link) {
    e.link = std::move(link);
    return e;
  };
  const std::string head = "opt/py/bin/python3.6";
  std::vector<LayerEntry> entries = {
      // A group of three whose first member is in the layer.
      file_entry(head, src / "python", 0755),
      linked(file_entry("opt/py/bin/python3.6m", src / "python", 0755), head),
      linked(file_entry("opt/py/lib/python-copy", src / "python", 0755), head),
      // A group whose first member is in another layer: its first member here has the content.
      linked(file_entry("opt/py/share/a", src / "shared"), "opt/py/aaa/first"),
      linked(file_entry("opt/py/share/b", src / "shared"), "opt/py/aaa/first"),
      // The same content, not linked: a file of its own.
      file_entry("opt/py/share/c", src / "shared"),
      // Linked by mistake to a file of other content: gets its own content, never another's.
      linked(file_entry("opt/py/share/d", src / "other"), "opt/py/aaa/first"),
  };
  sort_entries(entries);
  store::MemoryBlobStore blobs;
  auto layer = build(entries, blobs, Compression::zstd);
  REQUIRE(layer);
  CHECK(layer->files == entries.size());
  ScratchDir work;
  const std::string tar = tar_of(work, Compression::zstd, blob_of(blobs, *layer));

  auto members = read_tar(tar);
  const auto& first = member(members, head);
  CHECK(first.hardlink.empty());
  CHECK(first.data == "elf binary\n");
  for (const std::string path : {"opt/py/bin/python3.6m", "opt/py/lib/python-copy"}) {
    CAPTURE(path);
    const auto& m = member(members, path);
    CHECK(m.hardlink == head);
    CHECK(m.size == 0);
    CHECK(m.data.empty());
  }
  CHECK(member(members, "opt/py/share/a").hardlink.empty());
  CHECK(member(members, "opt/py/share/a").data == "shared data\n");
  CHECK(member(members, "opt/py/share/b").hardlink == "opt/py/share/a");
  CHECK(member(members, "opt/py/share/b").data.empty());
  CHECK(member(members, "opt/py/share/c").hardlink.empty());
  CHECK(member(members, "opt/py/share/c").data == "shared data\n");
  CHECK(member(members, "opt/py/share/d").hardlink.empty());
  CHECK(member(members, "opt/py/share/d").data == "other\n");

  // GNU tar makes them one inode each.
  fs::path tar_file = work / "layer.tar";
  test::write_file(tar_file, tar);
  fs::create_directory(work / "x");
  REQUIRE(
      run_command({"tar", "-x", "-C", (work / "x").string(), "-f", tar_file.string()}).exit_code ==
      0);
  const fs::path root = work / "x/opt/py";
  auto st = lstat_of(root / "bin/python3.6");
  CHECK(st.st_nlink == 3);
  CHECK(lstat_of(root / "bin/python3.6m").st_ino == st.st_ino);
  CHECK(lstat_of(root / "lib/python-copy").st_ino == st.st_ino);
  CHECK((st.st_mode & 07777) == 0755);
  CHECK(test::read_file(root / "lib/python-copy") == "elf binary\n");
  CHECK(lstat_of(root / "share/b").st_ino == lstat_of(root / "share/a").st_ino);
  CHECK(lstat_of(root / "share/a").st_nlink == 2);
  CHECK(lstat_of(root / "share/c").st_nlink == 1);
  CHECK(test::read_file(root / "share/d") == "other\n");

  // Reproducible, and the links change the layer.
  store::MemoryBlobStore again;
  auto second = build(entries, again, Compression::zstd);
  REQUIRE(second);
  CHECK(second->blob.digest == layer->blob.digest);
  auto unlinked = entries;
  for (auto& e : unlinked) e.link.clear();
  auto plain = build(unlinked, again, Compression::zstd);
  REQUIRE(plain);
  CHECK(plain->blob.digest != layer->blob.digest);
  CHECK(plain->uncompressed_size > layer->uncompressed_size);
}

TEST_CASE(
    "non-ASCII names give the same bytes whatever the process locale; invalid UTF-8 is refused") {
  store::MemoryBlobStore blobs;
  LayerEntry e;
  e.path = "data/caf\xc3\xa9.txt";
  e.size = 3;
  e.digest = *blobs.put("abc");
  builder::BlobContentSource content(blobs);
  std::vector<oci::Digest> digests;
  for (const char* locale : {"C", "C.UTF-8"}) {
    REQUIRE(std::setlocale(LC_ALL, locale) != nullptr);
    auto layer = builder::write_layer({e}, content, Compression::none, blobs);
    std::setlocale(LC_ALL, "C");
    REQUIRE(layer);
    digests.push_back(layer->blob.digest);
    ScratchDir work;
    test::write_file(work / "l.tar", blob_of(blobs, *layer));
    CHECK(members_of(work / "l.tar").back().name == e.path);
  }
  CHECK(digests[0] == digests[1]);

  e.path = "data/bad\xff";
  auto bad = builder::write_layer({e}, content, Compression::none, blobs);
  REQUIRE(!bad);
  CHECK(bad.error().code() == ErrorCode::invalid_argument);
  CHECK(blobs.list()->size() == 2);  // "abc" and the one layer (built twice): nothing new
}

TEST_CASE("a content source that yields too few bytes cannot produce a layer") {
  // Does not verify, and stops one byte short: write_layer must notice on its own.
  struct Lying final : builder::ContentSource {
    Result<void> read(const LayerEntry& e, const builder::ContentSink& sink) override {
      return sink(std::string(e.size > 0 ? e.size - 1 : 0, 'x'));
    }
    Result<std::string> head(const LayerEntry&, std::size_t) override { return std::string(); }
  } lying;
  Fixture fx;
  store::MemoryBlobStore blobs;
  auto r = builder::write_layer(fx.entries, lying, Compression::zstd, blobs);
  REQUIRE(!r);
  CHECK(r.error().code() == ErrorCode::digest_mismatch);
  CHECK(blobs.list()->empty());
}

TEST_CASE("setuid, setgid and sticky bits are dropped") {
  ScratchDir src, work;
  test::write_file(src / "su", "x");
  test::write_file(src / "sg", "y");
  test::write_file(src / "st", "z");
  std::vector<LayerEntry> entries = {file_entry("bin/sg", src / "sg", 02755),
                                     file_entry("bin/st", src / "st", 01777),
                                     file_entry("bin/su", src / "su", 04755)};
  store::MemoryBlobStore blobs;
  auto layer = build(entries, blobs, Compression::none);
  REQUIRE(layer);
  test::write_file(work / "l.tar", blob_of(blobs, *layer));
  fs::create_directory(work / "x");
  REQUIRE(
      run_command({"tar", "-x", "-p", "-C", (work / "x").string(), "-f", (work / "l.tar").string()})
          .exit_code == 0);
  CHECK((lstat_of(work / "x/bin/su").st_mode & 07777) == 0755);
  CHECK((lstat_of(work / "x/bin/sg").st_mode & 07777) == 0755);
  CHECK((lstat_of(work / "x/bin/st").st_mode & 07777) == 0777);
  for (const Member& m : members_of(work / "l.tar")) {
    if (m.kind == "file") CHECK((m.mode == "0o755" || m.mode == "0o777"));
  }
}

TEST_CASE("timestamp-based .pyc stays valid after extraction, whatever the source mtimes were") {
  ScratchDir src, work;
  fs::path py = src / "site/mod.py";
  test::write_file(py, "VALUE = 42\n");
  set_mtime(py, 1600000000);
  auto compiled = run_command({k_python, "-c", R"(
import importlib.util, py_compile, sys
c = importlib.util.cache_from_source(sys.argv[1])
py_compile.compile(sys.argv[1], cfile=c, doraise=True, invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
print(c, end="")
)",
                               py.string()});
  REQUIRE(compiled.exit_code == 0);
  fs::path pyc = compiled.out;
  std::string pyc_name = pyc.filename().string();
  CHECK(pyc_name.starts_with("mod.cpython-3"));
  std::vector<LayerEntry> entries = {file_entry("lib/site/__pycache__/" + pyc_name, pyc),
                                     file_entry("lib/site/mod.py", py)};
  store::MemoryBlobStore blobs;
  auto layer = build(entries, blobs);
  REQUIRE(layer);

  fs::path tar_file = work / "l.tar";
  test::write_file(tar_file, tar_of(work, Compression::zstd, blob_of(blobs, *layer)));
  for (const Member& m : members_of(tar_file)) {
    CAPTURE(m.name);
    CHECK(m.mtime == (m.name == "lib/site/mod.py" ? "1600000000" : "0"));
  }
  fs::create_directory(work / "x");
  REQUIRE(
      run_command({"tar", "-x", "-C", (work / "x").string(), "-f", tar_file.string()}).exit_code ==
      0);
  fs::path site = work / "x/lib/site";
  fs::path out_pyc = site / "__pycache__" / pyc_name;
  std::string pyc_bytes = test::read_file(out_pyc);
  struct stat pyc_stat = lstat_of(out_pyc);

  auto import_mod = [&] {
    return run_command({"env", "-u", "PYTHONDONTWRITEBYTECODE", k_python, "-v", "-c",
                        "import mod; print(mod.VALUE)"},
                       {{"PYTHONPATH", site.string()}});
  };
  auto r = import_mod();
  REQUIRE(r.exit_code == 0);
  CHECK(r.out == "42\n");
  CHECK(r.err.find("# " + out_pyc.string() + " matches " + (site / "mod.py").string()) !=
        std::string::npos);
  CHECK(r.err.find("# code object from '" + out_pyc.string() + "'") != std::string::npos);
  CHECK(r.err.find("bytecode is stale") == std::string::npos);
  CHECK(test::read_file(out_pyc) == pyc_bytes);
  CHECK(lstat_of(out_pyc).st_mtim.tv_sec == pyc_stat.st_mtim.tv_sec);
  CHECK(lstat_of(out_pyc).st_mtim.tv_nsec == pyc_stat.st_mtim.tv_nsec);

  // The check above can fail: with any other source mtime Python rejects the bytecode.
  set_mtime(site / "mod.py", 1600000001);
  CHECK(import_mod().err.find("bytecode is stale for 'mod'") != std::string::npos);

  // Other file times on the laptop, same content: same layer.
  set_mtime(py, 1700000000);
  set_mtime(pyc, 1500000000);
  auto retimed = build(entries, blobs);
  REQUIRE(retimed);
  CHECK(retimed->blob == layer->blob);
}

TEST_CASE("the pyc rule reads PEP 552 headers: flags, size, tags, opt levels, first by path") {
  store::MemoryBlobStore blobs;
  std::vector<LayerEntry> entries;
  auto add = [&](std::string path, const std::string& bytes) {
    LayerEntry e;
    e.path = std::move(path);
    e.size = bytes.size();
    e.digest = *blobs.put(bytes);
    entries.push_back(e);
  };
  auto header = [](std::uint32_t flags, std::uint32_t mtime, std::uint32_t size) {
    std::string h = "\xa7\x0d\r\n";  // CPython 3.11 magic
    for (std::uint32_t v : {flags, mtime, size}) {
      for (int i = 0; i < 4; ++i) h += static_cast<char>((v >> (8 * i)) & 0xff);
    }
    return h + "code";
  };
  const std::string source = "x = 1\n";  // 6 bytes
  for (const char* name : {"ok", "hashed", "resized", "opt", "two", "pypy", "lonely"}) {
    if (std::string(name) != "lonely") add(std::string("p/") + name + ".py", source);
  }
  add("p/__pycache__/hashed.cpython-311.pyc", header(1, 111, 6));
  add("p/__pycache__/lonely.cpython-311.pyc", header(0, 222, 6));
  add("p/__pycache__/ok.cpython-311.pyc", header(0, 333, 6));
  add("p/__pycache__/opt.cpython-312.opt-1.pyc", header(0, 444, 6));
  add("p/__pycache__/pypy.pypy73.pyc", header(0, 555, 6));
  add("p/__pycache__/resized.cpython-311.pyc", header(0, 666, 7));
  add("p/__pycache__/two.cpython-311.pyc", header(0, 777, 6));
  add("p/__pycache__/two.cpython-312.pyc", header(0, 888, 6));
  sort_entries(entries);
  builder::BlobContentSource content(blobs);
  auto layer = builder::write_layer(entries, content, Compression::none, blobs);
  REQUIRE(layer);
  ScratchDir work;
  test::write_file(work / "l.tar", blob_of(blobs, *layer));
  std::map<std::string, std::string> mtimes;
  for (const Member& m : members_of(work / "l.tar")) mtimes[m.name] = m.mtime;
  CHECK(mtimes["p/ok.py"] == "333");
  CHECK(mtimes["p/opt.py"] == "444");
  CHECK(mtimes["p/two.py"] == "777");
  CHECK(mtimes["p/hashed.py"] == "0");
  CHECK(mtimes["p/resized.py"] == "0");
  CHECK(mtimes["p/pypy.py"] == "0");
  CHECK(mtimes["p/__pycache__/ok.cpython-311.pyc"] == "0");
}

TEST_CASE("content from the blob store gives the same layer as content from files") {
  Fixture fx;
  store::MemoryBlobStore blobs;
  auto from_files = build(fx.entries, blobs);
  REQUIRE(from_files);

  store::MemoryBlobStore content_store, out;
  auto entries = fx.entries;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    if (entries[i].type != snapshot::FileType::regular) continue;
    REQUIRE(content_store.put(*entries[i].digest, test::read_file(entries[i].source)));
    if (i % 2 == 0) entries[i].source.clear();  // half from the store, half from files
  }
  builder::MixedContentSource mixed(content_store);
  auto from_mixed = builder::write_layer(entries, mixed, Compression::zstd, out);
  REQUIRE(from_mixed);
  CHECK(from_mixed->blob == from_files->blob);

  for (auto& e : entries) e.source.clear();
  builder::BlobContentSource from_store(content_store);
  auto from_blobs = builder::write_layer(entries, from_store, Compression::zstd, out);
  REQUIRE(from_blobs);
  CHECK(from_blobs->blob == from_files->blob);
  CHECK(from_blobs->diff_id == from_files->diff_id);

  store::MemoryBlobStore empty;
  builder::BlobContentSource nothing(empty);
  auto missing = builder::write_layer(entries, nothing, Compression::zstd, out);
  REQUIRE(!missing);
  CHECK(missing.error().code() == ErrorCode::not_found);
  CHECK(missing.error().message().find("opt/app/bin/tool") != std::string::npos);
}

TEST_CASE("a large file streams through and comes back intact") {
  ScratchDir src, work;
  std::string big(20 * 1024 * 1024, '\0');
  std::uint64_t state = 0x9e3779b97f4a7c15ull;  // xorshift: incompressible, deterministic
  for (std::size_t i = 0; i < big.size(); i += 8) {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    std::memcpy(big.data() + i, &state, 8);
  }
  test::write_file(src / "big.bin", big);
  std::vector<LayerEntry> entries = {file_entry("data/big.bin", src / "big.bin")};
  auto fs_store = store::FsBlobStore::create(work / "store");
  REQUIRE(fs_store);
  auto layer = build(entries, **fs_store);
  REQUIRE(layer);
  CHECK(layer->uncompressed_size > big.size());
  fs::path blob = *(*fs_store)->path_of(layer->blob.digest);
  fs::create_directory(work / "x");
  auto r = run_command(
      {"sh", "-c", "zstd -dc \"$0\" | tar -x -C \"$1\"", blob.string(), (work / "x").string()});
  REQUIRE(r.exit_code == 0);
  CHECK(oci::sha256_file(work / "x/data/big.bin")->digest == *entries[0].digest);
}

TEST_CASE("layers built in parallel are identical to one built alone") {
  Fixture fx;
  store::MemoryBlobStore blobs;
  auto alone = build(fx.entries, blobs);
  REQUIRE(alone);
  std::vector<std::optional<oci::Digest>> digests(4);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < digests.size(); ++i) {
    threads.emplace_back([&, i] {
      auto layer = build(fx.entries, blobs);
      if (layer) digests[i] = layer->blob.digest;
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& d : digests) CHECK(d == alone->blob.digest);
}

TEST_CASE("shared compression contexts give the same layers, also after a failed layer") {
  Fixture fx;
  ScratchDir big_src;
  // Bigger than one zstd job (8 MiB at level 3), so a reused context runs several jobs again.
  std::string big(12 * 1024 * 1024, '\0');
  std::uint64_t state = 0x2545f4914f6cdd1dull;
  for (std::size_t i = 0; i < big.size(); i += 8) {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    std::uint64_t word = state % 7;  // compressible, so the frame is more than stored blocks
    std::memcpy(big.data() + i, &word, 8);
  }
  test::write_file(big_src / "big.bin", big);
  std::vector<LayerEntry> big_entries = {file_entry("data/big.bin", big_src / "big.bin")};

  store::MemoryBlobStore blobs;
  auto small_alone = build(fx.entries, blobs);
  auto big_alone = build(big_entries, blobs);
  REQUIRE(small_alone);
  REQUIRE(big_alone);

  builder::CompressionContexts contexts;
  builder::FileContentSource files;
  auto with = [&](const std::vector<LayerEntry>& entries) {
    return builder::write_layer(entries, files, Compression::zstd, blobs, &contexts);
  };
  // A layer that fails half way through its big file leaves a context mid-frame behind.
  auto bad = big_entries;
  bad[0].digest = oci::sha256_of("something else");
  REQUIRE(!with(bad));
  for (int round = 0; round < 2; ++round) {
    auto big_again = with(big_entries);
    auto small_again = with(fx.entries);
    REQUIRE(big_again);
    REQUIRE(small_again);
    CHECK(big_again->blob == big_alone->blob);
    CHECK(big_again->diff_id == big_alone->diff_id);
    CHECK(small_again->blob == small_alone->blob);
  }
  std::vector<std::optional<oci::Digest>> digests(4);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < digests.size(); ++i) {
    threads.emplace_back([&, i] {
      auto layer = with(i % 2 == 0 ? big_entries : fx.entries);
      if (layer) digests[i] = layer->blob.digest;
    });
  }
  for (auto& t : threads) t.join();
  for (std::size_t i = 0; i < digests.size(); ++i)
    CHECK(digests[i] == (i % 2 == 0 ? big_alone : small_alone)->blob.digest);
}

TEST_CASE("an in-memory buffer gives the same layer as the same bytes in a file") {
  ScratchDir src;
  const std::string document = "{\"environments\":[]}\n" + std::string(300 * 1024, 'x');
  test::write_file(src / "doc.json", document);
  std::vector<LayerEntry> from_file = {file_entry(".envd/snapshot.json", src / "doc.json")};
  store::MemoryBlobStore blobs;
  auto expected = build(from_file, blobs);
  REQUIRE(expected);

  builder::MemoryContentSource memory(document);
  std::vector<LayerEntry> entries = {memory.entry(".envd/snapshot.json", 0644)};
  CHECK(entries[0].digest == from_file[0].digest);
  CHECK(entries[0].size == document.size());
  auto layer = builder::write_layer(entries, memory, Compression::zstd, blobs);
  REQUIRE(layer);
  CHECK(layer->blob == expected->blob);
  CHECK(layer->diff_id == expected->diff_id);

  // An entry naming other content is not served, and nothing is committed for it.
  store::MemoryBlobStore out;
  auto other = entries;
  other[0].digest = oci::sha256_of("other");
  auto r = builder::write_layer(other, memory, Compression::zstd, out);
  REQUIRE(!r);
  CHECK(r.error().code() == ErrorCode::not_found);
  CHECK(r.error().message().find(".envd/snapshot.json") != std::string::npos);
  CHECK(out.list()->empty());
}
