// Tests for rootfs assembly: layers unpacked from forged tars are merged by hardlinks, whiteouts
// and opaque directories hide lower content only, and nothing is followed out of the tree.
#include "envd/node/rootfs_assembler.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdlib>

#include "envd/node/image_roots.hpp"
#include "envd/node/layer_unpacker.hpp"
#include "support/layer_forge.hpp"
#include "support/run_command.hpp"
#include "support/scratch_dir.hpp"

namespace fs = std::filesystem;
using namespace envd;
using node::assemble_rootfs;
using test::ForgeEntry;

namespace {

struct stat lstat_of(const fs::path& p) {
  struct stat st {};
  REQUIRE(::lstat(p.c_str(), &st) == 0);
  return st;
}

bool exists_nofollow(const fs::path& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0;
}

// Layers unpacked under scratch/layers, a canary beside the rootfs.
struct Workspace {
  test::ScratchDir scratch;
  fs::path rootfs = scratch / "rootfs";
  fs::path canary = scratch / "canary";
  std::vector<fs::path> layers;
  std::map<std::string, std::string> canary_before;

  Workspace() {
    test::write_file(canary / "secret", "secret\n");
    test::write_file(canary / "dir/file", "file\n");
    canary_before = test::tree_listing(canary);
  }

  // Unpacks a forged layer with the real unpacker and adds it on top.
  fs::path add(const std::vector<ForgeEntry>& entries) {
    auto layer = test::forge_layer(entries, test::ForgeCompression::none);
    fs::path dir = scratch / ("layers/" + std::to_string(layers.size()));
    fs::create_directories(dir);
    auto r = node::unpack_layer_file(write_blob(layer.blob), dir, node::LayerCompression::none,
                                     layer.diff_id, {}, "test layer");
    REQUIRE_MESSAGE(r, (r ? "" : r.error().message()));
    layers.push_back(dir);
    return layers.back();
  }
  fs::path write_blob(const std::string& blob) {
    fs::path p = scratch / ("blob-" + std::to_string(layers.size()));
    test::write_file(p, blob);
    return p;
  }
  bool canary_intact() const { return test::tree_listing(canary) == canary_before; }
};

}  // namespace

TEST_CASE("layers merge by hardlinks; whiteouts and opaque directories hide lower content") {
  using E = ForgeEntry;
  Workspace w;
  fs::path base = w.add({
      E::dir("etc", 0755).with_mtime(100),
      E::file("etc/a", "a"),
      E::file("etc/b", "b"),
      E::dir("usr/lib", 0750).with_mtime(200),
      E::file("usr/lib/x", "x"),
      E::dir("usr/lib/sub"),
      E::file("usr/lib/sub/y", "y"),
      E::symlink("usr/bin/py", "python3"),
      E::file("usr/bin/python3", "elf", 0755).with_mtime(1700000000, 5),
      E::hardlink("usr/bin/python3.11", "usr/bin/python3"),
      E::file("opt/keep/file", "kept"),
      E::file("gone-dir/deep/file", "z"),
  });
  w.add({
      E::whiteout("etc/a"),
      E::dir("etc/b", 0700).with_mtime(300),  // a directory replaces a lower file
      E::file("etc/b/c", "c"),
      E::opaque("usr/lib"),
      E::dir("usr/lib", 0755).with_mtime(400),
      E::file("usr/lib/z", "z"),
      E::file("usr/bin/py", "now a file"),  // a file replaces a lower symlink
      E::whiteout("gone-dir"),
      E::whiteout("not-there"),
  });
  auto r = assemble_rootfs(w.layers, w.rootfs);
  REQUIRE_MESSAGE(r, (r ? "" : r.error().message()));
  const fs::path& root = w.rootfs;

  CHECK_FALSE(exists_nofollow(root / "etc/a"));
  CHECK(fs::is_directory(fs::symlink_status(root / "etc/b")));
  CHECK(test::read_file(root / "etc/b/c") == "c");
  CHECK((lstat_of(root / "etc/b").st_mode & 07777) == 0700);
  CHECK(lstat_of(root / "etc/b").st_mtim.tv_sec == 300);
  // etc is an implicit parent in the upper layer (0755, unpack-time mtime): as overlayfs would,
  // the upper layer's directory gives the attributes.
  CHECK((lstat_of(root / "etc").st_mode & 07777) == 0755);
  CHECK_FALSE(exists_nofollow(root / "usr/lib/x"));
  CHECK_FALSE(exists_nofollow(root / "usr/lib/sub"));
  CHECK(test::read_file(root / "usr/lib/z") == "z");
  CHECK((lstat_of(root / "usr/lib").st_mode & 07777) == 0755);
  CHECK(lstat_of(root / "usr/lib").st_mtim.tv_sec == 400);
  CHECK(fs::is_regular_file(fs::symlink_status(root / "usr/bin/py")));
  CHECK(test::read_file(root / "usr/bin/py") == "now a file");
  CHECK(test::read_file(root / "opt/keep/file") == "kept");
  CHECK_FALSE(exists_nofollow(root / "gone-dir"));
  // No marker reaches the rootfs.
  CHECK_FALSE(exists_nofollow(root / "etc/.wh.a"));
  CHECK_FALSE(exists_nofollow(root / "usr/lib/.wh..wh..opq"));
  CHECK_FALSE(exists_nofollow(root / ".wh.gone-dir"));

  // Files are the layers' inodes: hardlinked, not copied; mtimes and modes come along.
  struct stat py = lstat_of(root / "usr/bin/python3");
  CHECK(py.st_ino == lstat_of(base / "usr/bin/python3").st_ino);
  CHECK(py.st_mtim.tv_sec == 1700000000);
  CHECK(py.st_mtim.tv_nsec == 5);
  CHECK((py.st_mode & 07777) == 0755);
  CHECK(lstat_of(root / "usr/bin/python3.11").st_ino == py.st_ino);
  CHECK(lstat_of(root / "opt/keep/file").st_ino == lstat_of(base / "opt/keep/file").st_ino);

  CHECK(r->files == 11);
  CHECK(r->symlinks == 1);
  // Removed: etc/a; usr/lib's x, sub, sub/y; gone-dir, gone-dir/deep, gone-dir/deep/file.
  CHECK(r->removed == 7);
  CHECK(w.canary_intact());
}

TEST_CASE("a whiteout hides lower layers only, not its own layer's file") {
  using E = ForgeEntry;
  Workspace w;
  w.add({E::file("f", "lower"), E::symlink("l", "target")});
  w.add({E::whiteout("f"), E::file("f", "upper")});
  w.add({E::opaque("")});  // an opaque root hides everything below
  w.add({E::file("g", "top")});
  auto r = assemble_rootfs(w.layers, w.rootfs);
  REQUIRE(r);
  CHECK_FALSE(exists_nofollow(w.rootfs / "f"));
  CHECK_FALSE(exists_nofollow(w.rootfs / "l"));
  CHECK(test::read_file(w.rootfs / "g") == "top");

  Workspace w2;
  w2.add({E::file("f", "lower"), E::symlink("l", "target")});
  w2.add({E::whiteout("f"), E::file("f", "upper")});
  REQUIRE(assemble_rootfs(w2.layers, w2.rootfs));
  CHECK(test::read_file(w2.rootfs / "f") == "upper");
  CHECK(fs::read_symlink(w2.rootfs / "l") == "target");
}

// Meaningful when run as a non-root user (as the daemon may be): read-only directories get their
// mode only at the end, so later entries and layers can still be written into them.
TEST_CASE("read-only directories are filled by later entries and layers") {
  using E = ForgeEntry;
  Workspace w;
  w.add({E::dir("ro", 0555).with_mtime(10), E::file("ro/a", "a"), E::file("ro/gone", "g")});
  w.add({E::dir("ro", 0555).with_mtime(20), E::file("ro/b", "b"), E::whiteout("ro/gone")});
  auto r = assemble_rootfs(w.layers, w.rootfs);
  REQUIRE_MESSAGE(r, (r ? "" : r.error().message()));
  CHECK(test::read_file(w.rootfs / "ro/a") == "a");
  CHECK(test::read_file(w.rootfs / "ro/b") == "b");
  CHECK_FALSE(exists_nofollow(w.rootfs / "ro/gone"));
  CHECK((lstat_of(w.rootfs / "ro").st_mode & 07777) == 0555);
  CHECK(lstat_of(w.rootfs / "ro").st_mtim.tv_sec == 20);
  // remove_tree_at empties read-only directories too (a rootless caller removing a rootfs).
  UniqueFd scratch_fd(::open(w.scratch.path().c_str(), O_RDONLY | O_DIRECTORY));
  REQUIRE(node::remove_tree_at(scratch_fd.get(), "rootfs"));
  CHECK_FALSE(exists_nofollow(w.rootfs));
}

TEST_CASE("a lower layer's symlink is never followed by an upper layer") {
  using E = ForgeEntry;
  Workspace w;
  w.add({E::symlink("lnk", "../canary"), E::symlink("abs", w.canary.string())});
  // The upper layer has directories where the lower has symlinks, with a file, a whiteout and
  // an opaque marker in them: overlayfs shows the upper directory; the canary stays untouched.
  w.add({E::file("lnk/pwned", "x"), E::whiteout("lnk/secret"), E::opaque("abs"),
         E::file("abs/p", "y")});
  auto r = assemble_rootfs(w.layers, w.rootfs);
  REQUIRE_MESSAGE(r, (r ? "" : r.error().message()));
  CHECK(fs::is_directory(fs::symlink_status(w.rootfs / "lnk")));
  CHECK(test::read_file(w.rootfs / "lnk/pwned") == "x");
  CHECK(fs::is_directory(fs::symlink_status(w.rootfs / "abs")));
  CHECK(w.canary_intact());
  CHECK_FALSE(exists_nofollow(w.canary / "pwned"));
  CHECK_FALSE(exists_nofollow(w.canary / "p"));
}

TEST_CASE("escaping whiteouts in a layer directory are refused, naming layer and entry") {
  for (std::string bad : {".wh..", ".wh."}) {
    Workspace w;
    w.add({ForgeEntry::file("sub/f", "x")});
    fs::path evil = w.scratch / "evil-layer";
    fs::create_directories(evil / "sub");
    test::write_file(evil / "sub" / bad, "");
    w.layers.push_back(evil);
    auto r = assemble_rootfs(w.layers, w.rootfs);
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == ErrorCode::invalid_argument);
    CHECK(r.error().message().find(evil.string()) != std::string::npos);
    CHECK(r.error().message().find("sub/" + bad) != std::string::npos);
    CHECK(w.canary_intact());
  }
}

TEST_CASE("an envd image's roots are recorded beside its rootfs; other images get no record") {
  using E = ForgeEntry;
  Workspace w;
  const std::string snapshot =
      R"({"environments":[{"kind":"venv","packages":[],"partial":false,"prefix":"/opt/env",)"
      R"("unowned":[]}],"sources":[{"files":[],"root":"/srv/app"}]})";
  w.add({E::file("opt/env/bin/python", "elf", 0755), E::dir(".envd", 0555),
         E::file(".envd/snapshot.json", R"({"environments":[]})")});
  // The upper layer's snapshot is the one that counts.
  w.add({E::file(".envd/snapshot.json", snapshot)});
  auto r = assemble_rootfs(w.layers, w.rootfs);
  REQUIRE_MESSAGE(r, (r ? "" : r.error().message()));
  const fs::path record = w.scratch / "rootfs.roots.json";
  auto roots = node::detail::read_roots_record(record);
  REQUIRE_MESSAGE(roots, (roots ? "" : roots.error().message()));
  REQUIRE(roots->environments.size() == 1);
  CHECK(roots->environments[0].prefix == "/opt/env");
  CHECK(roots->sources == std::vector<std::string>{"/srv/app"});
  CHECK_FALSE(exists_nofollow(w.rootfs / ".envd/roots.json"));  // nothing added to the image

  Workspace plain;
  plain.add({E::file("bin/sh", "elf", 0755)});
  auto p = assemble_rootfs(plain.layers, plain.rootfs);
  REQUIRE(p);
  CHECK_FALSE(exists_nofollow(plain.scratch / "rootfs.roots.json"));
}

TEST_CASE("bad destinations and layers") {
  Workspace w;
  w.add({ForgeEntry::file("f", "x")});
  fs::create_directory(w.rootfs);
  auto exists = assemble_rootfs(w.layers, w.rootfs);
  REQUIRE_FALSE(exists);
  CHECK(exists.error().code() == ErrorCode::already_exists);

  auto missing = assemble_rootfs({w.scratch / "no-such-layer"}, w.scratch / "rootfs2");
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code() == ErrorCode::not_found);
  CHECK(missing.error().message().find("no-such-layer") != std::string::npos);

  // A layer that is itself a symlink is not followed.
  fs::create_directory_symlink(w.canary, w.scratch / "link-layer");
  auto linked = assemble_rootfs({w.scratch / "link-layer"}, w.scratch / "rootfs3");
  REQUIRE_FALSE(linked);
  CHECK(w.canary_intact());
}

TEST_CASE("assembling 10k files takes well under a second") {
  // A synthetic tree shaped like a Python prefix: 100 directories of 100 files (40k-file trees
  // are measured with ENVD_BENCH_TREE below).
  test::ScratchDir scratch;
  fs::path layer = scratch / "layer";
  for (int d = 0; d < 100; ++d) {
    fs::path dir = layer / ("lib/python3.11/site-packages/pkg" + std::to_string(d));
    fs::create_directories(dir);
    for (int f = 0; f < 100; ++f) {
      int fd = ::open((dir / ("m" + std::to_string(f) + ".py")).c_str(), O_CREAT | O_WRONLY, 0644);
      REQUIRE(fd >= 0);
      ::close(fd);
    }
  }
  auto start = std::chrono::steady_clock::now();
  auto r = assemble_rootfs({layer}, scratch / "rootfs");
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  REQUIRE(r);
  CHECK(r->files == 10000);
  MESSAGE("assembled 10000 files in " << seconds << " s");
  CHECK(seconds < 1.0);  // generous: the machine is shared; typically ~0.1 s
}

// Measures unpack and assembly of a real tree: ENVD_BENCH_TREE=$(pyenv root)/versions/3.11.7.
TEST_CASE("unpack and assemble a real tree (ENVD_BENCH_TREE)") {
  const char* tree = std::getenv("ENVD_BENCH_TREE");
  if (tree == nullptr) return;
  test::ScratchDir scratch;
  fs::path tar = scratch / "layer.tar";
  auto made = test::run_command({"tar", "-C", tree, "-cf", tar.string(), "."});
  REQUIRE(made.exit_code == 0);
  auto digest = oci::sha256_file(tar);
  REQUIRE(digest);
  fs::path layer = scratch / "layer";
  fs::create_directory(layer);
  auto t0 = std::chrono::steady_clock::now();
  auto unpacked =
      node::unpack_layer_file(tar, layer, node::LayerCompression::none, digest->digest, {}, tree);
  auto t1 = std::chrono::steady_clock::now();
  REQUIRE_MESSAGE(unpacked, (unpacked ? "" : unpacked.error().message()));
  auto r = assemble_rootfs({layer}, scratch / "rootfs");
  auto t2 = std::chrono::steady_clock::now();
  REQUIRE(r);
  MESSAGE("unpack: " << unpacked->entries << " entries, " << unpacked->bytes << " bytes in "
                     << std::chrono::duration<double>(t1 - t0).count() << " s; assemble: "
                     << r->files << " files, " << r->symlinks << " symlinks, " << r->directories
                     << " dirs in " << std::chrono::duration<double>(t2 - t1).count() << " s");
  auto diff =
      test::run_command({"diff", "-r", "--no-dereference", tree, (scratch / "rootfs").string()});
  CHECK(diff.exit_code == 0);
}
