// The image builder on snapshots of prefixes made by the test: reproducible manifests (twice, and
// in two separate data dirs), layer reuse, one changed file -> one changed content layer, mtimes
// irrelevant, and a rootfs extracted with tar holding exactly the snapshot's files.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <utime.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "agent/snapshotter.hpp"
#include "builder/builder_state.hpp"
#include "builder/content_source.hpp"
#include "support/python_prefix.hpp"
#include "support/run_command.hpp"
#include "support/scratch_dir.hpp"

using namespace envd;
using namespace envd::builder;
using envd::test::run_command;
using envd::test::ScratchDir;
using envd::test::write_file;

namespace {

void make_prefix(const std::filesystem::path& prefix) {
  write_file(prefix / "bin/python3", "#!/bin/sh\n");
  std::filesystem::permissions(prefix / "bin/python3", std::filesystem::perms(0755));
  std::filesystem::create_symlink("python3", prefix / "bin/python");
  write_file(prefix / "lib/python3.11/os.py", "# os\n");
  envd::test::write_pip_packages(prefix, "p", 30);
}

snapshot::Snapshot take(const std::filesystem::path& prefix) {
  agent::SnapshotOptions o;
  o.prefixes = {prefix};
  auto out = agent::take_snapshot(o);
  REQUIRE(out);
  return out->snapshot;
}

BuildResult build(BuilderState& state, const snapshot::Snapshot& snap,
                  Compression c = Compression::zstd) {
  FileContentSource files;
  BuildOptions options;
  options.repository = "team/env";
  options.tag = "v1";
  options.compression = c;
  auto r = state.builder->build(snap, files, options);
  INFO((r ? std::string() : r.error().message()));
  REQUIRE(r);
  return *r;
}

nlohmann::json manifest_of(BuilderState& state, const oci::Digest& d) {
  return nlohmann::json::parse(*state.blobs->read_all(d));
}

// Extracts the image's layers in order into `dest` with the standard tools: zstd -dc | tar -x.
void extract_layers(BuilderState& state, const oci::Digest& manifest,
                    const std::filesystem::path& dest) {
  std::filesystem::create_directories(dest);
  const auto m = manifest_of(state, manifest);
  for (const auto& l : m["layers"]) {
    auto blob = state.blobs->path_of(*oci::Digest::parse(l["digest"].get<std::string>()));
    REQUIRE(blob);
    auto r = run_command(
        {"sh", "-c", "zstd -dc '" + blob->string() + "' | tar -x -C '" + dest.string() + "'"});
    REQUIRE(r.exit_code == 0);
  }
}

}  // namespace

TEST_CASE("the same snapshot gives the same manifest, in the same and in a separate data dir") {
  ScratchDir dir;
  make_prefix(dir / "env");
  auto snap = take(dir / "env");
  auto a_state = *BuilderState::open(dir / "a");
  auto b_state = *BuilderState::open(dir / "b");
  auto& a = *a_state;
  auto& b = *b_state;
  auto first = build(a, snap);
  CHECK(first.layers_reused == 0);
  auto again = build(a, snap);
  CHECK(again.manifest_digest == first.manifest_digest);
  CHECK(again.layers_reused == again.layers);
  auto other = build(b, snap);
  CHECK(other.manifest_digest == first.manifest_digest);
  auto tagged = a.index->resolve("team/env", "v1");
  REQUIRE(tagged);
  REQUIRE(*tagged);
  CHECK((*tagged)->digest == first.manifest_digest);
  auto immutable = a.index->resolve("team/env", snapshot_tag(first.snapshot_digest));
  REQUIRE(immutable);
  REQUIRE(*immutable);
  auto m = manifest_of(a, first.manifest_digest);
  CHECK(m["mediaType"] == "application/vnd.oci.image.manifest.v1+json");
  CHECK(m["layers"].size() == first.layers);
  auto config = oci::parse_config(
      *a.blobs->read_all(*oci::Digest::parse(m["config"]["digest"].get<std::string>())));
  REQUIRE(config);
  CHECK(config->labels.at("dev.envd.snapshot.digest") == first.snapshot_digest.str());
  CHECK(config->env[0] == "PATH=" + (dir / "env").string() +
                              "/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
  CHECK(config->diff_ids.size() == first.layers);
}

TEST_CASE(
    "one changed file changes one content layer (and the snapshot layer); mtimes change nothing") {
  ScratchDir dir;
  make_prefix(dir / "env");
  auto state_ptr = *BuilderState::open(dir / "state");
  auto& state = *state_ptr;
  auto first = build(state, take(dir / "env"));
  // mtime-only change: the same manifest.
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir / "env")) {
    if (!e.is_symlink() && e.is_regular_file()) {
      struct utimbuf t {
        1000000, 1000000
      };
      ::utime(e.path().c_str(), &t);
    }
  }
  auto touched = build(state, take(dir / "env"));
  CHECK(touched.manifest_digest == first.manifest_digest);

  write_file(dir / "env/lib/python3.11/site-packages/p7/__init__.py", "X = 'changed'\n");
  auto changed = build(state, take(dir / "env"));
  CHECK_FALSE(changed.manifest_digest == first.manifest_digest);
  auto a = manifest_of(state, first.manifest_digest)["layers"];
  auto b = manifest_of(state, changed.manifest_digest)["layers"];
  REQUIRE(a.size() == b.size());
  int differing = 0;
  for (size_t i = 0; i + 1 < a.size(); ++i) differing += a[i]["digest"] != b[i]["digest"] ? 1 : 0;
  CHECK(differing == 1);
  CHECK(a.back()["digest"] != b.back()["digest"]);  // the snapshot document
  CHECK(changed.layers_reused == changed.layers - 2);
}

TEST_CASE("the layers, extracted in order with zstd and tar, give exactly the snapshot's files") {
  ScratchDir dir;
  make_prefix(dir / "env");
  auto state_ptr = *BuilderState::open(dir / "state");
  auto& state = *state_ptr;
  auto snap = take(dir / "env");
  auto result = build(state, snap);
  extract_layers(state, result.manifest_digest, dir / "rootfs");
  auto root = dir / "rootfs" / (dir / "env").relative_path();
  std::size_t checked = 0;
  for (const auto& env : snap.environments) {
    auto check = [&](const snapshot::FileEntry& f) {
      auto p = root / f.path;
      if (f.type == snapshot::FileType::symlink) {
        CHECK(std::filesystem::read_symlink(p).string() == f.target);
      } else {
        CHECK(oci::sha256_file(p)->digest == *f.digest);
        struct stat st {};
        ::lstat(p.c_str(), &st);
        CHECK((st.st_mode & 07777) == f.mode);
      }
      ++checked;
    };
    for (const auto& p : env.packages)
      for (const auto& f : p.files) check(f);
    for (const auto& f : env.unowned) check(f);
  }
  CHECK(checked == snapshot::totals(snap).files);
  CHECK(std::filesystem::exists(dir / "rootfs/.envd/snapshot.json"));
  auto doc = snapshot::parse(envd::test::read_file(dir / "rootfs/.envd/snapshot.json"));
  REQUIRE(doc);
  CHECK(*snapshot::digest_of(*doc) == result.snapshot_digest);
}

TEST_CASE("hard links within a layer extract with zstd and tar as one inode") {
  namespace fs = std::filesystem;
  ScratchDir dir;
  const auto prefix = dir / "env";
  make_prefix(prefix);
  // As pyenv's bin/python3.6 and bin/python3.6m: unowned, so in the same layer.
  write_file(prefix / "bin/python3.6", "#!/bin/sh\necho 3.6\n");
  fs::permissions(prefix / "bin/python3.6", fs::perms(0755));
  fs::create_hard_link(prefix / "bin/python3.6", prefix / "bin/python3.6m");
  // A package's file linked to an unowned one: the plan puts them in different layers.
  const std::string pkg_file = "lib/python3.11/site-packages/p3/__init__.py";
  fs::create_directories(prefix / "share");
  fs::create_hard_link(prefix / pkg_file, prefix / "share/p3-copy.py");
  auto snap = take(prefix);
  const auto& unowned = snap.environments.at(0).unowned;
  auto find = [&](const std::string& path) {
    return std::find_if(unowned.begin(), unowned.end(),
                        [&](const auto& f) { return f.path == path; });
  };
  REQUIRE(find("bin/python3.6m") != unowned.end());
  CHECK(find("bin/python3.6m")->link == "bin/python3.6");
  CHECK(find("share/p3-copy.py")->link == pkg_file);

  auto state_ptr = *BuilderState::open(dir / "state");
  auto& state = *state_ptr;
  auto result = build(state, snap);
  extract_layers(state, result.manifest_digest, dir / "rootfs");
  const auto root = dir / "rootfs" / prefix.relative_path();
  auto lstat_of = [](const std::filesystem::path& path) {
    struct stat st {};
    REQUIRE(::lstat(path.c_str(), &st) == 0);
    return st;
  };
  const auto a = lstat_of(root / "bin/python3.6");
  const auto b = lstat_of(root / "bin/python3.6m");
  CHECK(a.st_ino == b.st_ino);
  CHECK(a.st_nlink == 2);
  CHECK((b.st_mode & 07777) == 0755);
  CHECK(envd::test::read_file(root / "bin/python3.6m") == "#!/bin/sh\necho 3.6\n");
  // Across layers: each has its content, as a file of its own.
  const auto p = lstat_of(root / pkg_file);
  const auto c = lstat_of(root / "share/p3-copy.py");
  CHECK(p.st_ino != c.st_ino);
  CHECK(c.st_nlink == 1);
  CHECK(envd::test::read_file(root / "share/p3-copy.py") == "X = 3\n");
  CHECK(envd::test::read_file(root / pkg_file) == "X = 3\n");
}

TEST_CASE("a digest given by the caller names the same image as the one computed") {
  ScratchDir dir;
  make_prefix(dir / "env");
  auto snap = take(dir / "env");
  auto computed_state = *BuilderState::open(dir / "a");
  auto given_state = *BuilderState::open(dir / "b");
  auto computed = build(*computed_state, snap);

  FileContentSource files;
  BuildOptions options;
  options.repository = "team/env";
  options.tag = "v1";
  options.snapshot_digest = *snapshot::digest_of(snap);
  auto given = given_state->builder->build(snap, files, options);
  REQUIRE(given);
  CHECK(given->manifest_digest == computed.manifest_digest);
  CHECK(given->snapshot_digest == computed.snapshot_digest);
  CHECK(given->layers == computed.layers);
}

TEST_CASE("the snapshot document's layer is keyed by the snapshot digest alone") {
  ScratchDir dir;
  make_prefix(dir / "env");
  auto snap = take(dir / "env");
  auto state_ptr = *BuilderState::open(dir / "state");
  auto& state = *state_ptr;
  auto first = build(state, snap);
  // Volatile fields are left out of the digest and of the document in the image: another
  // creation time or host reuses every layer, the document's too, and gives the same image.
  auto later = snap;
  later.created = "2030-01-01T00:00:00Z";
  later.host = "elsewhere";
  auto again = build(state, later);
  CHECK(again.manifest_digest == first.manifest_digest);
  CHECK(again.layers_reused == again.layers);
  CHECK(snapshot_layer_key(first.snapshot_digest) != snapshot_layer_key(oci::sha256_of("x")));
  auto cached = state.layers->find(snapshot_layer_key(first.snapshot_digest), Compression::zstd);
  REQUIRE(cached);
  REQUIRE(*cached);
  auto m = manifest_of(state, first.manifest_digest);
  CHECK((*cached)->blob.digest.str() == m["layers"].back()["digest"].get<std::string>());
}

TEST_CASE(
    "a document layer prepared when the snapshot arrives gives the same image, and is cached") {
  ScratchDir dir;
  make_prefix(dir / "env");
  auto snap = take(dir / "env");
  auto plain_state = *BuilderState::open(dir / "plain");
  auto plain = build(*plain_state, snap);
  const auto digest = *snapshot::digest_of(snap);

  // Prepared, then built at once: the build takes the job under way (or its cached layer).
  auto state = *BuilderState::open(dir / "prepared");
  auto owned = std::make_shared<const snapshot::Snapshot>(snap);
  std::weak_ptr<const snapshot::Snapshot> watch = owned;
  state->builder->prepare_document_layer(std::move(owned), digest, Compression::zstd);
  auto prepared = build(*state, snap);
  CHECK(prepared.manifest_digest == plain.manifest_digest);
  CHECK(prepared.layers == plain.layers);
  CHECK(prepared.layers_reused == 0);

  // Another snapshot, prepared only; the builder is closed before any build, which waits for the
  // job: it released its snapshot, and the layer it left in the cache is reused by the next build.
  auto later = snap;
  later.environments.front().unowned.pop_back();
  const auto later_digest = *snapshot::digest_of(later);
  state->builder->prepare_document_layer(std::make_shared<const snapshot::Snapshot>(later),
                                         later_digest, Compression::zstd);
  state.reset();
  CHECK(watch.expired());
  state = *BuilderState::open(dir / "prepared");
  auto cached = state->layers->find(snapshot_layer_key(later_digest), Compression::zstd);
  REQUIRE(cached);
  CHECK(cached->has_value());
  auto later_build = build(*state, later);
  CHECK(later_build.layers_reused >= 1);
  auto m = manifest_of(*state, later_build.manifest_digest);
  CHECK((*cached)->blob.digest.str() == m["layers"].back()["digest"].get<std::string>());

  // A prepared layer in the wrong compression is not taken: the gzip build makes its own.
  auto gzip_state = *BuilderState::open(dir / "gzip");
  gzip_state->builder->prepare_document_layer(std::make_shared<const snapshot::Snapshot>(snap),
                                              digest, Compression::zstd);
  auto gzip = build(*gzip_state, snap, Compression::gzip);
  auto gm = manifest_of(*gzip_state, gzip.manifest_digest);
  CHECK(gm["layers"].back()["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip");
}
