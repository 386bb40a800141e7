// Tests for read_conda_meta: real conda-meta records written by conda 25 and rattler (pixi), plus
// records assembled from real package metadata, in scratch prefixes.
#include "agent/conda_meta.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "support/scratch_dir.hpp"

namespace fs = std::filesystem;
using envd::ErrorCode;
using envd::agent::Diagnostics;
using envd::agent::PackageRecord;
using envd::agent::read_conda_meta;
using envd::snapshot::PackageManager;
using envd::test::fixtures_dir;
using envd::test::read_file;
using envd::test::ScratchDir;
using envd::test::tree_listing;
using envd::test::write_file;

namespace {

fs::path conda_fixtures() {
  return fixtures_dir() / "conda";
}

// Copies every file of a fixture directory into prefix/conda-meta/ (records and history alike).
void copy_meta(const fs::path& prefix, const fs::path& fixture_dir) {
  fs::create_directories(prefix / "conda-meta");
  for (const auto& entry : fs::directory_iterator(fixture_dir))
    fs::copy_file(entry.path(), prefix / "conda-meta" / entry.path().filename());
}

const PackageRecord& find(const std::vector<PackageRecord>& records, std::string_view name) {
  auto it = std::find_if(records.begin(), records.end(),
                         [&](const PackageRecord& r) { return r.meta.name == name; });
  REQUIRE_MESSAGE(it != records.end(), "no record for ", name);
  return *it;
}

bool has_path(const PackageRecord& r, std::string_view path) {
  return std::binary_search(r.paths.begin(), r.paths.end(), std::string(path));
}

std::string expected_of(const PackageRecord& r, const std::string& path) {
  auto it = r.expected.find(path);
  return it == r.expected.end() ? std::string("<none>") : it->second.str();
}

std::vector<std::string> names(const std::vector<PackageRecord>& records) {
  std::vector<std::string> out;
  for (const auto& r : records) out.push_back(r.meta.name);
  return out;
}

// A minimal record; `extra` is spliced in as further top-level keys.
std::string minimal_record(const std::string& name, const std::string& extra) {
  return R"({"name":")" + name + R"(","version":"1.0","build":"0","subdir":"linux-64",)" +
         R"("channel":"https://conda.anaconda.org/conda-forge/linux-64",)" + extra + "}";
}

}  // namespace

TEST_CASE("conda 25 prefix: identity, channel, subdir, requested and owned paths per package") {
  ScratchDir dir;
  const fs::path prefix = dir / "env";
  copy_meta(prefix, conda_fixtures() / "conda-meta-conda25-osx-arm64");
  const auto before = tree_listing(dir.path());

  Diagnostics diagnostics;
  auto result = read_conda_meta(prefix, diagnostics);
  REQUIRE(result.has_value());
  const auto& records = *result;
  CHECK(diagnostics.size() == 0);
  CHECK(names(records) == std::vector<std::string>{"ca-certificates", "libffi", "openssl", "pip",
                                                   "python", "python_abi"});

  struct Want {
    const char *name, *version, *build, *subdir;
    bool requested;
    std::size_t paths, expected;  // paths = `files` entries + the record itself
  };
  const Want wants[] = {
      {"ca-certificates", "2025.1.31", "hf0a4a13_0", "osx-arm64", false, 3, 1},
      {"libffi", "3.4.2", "h3422bc3_5", "osx-arm64", false, 12, 10},
      {"openssl", "3.4.1", "h81ee809_0", "osx-arm64", false, 17, 13},
      {"pip", "25.0.1", "pyh145f28c_0", "noarch", true, 17, 12},
      {"python", "3.13.2", "hfd29fff_1_cp313t", "osx-arm64", true, 43, 29},
      {"python_abi", "3.13", "5_cp313t", "osx-arm64", true, 1, 0},
  };
  for (const auto& w : wants) {
    CAPTURE(w.name);
    const auto& r = find(records, w.name);
    CHECK(r.meta.version == w.version);
    CHECK(r.meta.build == w.build);
    CHECK(r.meta.channel == "https://conda.anaconda.org/conda-forge");
    CHECK(r.meta.subdir == w.subdir);
    CHECK(r.meta.manager == PackageManager::conda);
    CHECK(r.meta.installer == "conda");
    CHECK(r.meta.requested == w.requested);
    CHECK(r.paths.size() == w.paths);
    CHECK(r.expected.size() == w.expected);
    CHECK(std::is_sorted(r.paths.begin(), r.paths.end()));
    const std::string own =
        "conda-meta/" + std::string(w.name) + "-" + w.version + "-" + w.build + ".json";
    CHECK(r.record_path == own);
    CHECK(has_path(r, own));
    CHECK(r.expected.count(own) == 0);
    CHECK(r.meta.files.empty());
  }
  // python_abi has an empty `files`: it owns only its record.
  CHECK(find(records, "python_abi").paths ==
        std::vector<std::string>{"conda-meta/python_abi-3.13-5_cp313t.json"});
  CHECK(tree_listing(dir.path()) == before);
}

TEST_CASE("noarch python: paths_data's site-packages paths map onto the prefix-relative files") {
  ScratchDir dir;
  const fs::path prefix = dir / "env";
  fs::create_directories(prefix / "conda-meta");
  fs::copy_file(conda_fixtures() / "conda-meta-conda25-osx-arm64/pip-25.0.1-pyh145f28c_0.json",
                prefix / "conda-meta/pip-25.0.1-pyh145f28c_0.json");
  Diagnostics diagnostics;
  auto result = read_conda_meta(prefix, diagnostics);
  REQUIRE(result.has_value());
  REQUIRE(result->size() == 1);
  const auto& pip = result->front();
  CHECK(diagnostics.size() == 0);

  for (const auto& p : pip.paths) {
    CAPTURE(p);
    CHECK((p.starts_with("lib/python3.13t/site-packages/") || p.starts_with("bin/") ||
           p == "conda-meta/pip-25.0.1-pyh145f28c_0.json"));
  }
  CHECK(has_path(pip, "lib/python3.13t/site-packages/pip/__init__.py"));
  CHECK(has_path(pip, "lib/python3.13t/site-packages/pip-25.0.1.dist-info/RECORD"));
  CHECK(has_path(pip, "lib/python3.13t/site-packages/pip/__pycache__/__main__.cpython-313.pyc"));
  CHECK(has_path(pip, "bin/pip3"));
  CHECK_FALSE(has_path(pip, "site-packages/pip/__init__.py"));
  // The digest recorded under the package-relative _path lands on the prefix-relative path.
  CHECK(expected_of(pip, "lib/python3.13t/site-packages/pip/__init__.py") ==
        "sha256:68a8affec4deed46c4eea9ad0a29c9bad163a8dd0c9dd6506757ca2cdc0514b1");
  CHECK(expected_of(pip, "lib/python3.13t/site-packages/pip-25.0.1.dist-info/REQUESTED") ==
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  // Entry points and pyc files are generated at install time: no recorded digest.
  CHECK(expected_of(pip, "bin/pip") == "<none>");
  CHECK(
      expected_of(pip, "lib/python3.13t/site-packages/pip/__pycache__/__init__.cpython-313.pyc") ==
      "<none>");
  for (const auto& [path, digest] : pip.expected) CHECK(has_path(pip, path));
}

TEST_CASE("expected digests: sha256_in_prefix first, softlinks none, placeholders rewritten") {
  ScratchDir dir;
  const fs::path prefix = dir / "env";
  copy_meta(prefix, conda_fixtures() / "conda-meta-conda25-osx-arm64");
  Diagnostics diagnostics;
  auto result = read_conda_meta(prefix, diagnostics);
  REQUIRE(result.has_value());

  const auto& libffi = find(*result, "libffi");
  // Binary placeholder: sha256 is the packaged bytes, sha256_in_prefix the installed ones.
  CHECK(expected_of(libffi, "lib/libffi.8.dylib") ==
        "sha256:87b5d5ca811f28debbcd372a2f964ecf21f39d0550efb175dfdb0184a0b70bf6");
  CHECK(expected_of(libffi, "lib/pkgconfig/libffi.pc") ==
        "sha256:6877cd5cc718eb2030521535b24d61de50291e18083e8f27973edc016c53e309");
  CHECK(expected_of(libffi, "include/ffi.h") ==
        "sha256:f85cf93bd8b40a0b48b76208fe0b0566186829c040959fd864977602716dcc8e");
  CHECK(has_path(libffi, "lib/libffi.dylib"));
  CHECK(expected_of(libffi, "lib/libffi.dylib") == "<none>");  // softlink with a sha256

  const auto& openssl = find(*result, "openssl");
  CHECK(expected_of(openssl, "bin/c_rehash") ==
        "sha256:e531799eacebba080a84b275bc8d1968f368d2e650e944c8df458ff95712af1d");
  CHECK(expected_of(openssl, "ssl/misc/tsget") == "<none>");

  const auto& python = find(*result, "python");
  // No `sha256` at all in these entries, only sha256_in_prefix.
  CHECK(expected_of(python, "bin/python3.13") ==
        "sha256:6564fe87439cebbe28830cf7949e4a3f708ea33f8a4848dbd91c90de27ca8172");
  CHECK(expected_of(python, "include/python3.13t/Python.h") ==
        "sha256:229ea595a86f9e81b7676d28253d8e0137c6b238e880999b0a9ae91fe7d75907");
  CHECK(has_path(python, "bin/python"));
  CHECK(expected_of(python, "bin/python") == "<none>");
}

TEST_CASE("rattler records: channel with a trailing slash and no subdir") {
  ScratchDir dir;
  const fs::path prefix = dir / "pixi-env";
  copy_meta(prefix, conda_fixtures() / "conda-meta-rattler-osx-arm64");
  Diagnostics diagnostics;
  auto result = read_conda_meta(prefix, diagnostics);
  REQUIRE(result.has_value());
  CHECK(diagnostics.size() == 0);
  CHECK(names(*result) == std::vector<std::string>{"numpy", "zstd"});

  const auto& numpy = find(*result, "numpy");
  CHECK(numpy.meta.version == "1.26.4");
  CHECK(numpy.meta.build == "py311h7125741_0");
  CHECK(numpy.meta.channel == "https://conda.anaconda.org/conda-forge");
  CHECK(numpy.meta.subdir == "osx-arm64");
  CHECK_FALSE(numpy.meta.requested);  // rattler writes no requested_spec
  CHECK(numpy.paths.size() == 21);
  CHECK(numpy.expected.size() == 20);
  CHECK(expected_of(numpy, "bin/f2py") ==
        "sha256:dc7f82247ccc4049fd30795a038846c74f170db26dfb2d3a4914c0b7aa321032");

  const auto& zstd = find(*result, "zstd");
  CHECK(zstd.meta.version == "1.5.6");
  CHECK(zstd.meta.build == "hb46c0d2_0");
  CHECK(zstd.meta.channel == "https://conda.anaconda.org/conda-forge");
  CHECK(zstd.meta.subdir == "osx-arm64");
  CHECK(zstd.paths.size() == 23);
  CHECK(zstd.expected.size() == 15);
  // rattler gives softlinks a sha256_in_prefix too; a link still has no content of its own.
  CHECK(has_path(zstd, "bin/unzstd"));
  CHECK(expected_of(zstd, "bin/unzstd") == "<none>");
  CHECK(expected_of(zstd, "lib/pkgconfig/libzstd.pc") ==
        "sha256:90a732f547a4a7eea23336373993e17c28494a9a787527316b0c7247c9ac9487");
}

TEST_CASE("older-conda record from a real package's info: placeholder without sha256_in_prefix") {
  // Builds the record conda 4.x wrote (index.json + files + paths.json as paths_data, no
  // sha256_in_prefix) from the real zlib package metadata.
  const fs::path info = conda_fixtures() / "package-info/zlib-1.2.11-h7b6447c_3/info";
  std::string files = "[";
  std::ifstream in(info / "files");
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) files += (files.size() > 1 ? ",\"" : "\"") + line + "\"";
  files += "]";
  std::string record = read_file(info / "index.json");
  record.erase(record.rfind('}'));
  record += R"(,"channel":"https://repo.anaconda.com/pkgs/main/linux-64","requested_spec":"None",)";
  record +=
      R"("url":"https://repo.anaconda.com/pkgs/main/linux-64/zlib-1.2.11-h7b6447c_3.tar.bz2",)";
  record += "\"files\":" + files + ",\"paths_data\":" + read_file(info / "paths.json") + "}";

  ScratchDir dir;
  const fs::path prefix = dir / "env";
  write_file(prefix / "conda-meta/zlib-1.2.11-h7b6447c_3.json", record);
  Diagnostics diagnostics;
  auto result = read_conda_meta(prefix, diagnostics);
  REQUIRE(result.has_value());
  REQUIRE(result->size() == 1);
  const auto& zlib = result->front();
  CHECK(diagnostics.size() == 0);
  CHECK(zlib.meta.name == "zlib");
  CHECK(zlib.meta.version == "1.2.11");
  CHECK(zlib.meta.build == "h7b6447c_3");
  CHECK(zlib.meta.channel == "https://repo.anaconda.com/pkgs/main");
  CHECK(zlib.meta.subdir == "linux-64");
  CHECK(zlib.paths.size() == 8);
  // 5 hardlinks, one of which (zlib.pc) has a prefix placeholder and no sha256_in_prefix.
  CHECK(zlib.expected.size() == 4);
  CHECK(expected_of(zlib, "include/zconf.h") ==
        "sha256:77304005ceb5f0d03ad4c37eb8386a10866e4ceeb204f7c3b6599834c7319541");
  CHECK(has_path(zlib, "lib/pkgconfig/zlib.pc"));
  CHECK(expected_of(zlib, "lib/pkgconfig/zlib.pc") == "<none>");
  CHECK(expected_of(zlib, "lib/libz.so") == "<none>");
}

TEST_CASE("repodata_record-shaped record with empty files owns only its record") {
  std::string record = read_file(conda_fixtures() /
                                 "package-info/repodata_record._libgcc_mutex-0.1-conda_forge.json");
  record.erase(record.rfind('}'));
  record += R"(,"files":[],"paths_data":{"paths":[],"paths_version":1},"link":{"type":1}})";
  ScratchDir dir;
  const fs::path prefix = dir / "env";
  write_file(prefix / "conda-meta/_libgcc_mutex-0.1-conda_forge.json", record);
  Diagnostics diagnostics;
  auto result = read_conda_meta(prefix, diagnostics);
  REQUIRE(result.has_value());
  REQUIRE(result->size() == 1);
  const auto& r = result->front();
  CHECK(r.meta.name == "_libgcc_mutex");
  CHECK(r.meta.version == "0.1");
  CHECK(r.meta.build == "conda_forge");
  CHECK(r.meta.channel == "https://conda.anaconda.org/conda-forge");
  CHECK(r.meta.subdir == "linux-64");
  CHECK(r.paths == std::vector<std::string>{"conda-meta/_libgcc_mutex-0.1-conda_forge.json"});
  CHECK(r.expected.empty());
  CHECK(diagnostics.size() == 0);
}

TEST_CASE("prefix replacement: the expectation is the digest of the rewritten file") {
  const fs::path cases = conda_fixtures() / "prefix-replacement";
  const auto text_in = envd::oci::sha256_of(read_file(cases / "text-with-placeholder.pc"));
  const auto text_out =
      envd::oci::sha256_of(read_file(cases / "text-with-placeholder.expected.pc"));
  const auto bin_in = envd::oci::sha256_of(read_file(cases / "binary-with-placeholder.bin"));
  const std::string placeholder =
      "/home/conda/feedstock_root/build_artifacts/openssl_split_1739300901696/_h_env_placehold";
  auto entry = [&](const std::string& path, const std::string& mode, const std::string& sha,
                   const std::string& in_prefix) {
    std::string e = R"({"_path":")" + path + R"(","path_type":"hardlink","file_mode":")" + mode +
                    R"(","prefix_placeholder":")" + placeholder + R"(","sha256":")" + sha + "\"";
    if (!in_prefix.empty()) e += R"(,"sha256_in_prefix":")" + in_prefix + "\"";
    return e + "}";
  };
  const std::string record = minimal_record(
      "placeholders",
      R"("files":["lib/pkgconfig/text.pc","bin/tool"],"paths_data":{"paths_version":1,"paths":[)" +
          entry("lib/pkgconfig/text.pc", "text", std::string(text_in.hex()),
                std::string(text_out.hex())) +
          "," + entry("bin/tool", "binary", std::string(bin_in.hex()), "") + "]}");
  ScratchDir dir;
  const fs::path prefix = dir / "env";
  write_file(prefix / "conda-meta/placeholders-1.0-0.json", record);
  Diagnostics diagnostics;
  auto result = read_conda_meta(prefix, diagnostics);
  REQUIRE(result.has_value());
  REQUIRE(result->size() == 1);
  const auto& r = result->front();
  CHECK(r.expected.at("lib/pkgconfig/text.pc") == text_out);
  CHECK(r.expected.at("lib/pkgconfig/text.pc") != text_in);
  // The packaged bytes' sha256 would flag every install as modified: no expectation instead.
  CHECK(r.expected.count("bin/tool") == 0);
  CHECK(has_path(r, "bin/tool"));
  CHECK(diagnostics.size() == 0);
}

TEST_CASE("history, pinned, frozen and state are not records") {
  ScratchDir dir;
  const fs::path prefix = dir / "env";
  const fs::path misc = conda_fixtures() / "conda-meta-misc";
  fs::create_directories(prefix / "conda-meta");
  fs::copy_file(misc / "history.micromamba-linux-64", prefix / "conda-meta/history");
  for (const char* name : {"pinned", "frozen", "state"})
    fs::copy_file(misc / name, prefix / "conda-meta" / name);
  Diagnostics diagnostics;
  auto result = read_conda_meta(prefix, diagnostics);
  REQUIRE(result.has_value());
  CHECK(result->empty());
  CHECK(diagnostics.size() == 0);

  // Next to a real record they change nothing.
  fs::copy_file(conda_fixtures() / "conda-meta-rattler-osx-arm64/zstd-1.5.6-hb46c0d2_0.json",
                prefix / "conda-meta/zstd-1.5.6-hb46c0d2_0.json");
  result = read_conda_meta(prefix, diagnostics);
  REQUIRE(result.has_value());
  CHECK(names(*result) == std::vector<std::string>{"zstd"});
  CHECK(diagnostics.size() == 0);
}

TEST_CASE("requested: requested_specs list, empty and \"None\" requested_spec") {
  ScratchDir dir;
  const fs::path prefix = dir / "env";
  write_file(prefix / "conda-meta/a-1.0-0.json",
             minimal_record("a", R"("requested_specs":["a >=1"],"files":[])"));
  write_file(prefix / "conda-meta/b-1.0-0.json",
             minimal_record("b", R"("requested_spec":"","files":[])"));
  write_file(prefix / "conda-meta/c-1.0-0.json",
             minimal_record("c", R"("requested_spec":"None","requested_specs":[],"files":[])"));
  write_file(prefix / "conda-meta/d-1.0-0.json",
             minimal_record("d", R"("requested_spec":"d=1.0","unknown_key":{"x":[1]},"files":[])"));
  Diagnostics diagnostics;
  auto result = read_conda_meta(prefix, diagnostics);
  REQUIRE(result.has_value());
  REQUIRE(names(*result) == std::vector<std::string>{"a", "b", "c", "d"});
  CHECK((*result)[0].meta.requested);
  CHECK_FALSE((*result)[1].meta.requested);
  CHECK_FALSE((*result)[2].meta.requested);
  CHECK((*result)[3].meta.requested);
  CHECK(diagnostics.size() == 0);
}

TEST_CASE("channel credentials and tokens are redacted; subdir taken from the channel") {
  ScratchDir dir;
  const fs::path prefix = dir / "env";
  write_file(
      prefix / "conda-meta/secret-2.0-h1_0.json",
      R"({"name":"secret","version":"2.0","build":"h1_0","files":["lib/libsecret.so"],)"
      R"("channel":"https://alice:s3cr3tpw@conda.example.com/t/tk-0123abcd/private/linux-64"})");
  write_file(prefix / "conda-meta/tokenonly-1.0-0.json",
             R"({"name":"tokenonly","version":"1.0","build":"0","subdir":"noarch",)"
             R"("channel":"https://conda.anaconda.org/t/xy-98765/mychannel/noarch"})");
  Diagnostics diagnostics;
  auto result = read_conda_meta(prefix, diagnostics);
  REQUIRE(result.has_value());
  const auto& secret = find(*result, "secret");
  CHECK(secret.meta.channel == "https://***@conda.example.com/t/***/private");
  CHECK(secret.meta.subdir == "linux-64");
  const auto& token = find(*result, "tokenonly");
  CHECK(token.meta.channel == "https://conda.anaconda.org/t/***/mychannel");
  CHECK(token.meta.subdir == "noarch");
  CHECK(token.paths == std::vector<std::string>{"conda-meta/tokenonly-1.0-0.json"});
  for (const auto& d : diagnostics.list()) {
    CHECK(d.message.find("s3cr3tpw") == std::string::npos);
    CHECK(d.message.find("tk-0123abcd") == std::string::npos);
  }
}

TEST_CASE("a broken JSON record is a warning naming the file; other packages are still read") {
  ScratchDir dir;
  const fs::path prefix = dir / "env";
  copy_meta(prefix, conda_fixtures() / "conda-meta-rattler-osx-arm64");
  write_file(prefix / "conda-meta/broken-1.0-0.json", R"({"name": "broken", "version": )");
  const auto before = tree_listing(dir.path());
  Diagnostics diagnostics;
  auto result = read_conda_meta(prefix, diagnostics);
  REQUIRE(result.has_value());
  CHECK(names(*result) == std::vector<std::string>{"numpy", "zstd"});
  const auto warnings = diagnostics.list();
  REQUIRE(warnings.size() == 1);
  CHECK(warnings[0].path == (prefix / "conda-meta/broken-1.0-0.json").string());
  CHECK(warnings[0].message.find("broken-1.0-0.json") != std::string::npos);
  CHECK(warnings[0].message.find("invalid JSON") != std::string::npos);
  CHECK(tree_listing(dir.path()) == before);
}

TEST_CASE("records missing name or version, or with wrong types, are skipped with a warning") {
  ScratchDir dir;
  const fs::path prefix = dir / "env";
  write_file(prefix / "conda-meta/noname-1.0-0.json", R"({"version":"1.0","files":["a"]})");
  write_file(prefix / "conda-meta/noversion-1.0-0.json", R"({"name":"noversion","files":[]})");
  write_file(prefix / "conda-meta/badfiles-1.0-0.json",
             R"({"name":"badfiles","version":"1.0","files":"lib/x"})");
  write_file(prefix / "conda-meta/array-1.0-0.json", "[1, 2]");
  write_file(prefix / "conda-meta/good-1.0-0.json", minimal_record("good", R"("files":["lib/g"])"));
  const auto before = tree_listing(dir.path());
  Diagnostics diagnostics;
  auto result = read_conda_meta(prefix, diagnostics);
  REQUIRE(result.has_value());
  CHECK(names(*result) == std::vector<std::string>{"good"});
  const auto warnings = diagnostics.list();
  REQUIRE(warnings.size() == 4);
  auto warning_for = [&](const std::string& file) {
    for (const auto& w : warnings)
      if (w.path == (prefix / "conda-meta" / file).string()) return w.message;
    return std::string("<no warning>");
  };
  CHECK(warning_for("noname-1.0-0.json").find("missing \"name\"") != std::string::npos);
  CHECK(warning_for("noversion-1.0-0.json").find("missing \"version\"") != std::string::npos);
  CHECK(warning_for("badfiles-1.0-0.json").find("\"files\" is not a list") != std::string::npos);
  CHECK(warning_for("array-1.0-0.json").find("not a JSON object") != std::string::npos);
  for (const auto& w : warnings) CHECK(w.message.find("skipped") != std::string::npos);
  CHECK(tree_listing(dir.path()) == before);
}

TEST_CASE("absolute and .. paths are dropped with a warning; others are normalised") {
  ScratchDir dir;
  const fs::path prefix = dir / "env";
  write_file(
      prefix / "conda-meta/evil-1.0-0.json",
      minimal_record(
          "evil",
          R"("files":["/etc/passwd","../../outside","lib/../../x","lib/ok.so",)"
          R"("./share/a.txt","lib//b.txt"],)"
          R"("paths_data":{"paths":[{"_path":"/etc/shadow","path_type":"hardlink",)"
          R"("sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}]})"));
  Diagnostics diagnostics;
  auto result = read_conda_meta(prefix, diagnostics);
  REQUIRE(result.has_value());
  REQUIRE(result->size() == 1);
  const auto& r = result->front();
  CHECK(r.paths == std::vector<std::string>{"conda-meta/evil-1.0-0.json", "lib/b.txt", "lib/ok.so",
                                            "share/a.txt"});
  CHECK(r.expected.empty());
  const auto warnings = diagnostics.list();
  REQUIRE(warnings.size() == 1);
  CHECK(warnings[0].path == (prefix / "conda-meta/evil-1.0-0.json").string());
  CHECK(warnings[0].message.find("dropped 4 unsafe path(s)") != std::string::npos);
}

TEST_CASE("noarch python-scripts map to bin, site-packages without a files entry is placed") {
  ScratchDir dir;
  const fs::path prefix = dir / "env";
  const std::string sha_a = "1111111111111111111111111111111111111111111111111111111111111111";
  const std::string sha_b = "2222222222222222222222222222222222222222222222222222222222222222";
  write_file(prefix / "conda-meta/tool-1.0-pyhd8ed1ab_0.json",
             R"({"name":"tool","version":"1.0","build":"pyhd8ed1ab_0","noarch":"python",)"
             R"("subdir":"noarch","channel":"https://conda.anaconda.org/conda-forge/noarch",)"
             R"("files":["bin/tool-run","lib/python3.12/site-packages/tool/__init__.py"],)"
             R"("paths_data":{"paths_version":1,"paths":[)"
             R"({"_path":"python-scripts/tool-run","path_type":"hardlink","sha256":")" +
                 sha_a +
                 R"("},)"
                 R"({"_path":"site-packages/tool/data.txt","path_type":"hardlink","sha256":")" +
                 sha_b + R"("}]}})");
  Diagnostics diagnostics;
  auto result = read_conda_meta(prefix, diagnostics);
  REQUIRE(result.has_value());
  REQUIRE(result->size() == 1);
  const auto& r = result->front();
  CHECK(r.paths == std::vector<std::string>{"bin/tool-run", "conda-meta/tool-1.0-pyhd8ed1ab_0.json",
                                            "lib/python3.12/site-packages/tool/__init__.py",
                                            "lib/python3.12/site-packages/tool/data.txt"});
  CHECK(expected_of(r, "bin/tool-run") == "sha256:" + sha_a);
  CHECK(expected_of(r, "lib/python3.12/site-packages/tool/data.txt") == "sha256:" + sha_b);
  CHECK(r.meta.subdir == "noarch");
  CHECK(r.meta.channel == "https://conda.anaconda.org/conda-forge");
  CHECK(diagnostics.size() == 0);
}

TEST_CASE("a prefix without conda-meta is not_found and nothing is created") {
  ScratchDir dir;
  const fs::path prefix = dir / "venv";
  write_file(prefix / "pyvenv.cfg", "home = /usr/bin\n");
  const auto before = tree_listing(dir.path());
  Diagnostics diagnostics;
  auto result = read_conda_meta(prefix, diagnostics);
  REQUIRE_FALSE(result.has_value());
  CHECK(result.error().code() == ErrorCode::not_found);
  CHECK(result.error().message().find("conda-meta") != std::string::npos);
  CHECK(tree_listing(dir.path()) == before);

  auto missing = read_conda_meta(dir / "does-not-exist", diagnostics);
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().code() == ErrorCode::not_found);
  CHECK(diagnostics.size() == 0);
}
