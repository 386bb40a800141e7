// take_snapshot on prefixes assembled by the test: ownership, unowned and modified files, the
// pip-inside-conda rule, stable digests, the stat cache (a re-snapshot reads exactly the changed
// file), secrets, editable sources, and that nothing is written into the scanned trees.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "agent/snapshotter.hpp"
#include "support/run_command.hpp"
#include "support/scratch_dir.hpp"

using namespace envd;
using namespace envd::agent;
using envd::test::ScratchDir;
using envd::test::tree_listing;
using envd::test::write_file;

namespace {

// pip RECORD's hash: urlsafe base64 (no padding) of the raw SHA-256 (PEP 376 / wheel spec).
std::string record_hash(std::string_view content) {
  const auto digest = oci::sha256_of(content);
  const auto hex = digest.hex();
  std::string raw;
  for (size_t i = 0; i < hex.size(); i += 2)
    raw += static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16));
  static constexpr char k_b64[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  size_t i = 0;
  for (; i + 2 < raw.size(); i += 3) {
    unsigned v = (static_cast<unsigned char>(raw[i]) << 16) |
                 (static_cast<unsigned char>(raw[i + 1]) << 8) |
                 static_cast<unsigned char>(raw[i + 2]);
    out += k_b64[(v >> 18) & 63];
    out += k_b64[(v >> 12) & 63];
    out += k_b64[(v >> 6) & 63];
    out += k_b64[v & 63];
  }
  // 32 bytes: 2 left over.
  unsigned v =
      (static_cast<unsigned char>(raw[i]) << 16) | (static_cast<unsigned char>(raw[i + 1]) << 8);
  out += k_b64[(v >> 18) & 63];
  out += k_b64[(v >> 12) & 63];
  out += k_b64[(v >> 6) & 63];
  return "sha256=" + out;
}

// A pip-installed distribution laid out as pip does: package files, dist-info with RECORD.
void add_pip_package(const std::filesystem::path& prefix, const std::string& site,
                     const std::string& name, const std::string& version,
                     const std::map<std::string, std::string>& files) {
  std::string dist = site + "/" + name + "-" + version + ".dist-info";
  std::string record;
  for (const auto& [rel, content] : files) {
    write_file(prefix / site / rel, content);
    record += rel + "," + record_hash(content) + "," + std::to_string(content.size()) + "\n";
  }
  std::string metadata = "Metadata-Version: 2.1\nName: " + name + "\nVersion: " + version + "\n\n";
  write_file(prefix / dist / "METADATA", metadata);
  write_file(prefix / dist / "INSTALLER", "pip\n");
  record += name + "-" + version + ".dist-info/METADATA," + record_hash(metadata) + "," +
            std::to_string(metadata.size()) + "\n";
  record += name + "-" + version + ".dist-info/INSTALLER,,\n";
  record += name + "-" + version + ".dist-info/RECORD,,\n";
  write_file(prefix / dist / "RECORD", record);
}

// A plain Python prefix (like a pyenv version): interpreter, stdlib file, two pip packages.
std::filesystem::path make_plain_prefix(const std::filesystem::path& prefix) {
  write_file(prefix / "bin/python3", "#!/bin/sh\necho fake python\n");
  std::filesystem::permissions(prefix / "bin/python3", std::filesystem::perms(0755));
  write_file(prefix / "lib/python3.11/os.py", "# stdlib\n");
  const std::string site = "lib/python3.11/site-packages";
  add_pip_package(prefix, site, "alpha", "1.0",
                  {{"alpha/__init__.py", "A = 1\n"}, {"alpha/data.txt", "data\n"}});
  add_pip_package(prefix, site, "beta", "2.5", {{"beta.py", "B = 2\n"}});
  return prefix;
}

SnapshotOptions options_for(const std::filesystem::path& prefix,
                            const std::filesystem::path& state) {
  SnapshotOptions o;
  o.prefixes = {prefix};
  o.state_dir = state;
  // A clock far in the future: no file counts as racy, so every hashed file is cached.
  o.clock = [] { return std::numeric_limits<std::int64_t>::max() / 2; };
  o.envd_version = "test";
  return o;
}

const snapshot::Package* find_package(const snapshot::Environment& env, const std::string& name) {
  for (const auto& p : env.packages)
    if (p.name == name) return &p;
  return nullptr;
}

std::vector<std::string> paths_of(const std::vector<snapshot::FileEntry>& files) {
  std::vector<std::string> out;
  for (const auto& f : files) out.push_back(f.path);
  return out;
}

}  // namespace

TEST_CASE("a plain prefix: packages own their RECORD files, the rest is unowned") {
  ScratchDir dir;
  auto prefix = make_plain_prefix(dir / "py");
  auto before = tree_listing(prefix);
  auto out = take_snapshot(options_for(prefix, dir / "state"));
  REQUIRE(out);
  REQUIRE(out->snapshot.environments.size() == 1);
  const auto& env = out->snapshot.environments[0];
  CHECK(env.kind == snapshot::EnvironmentKind::prefix);
  CHECK(env.prefix == prefix.string());
  REQUIRE(env.packages.size() == 2);
  const auto* alpha = find_package(env, "alpha");
  REQUIRE(alpha);
  CHECK(alpha->version == "1.0");
  CHECK(alpha->installer == "pip");
  CHECK(paths_of(alpha->files) ==
        std::vector<std::string>{"lib/python3.11/site-packages/alpha-1.0.dist-info/INSTALLER",
                                 "lib/python3.11/site-packages/alpha-1.0.dist-info/METADATA",
                                 "lib/python3.11/site-packages/alpha-1.0.dist-info/RECORD",
                                 "lib/python3.11/site-packages/alpha/__init__.py",
                                 "lib/python3.11/site-packages/alpha/data.txt"});
  CHECK(alpha->modified.empty());
  CHECK(paths_of(env.unowned) == std::vector<std::string>{"bin/python3", "lib/python3.11/os.py"});
  CHECK(env.unowned[0].mode == 0755);
  CHECK(*env.unowned[1].digest == oci::sha256_of("# stdlib\n"));
  CHECK(tree_listing(prefix) == before);
}

TEST_CASE(
    "the same environment gives the same digest; a re-snapshot reads exactly the changed file") {
  ScratchDir dir;
  auto prefix = make_plain_prefix(dir / "py");
  auto opts = options_for(prefix, dir / "state");
  auto first = take_snapshot(opts);
  REQUIRE(first);
  CHECK(first->files_hashed == 11);  // 2 unowned + alpha 5 + beta 4
  auto second = take_snapshot(opts);
  REQUIRE(second);
  CHECK(second->files_hashed == 0);
  CHECK(second->digest == first->digest);

  write_file(prefix / "lib/python3.11/site-packages/beta.py", "B = 3\n");
  auto third = take_snapshot(opts);
  REQUIRE(third);
  CHECK(third->files_hashed == 1);
  CHECK_FALSE(third->digest == first->digest);
  const auto* beta = find_package(third->snapshot.environments[0], "beta");
  REQUIRE(beta);
  CHECK(beta->modified == std::vector<std::string>{"lib/python3.11/site-packages/beta.py"});

  // Restoring the content restores the digest, whatever the mtimes.
  write_file(prefix / "lib/python3.11/site-packages/beta.py", "B = 2\n");
  auto fourth = take_snapshot(opts);
  REQUIRE(fourth);
  CHECK(fourth->digest == first->digest);
}

TEST_CASE(
    "the digest does not depend on how files were read: settled, or stat-ed before and after") {
  ScratchDir dir;
  auto prefix = make_plain_prefix(dir / "py");
  // The far-future clock counts every file as settled: each is read and fstat-ed once.
  auto settled = take_snapshot(options_for(prefix, dir / "state1"));
  REQUIRE(settled);
  // A clock at the epoch counts every file as just written, unsettled and racy: each is stat-ed
  // before and after its read, and none is cached, so a second run reads them all again.
  auto opts = options_for(prefix, dir / "state2");
  opts.clock = [] { return std::int64_t{0}; };
  auto fresh = take_snapshot(opts);
  REQUIRE(fresh);
  CHECK(fresh->files_hashed == 11);
  CHECK(fresh->digest == settled->digest);
  auto again = take_snapshot(opts);
  REQUIRE(again);
  CHECK(again->files_hashed == 11);
  CHECK(again->digest == settled->digest);
}

TEST_CASE("a conda prefix: conda records own files, pip-installed packages are told apart") {
  ScratchDir dir;
  auto prefix = dir / "conda";
  write_file(prefix / "conda-meta/history", "==> 2024-01-01 00:00:00 <==\n");
  const std::string lib = "lib/libz.so.1", hdr = "include/zlib.h";
  write_file(prefix / lib, "zlib binary");
  write_file(prefix / hdr, "edited header");  // differs from the recorded sha256 below
  nlohmann::json zlib = {{"name", "zlib"},
                         {"version", "1.3"},
                         {"build", "h0_0"},
                         {"build_number", 0},
                         {"channel", "https://conda.anaconda.org/conda-forge/linux-64"},
                         {"subdir", "linux-64"},
                         {"files", {lib, hdr}},
                         {"paths_data",
                          {{"paths_version", 1},
                           {"paths",
                            {{{"_path", lib},
                              {"path_type", "hardlink"},
                              {"sha256", oci::sha256_of("zlib binary").hex()}},
                             {{"_path", hdr},
                              {"path_type", "hardlink"},
                              {"sha256", oci::sha256_of("original header").hex()}}}}}}};
  write_file(prefix / "conda-meta/zlib-1.3-h0_0.json", zlib.dump());
  // A pip package installed into the conda env: its RECORD is in no conda record.
  add_pip_package(prefix, "lib/python3.11/site-packages", "gamma", "0.1", {{"gamma.py", "G\n"}});
  write_file(prefix / "unowned.txt", "stray");
  auto before = tree_listing(prefix);

  auto out = take_snapshot(options_for(prefix, dir / "state"));
  REQUIRE(out);
  const auto& env = out->snapshot.environments[0];
  CHECK(env.kind == snapshot::EnvironmentKind::conda);
  const auto* z = find_package(env, "zlib");
  REQUIRE(z);
  CHECK(z->manager == snapshot::PackageManager::conda);
  CHECK(z->channel == "https://conda.anaconda.org/conda-forge");
  CHECK(paths_of(z->files) == std::vector<std::string>{"conda-meta/zlib-1.3-h0_0.json", hdr, lib});
  CHECK(z->modified == std::vector<std::string>{hdr});
  const auto* g = find_package(env, "gamma");
  REQUIRE(g);
  CHECK(g->manager == snapshot::PackageManager::pip);
  CHECK(paths_of(env.unowned) == std::vector<std::string>{"conda-meta/history", "unowned.txt"});
  CHECK(tree_listing(prefix) == before);
}

TEST_CASE("hard links within a root are recorded, also from the stat cache; others are not") {
  namespace fs = std::filesystem;
  ScratchDir dir;
  auto prefix = make_plain_prefix(dir / "py");
  // pyenv's bin/python3.6 and bin/python3.6m: one inode, both unowned.
  fs::create_hard_link(prefix / "bin/python3", prefix / "bin/python3m");
  // A package's file and an unowned file: two items of one root.
  const std::string data = "lib/python3.11/site-packages/alpha/data.txt";
  fs::create_directories(prefix / "share");
  fs::create_hard_link(prefix / data, prefix / "share/data.txt");
  // Linked only to a path outside the root (as conda's pkgs cache links into environments).
  write_file(dir / "pkgs/libz.so", "zlib");
  fs::create_hard_link(dir / "pkgs/libz.so", prefix / "lib/libz.so");
  // A source tree pair, and a file whose only other link is excluded by .envdignore.
  write_file(dir / "src/data/one.csv", "1,2\n");
  fs::create_hard_link(dir / "src/data/one.csv", dir / "src/data/two.csv");
  write_file(dir / "src/solo.txt", "solo\n");
  write_file(dir / "src/.envdignore", "build/\n");
  fs::create_directories(dir / "src/build");
  fs::create_hard_link(dir / "src/solo.txt", dir / "src/build/solo.txt");
  REQUIRE(fs::hard_link_count(prefix / "lib/libz.so") == 2);
  auto before = tree_listing(prefix);

  auto opts = options_for(prefix, dir / "state");
  opts.src = dir / "src";
  auto cold = take_snapshot(opts);
  REQUIRE(cold);
  auto warm = take_snapshot(opts);  // every digest from the stat cache now
  REQUIRE(warm);
  CHECK(warm->files_hashed == 0);
  CHECK(warm->digest == cold->digest);
  for (const auto* out : {&*cold, &*warm}) {
    const auto& env = out->snapshot.environments.at(0);
    auto unowned = [&](const std::string& path) -> const snapshot::FileEntry& {
      for (const auto& f : env.unowned)
        if (f.path == path) return f;
      FAIL("no unowned file " << path);
      throw 0;
    };
    CHECK(unowned("bin/python3").link.empty());
    CHECK(unowned("bin/python3m").link == "bin/python3");
    CHECK(unowned("bin/python3m").digest == unowned("bin/python3").digest);
    CHECK(unowned("bin/python3m").mode == 0755);
    CHECK(unowned("share/data.txt").link == data);
    CHECK(unowned("lib/libz.so").link.empty());
    const auto* alpha = find_package(env, "alpha");
    REQUIRE(alpha);
    for (const auto& f : alpha->files) CHECK(f.link.empty());
    std::size_t linked = 0;
    for (const auto& f : env.unowned) linked += f.link.empty() ? 0 : 1;
    for (const auto& p : env.packages)
      for (const auto& f : p.files) linked += f.link.empty() ? 0 : 1;
    CHECK(linked == 2);

    REQUIRE(out->snapshot.sources.size() == 1);
    const auto& src = out->snapshot.sources[0];
    CHECK(paths_of(src.files) ==
          std::vector<std::string>{".envdignore", "data/one.csv", "data/two.csv", "solo.txt"});
    CHECK(src.files[1].link.empty());
    CHECK(src.files[2].link == "data/one.csv");
    CHECK(src.files[3].link.empty());

    // What the agent records is what parse accepts.
    auto text = snapshot::to_json(out->snapshot);
    REQUIRE(text);
    auto parsed = snapshot::parse(*text);
    REQUIRE_MESSAGE(parsed, parsed.error().message());
    CHECK(*parsed == out->snapshot);
  }
  CHECK(tree_listing(prefix) == before);
}

TEST_CASE("a directory that is no environment fails naming it, writing nothing") {
  ScratchDir dir;
  write_file(dir / "plain/readme.txt", "hi");
  auto before = tree_listing(dir / "plain");
  auto out = take_snapshot(options_for(dir / "plain", dir / "state"));
  REQUIRE_FALSE(out);
  CHECK(out.error().code() == ErrorCode::invalid_argument);
  CHECK(out.error().message().find((dir / "plain").string()) != std::string::npos);
  CHECK(tree_listing(dir / "plain") == before);
}

TEST_CASE("a secret in the source tree blocks the snapshot, naming file and rule, unless allowed") {
  ScratchDir dir;
  auto prefix = make_plain_prefix(dir / "py");
  write_file(dir / "src/main.py", "print(1)\n");
  write_file(dir / "src/config/.env", "TOKEN=abc\n");
  auto opts = options_for(prefix, dir / "state");
  opts.src = dir / "src";
  auto blocked = take_snapshot(opts);
  REQUIRE_FALSE(blocked);
  CHECK(blocked.error().code() == ErrorCode::permission_denied);
  CHECK(blocked.error().message().find((dir / "src/config/.env").string()) != std::string::npos);

  opts.secret_allow = {"config/.env"};
  auto allowed = take_snapshot(opts);
  REQUIRE(allowed);
  REQUIRE(allowed->snapshot.sources.size() == 1);
  CHECK(paths_of(allowed->snapshot.sources[0].files) ==
        std::vector<std::string>{"config/.env", "main.py"});
}

TEST_CASE("an editable install's project directory is captured as an editable source tree") {
  ScratchDir dir;
  auto prefix = make_plain_prefix(dir / "py");
  auto project = dir / "projects/mylib";
  write_file(project / "pyproject.toml", "[project]\nname = \"mylib\"\n");
  write_file(project / "src/mylib/__init__.py", "X = 1\n");
  const std::string site = "lib/python3.11/site-packages";
  add_pip_package(prefix, site, "mylib", "0.3",
                  {{"__editable__.mylib-0.3.pth", project.string() + "/src\n"}});
  write_file(
      prefix / site / "mylib-0.3.dist-info/direct_url.json",
      nlohmann::json({{"url", "file://" + project.string()}, {"dir_info", {{"editable", true}}}})
          .dump());
  auto out = take_snapshot(options_for(prefix, dir / "state"));
  REQUIRE(out);
  const auto* p = find_package(out->snapshot.environments[0], "mylib");
  REQUIRE(p);
  REQUIRE(p->editable_root);
  CHECK(*p->editable_root == project.string());
  REQUIRE(out->snapshot.sources.size() == 1);
  CHECK(out->snapshot.sources[0].role == snapshot::SourceRole::editable);
  CHECK(out->snapshot.sources[0].root == project.string());
  CHECK(paths_of(out->snapshot.sources[0].files) ==
        std::vector<std::string>{"pyproject.toml", "src/mylib/__init__.py"});
}
