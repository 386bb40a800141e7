// Tests for the snapshot JSON form: round trip, canonical output, the digest and its volatile
// fields, parse's validation with JSON locations, and agreement with schemas/snapshot.schema.json
// (checked with Debian's python3-jsonschema).
#include <doctest/doctest.h>

#include <filesystem>
#include <functional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "envd/oci/digest.hpp"
#include "envd/snapshot/snapshot.hpp"
#include "support/run_command.hpp"
#include "support/scratch_dir.hpp"

namespace envd::snapshot {
namespace {

namespace fs = std::filesystem;

FileEntry regular(std::string path, std::string_view content, std::uint32_t mode = 0644) {
  FileEntry f;
  f.path = std::move(path);
  f.type = FileType::regular;
  f.digest = oci::sha256_of(content);
  f.size = content.size();
  f.mode = mode;
  return f;
}

FileEntry symlink(std::string path, std::string target) {
  FileEntry f;
  f.path = std::move(path);
  f.type = FileType::symlink;
  f.mode = 0777;
  f.target = std::move(target);
  return f;
}

// Small enough that its canonical text is predictable, so tests can edit it as a string.
// Modes are chosen so "mode":493 (0755) occurs once: on packages/0/files/0.
Snapshot small_snapshot() {
  Package p;
  p.name = "pkg";
  p.version = "1.0";
  p.manager = PackageManager::conda;
  p.build = "h0_0";
  p.channel = "conda-forge";
  p.subdir = "linux-64";
  p.installer = "conda";
  p.requested = true;
  p.editable_root = "/src";
  p.files = {regular("bin/a", "a", 0755), symlink("bin/b", "a")};
  p.modified = {"bin/a"};

  Environment e;
  e.kind = EnvironmentKind::conda;
  e.name = "env";
  e.prefix = "/opt/env";
  e.python_version = "3.11.7";
  e.base_prefix = "/opt/base";
  e.packages = {p};
  e.unowned = {regular("etc/x", "x")};

  SourceTree src;
  src.root = "/src";
  src.role = SourceRole::src;
  src.ignored = {{".gitignore", 2}};
  src.files = {regular("README", "r")};

  Snapshot s;
  s.platform = {"linux", "amd64", "musl"};
  s.environments = {e};
  s.sources = {src};
  s.created = "2024-03-01T12:00:00Z";
  s.host = "h";
  s.envd_version = "0.1.0";
  return s;
}

// Every optional field set, every enum value used.
Snapshot rich_snapshot() {
  Package python;
  python.name = "python";
  python.version = "3.11.7";
  python.manager = PackageManager::conda;
  python.build = "hab00c5b_1_cpython";
  python.channel = "conda-forge";
  python.subdir = "linux-64";
  python.installer = "conda";
  python.requested = true;
  python.files = {symlink("bin/python", "python3.11"), regular("bin/python3.11", "elf", 0755),
                  regular("lib/python3.11/os.py", "os")};
  python.modified = {"lib/python3.11/os.py"};

  Package tqdm;
  tqdm.name = "tqdm";
  tqdm.version = "4.66.1";
  tqdm.manager = PackageManager::pip;
  tqdm.installer = "pip";
  tqdm.requested = true;
  tqdm.direct_url = "https://files.example.org/tqdm-4.66.1-py3-none-any.whl";
  tqdm.files = {regular("lib/python3.11/site-packages/tqdm/__init__.py", "tqdm")};

  Environment conda;
  conda.kind = EnvironmentKind::conda;
  conda.name = "ds";
  conda.prefix = "/home/alice/miniforge3/envs/ds";
  conda.python_version = "3.11.7";
  conda.packages = {python, tqdm};
  conda.unowned = {regular("conda-meta/history", "==> 2024 <==\n")};

  Package proj;
  proj.name = "proj";
  proj.version = "0.1.0";
  proj.manager = PackageManager::pip;
  proj.installer = "uv";
  proj.direct_url = "file:///home/alice/proj";
  proj.editable_root = "/home/alice/proj";
  proj.files = {regular("lib/python3.12/site-packages/_proj.pth", "/home/alice/proj/src\n")};

  Environment venv;
  venv.kind = EnvironmentKind::venv;
  venv.name = ".venv";
  venv.prefix = "/home/alice/proj/.venv";
  venv.python_version = "3.12.1";
  venv.base_prefix = "/usr/local";
  venv.system_site_packages = true;
  venv.packages = {proj};
  venv.unowned = {symlink("bin/python", "/usr/local/bin/python3.12"),
                  regular("pyvenv.cfg", "home = /usr/local/bin\n")};

  Environment base;
  base.kind = EnvironmentKind::prefix;
  base.name = "local";
  base.prefix = "/usr/local";
  base.python_version = "3.12.1";
  base.partial = true;
  base.unowned = {regular("bin/python3.12", "elf312", 0755)};

  SourceTree src;
  src.root = "/home/alice/proj";
  src.role = SourceRole::src;
  src.git_commit = "9fceb02d0ae598e95dc970b74767f19372d61af8";
  src.dirty = true;
  src.ignored = {{".envdignore", 3}, {".gitignore", 1342}};
  src.files = {symlink("data", "/mnt/data"), regular("pyproject.toml", "[project]\n"),
               regular("run.sh", "#!/bin/sh\n", 04755)};

  SourceTree lib;
  lib.root = "/home/alice/lib";
  lib.role = SourceRole::editable;
  lib.git_commit = std::string(64, 'a');
  lib.files = {regular("lib.py", "x = 1\n")};

  Snapshot s;
  s.platform = {"linux", "arm64", "glibc 2.36"};
  s.environments = {conda, venv, base};
  s.sources = {lib, src};
  s.created = "2024-03-01T12:00:00Z";
  s.host = "alice-laptop";
  s.envd_version = "0.1.0";
  return s;
}

// No optional field set, volatile fields empty.
Snapshot bare_snapshot() {
  Package p;
  p.name = "six";
  p.version = "1.16.0";
  p.manager = PackageManager::pip;
  p.files = {regular("six.py", "six")};

  Environment e;
  e.kind = EnvironmentKind::prefix;
  e.prefix = "/";
  e.packages = {p};

  SourceTree src;
  src.root = "/work";

  Snapshot s;
  s.platform = {"linux", "amd64", ""};
  s.environments = {e};
  s.sources = {src};
  return s;
}

std::string json_of(const Snapshot& s) {
  auto text = to_json(s);
  REQUIRE(text.has_value());
  return *text;
}

oci::Digest digest_value(const Snapshot& s) {
  auto d = digest_of(s);
  REQUIRE(d.has_value());
  return *d;
}

// Replaces the first occurrence of `from`, which must occur.
std::string replaced(std::string text, std::string_view from, std::string_view to) {
  auto pos = text.find(from);
  REQUIRE_MESSAGE(pos != std::string::npos, "substring not found: " << from);
  text.replace(pos, from.size(), to);
  return text;
}

fs::path schema_path() {
  return (fs::path(__FILE__).parent_path() / "../../../schemas/snapshot.schema.json")
      .lexically_normal();
}
fs::path example_path() {
  return (fs::path(__FILE__).parent_path() / "../../../schemas/examples/snapshot.example.json")
      .lexically_normal();
}

// Validates each document against the schema with Debian's python3-jsonschema (not the pyenv
// python on PATH). Returns one line per document: "valid" or "invalid <json pointer>: <message>".
std::vector<std::string> validate_with_schema(const std::vector<std::string>& documents) {
  test::ScratchDir dir;
  std::vector<std::string> argv = {"/usr/bin/python3", "-c", R"PY(
import json, sys, jsonschema
with open(sys.argv[1], encoding="utf-8") as f:
    schema = json.load(f)
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema)
for path in sys.argv[2:]:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is None:
        print("valid")
    else:
        where = "".join("/" + str(p) for p in error.absolute_path)
        print("invalid " + where + ": " + error.message.replace("\n", " ")[:300])
)PY",
                                   schema_path().string()};
  for (size_t i = 0; i < documents.size(); ++i) {
    auto p = dir / ("doc" + std::to_string(i) + ".json");
    test::write_file(p, documents[i]);
    argv.push_back(p.string());
  }
  auto result = test::run_command(argv);
  INFO("stderr: " << result.err);
  REQUIRE(result.exit_code == 0);
  std::vector<std::string> lines;
  std::istringstream in(result.out);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  REQUIRE(lines.size() == documents.size());
  return lines;
}

TEST_CASE("to_json then parse gives back the same snapshot") {
  for (const auto& original : {small_snapshot(), rich_snapshot(), bare_snapshot()}) {
    auto text = json_of(original);
    CAPTURE(text);
    auto parsed = parse(text);
    REQUIRE(parsed.has_value());
    CHECK(*parsed == original);
  }
}

TEST_CASE("round trip keeps optional fields absent or present") {
  auto rich = parse(json_of(rich_snapshot()));
  REQUIRE(rich.has_value());
  CHECK(rich->environments[1].base_prefix == std::optional<std::string>("/usr/local"));
  CHECK(rich->environments[1].packages[0].editable_root ==
        std::optional<std::string>("/home/alice/proj"));
  CHECK(rich->sources[1].git_commit ==
        std::optional<std::string>("9fceb02d0ae598e95dc970b74767f19372d61af8"));
  auto bare = parse(json_of(bare_snapshot()));
  REQUIRE(bare.has_value());
  CHECK_FALSE(bare->environments[0].base_prefix.has_value());
  CHECK_FALSE(bare->environments[0].packages[0].editable_root.has_value());
  CHECK_FALSE(bare->sources[0].git_commit.has_value());
  auto text = json_of(bare_snapshot());
  for (std::string_view key : {"\"base_prefix\"", "\"editable_root\"", "\"git_commit\"",
                               "\"direct_url\"", "\"build\"", "\"channel\"", "\"subdir\""}) {
    CAPTURE(key);
    CHECK(text.find(key) == std::string::npos);
  }
}

TEST_CASE("to_json is canonical: sorted keys, no whitespace") {
  auto s = small_snapshot();
  auto text = json_of(s);
  CAPTURE(text);
  CHECK(
      text.starts_with("{\"created\":\"2024-03-01T12:00:00Z\",\"envd_version\":\"0.1.0\","
                       "\"environments\":[{\"base_prefix\":\"/opt/base\",\"kind\":\"conda\","));
  CHECK(
      text.ends_with("\"media_type\":\"application/vnd.envd.snapshot.v1+json\","
                     "\"platform\":{\"arch\":\"amd64\",\"libc\":\"musl\",\"os\":\"linux\"},"
                     "\"sources\":[{\"dirty\":false,\"files\":[{\"digest\":\"" +
                     oci::sha256_of("r").str() +
                     "\",\"mode\":420,\"path\":\"README\",\"size\":1,\"type\":\"file\"}],"
                     "\"ignored\":{\".gitignore\":2},\"role\":\"src\",\"root\":\"/src\"}]}"));
  CHECK(text.find("{\"digest\":\"" + oci::sha256_of("a").str() +
                  "\",\"mode\":493,\"path\":\"bin/a\",\"size\":1,\"type\":\"file\"},"
                  "{\"mode\":511,\"path\":\"bin/b\",\"target\":\"a\",\"type\":\"symlink\"}") !=
        std::string::npos);
  // No string in this snapshot holds whitespace, so any whitespace would be insignificant.
  CHECK(text.find_first_of(" \t\r\n") == std::string::npos);
}

TEST_CASE("re-serialising a parsed document gives identical bytes") {
  for (const auto& s : {small_snapshot(), rich_snapshot(), bare_snapshot()}) {
    auto text = json_of(s);
    auto parsed = parse(text);
    REQUIRE(parsed.has_value());
    CHECK(json_of(*parsed) == text);
  }
  // A pretty-printed document in writer-independent key order comes out canonical and stable.
  auto example = parse(test::read_file(example_path()));
  REQUIRE(example.has_value());
  auto canonical = json_of(*example);
  CHECK(canonical.find('\n') == std::string::npos);
  auto again = parse(canonical);
  REQUIRE(again.has_value());
  CHECK(json_of(*again) == canonical);
}

TEST_CASE("digest_of is the SHA-256 of the canonical JSON without the volatile fields") {
  auto s = small_snapshot();
  auto stable = json_of(s);
  stable = replaced(stable, "\"created\":\"2024-03-01T12:00:00Z\",", "");
  stable = replaced(stable, "\"envd_version\":\"0.1.0\",", "");
  stable = replaced(stable, "\"host\":\"h\",", "");
  CAPTURE(stable);
  CHECK(stable.starts_with("{\"environments\":["));
  CHECK(digest_value(s) == oci::sha256_of(stable));
}

TEST_CASE("digest_of is stable and ignores created, host and envd_version") {
  auto s = small_snapshot();
  auto d = digest_value(s);
  CHECK(digest_value(s) == d);
  CHECK(digest_value(small_snapshot()) == d);
  auto v = s;
  v.created = "2031-12-31T23:59:59Z";
  v.host = "other-machine";
  v.envd_version = "9.9.9";
  CHECK(json_of(v) != json_of(s));
  CHECK(digest_value(v) == d);
  // A parsed copy has the same digest.
  auto parsed = parse(json_of(s));
  REQUIRE(parsed.has_value());
  CHECK(digest_value(*parsed) == d);
}

TEST_CASE("digest_of changes when content changes") {
  const auto base = digest_value(small_snapshot());
  struct Change {
    std::string name;
    std::function<void(Snapshot&)> apply;
  };
  const std::vector<Change> changes = {
      {"file digest",
       [](Snapshot& s) { s.environments[0].packages[0].files[0].digest = oci::sha256_of("b"); }},
      {"file mode", [](Snapshot& s) { s.environments[0].packages[0].files[0].mode = 0700; }},
      {"file size", [](Snapshot& s) { s.environments[0].packages[0].files[0].size = 2; }},
      {"file path", [](Snapshot& s) { s.environments[0].unowned[0].path = "etc/y"; }},
      {"symlink target", [](Snapshot& s) { s.environments[0].packages[0].files[1].target = "c"; }},
      {"package version", [](Snapshot& s) { s.environments[0].packages[0].version = "1.1"; }},
      {"package build", [](Snapshot& s) { s.environments[0].packages[0].build = "h0_1"; }},
      {"source file digest",
       [](Snapshot& s) { s.sources[0].files[0].digest = oci::sha256_of("R"); }},
      {"prefix", [](Snapshot& s) { s.environments[0].prefix = "/opt/env2"; }},
      {"partial", [](Snapshot& s) { s.environments[0].partial = true; }},
      {"git commit", [](Snapshot& s) { s.sources[0].git_commit = std::string(40, '0'); }},
      {"dirty", [](Snapshot& s) { s.sources[0].dirty = true; }},
      {"ignored count", [](Snapshot& s) { s.sources[0].ignored[".gitignore"] = 3; }},
      {"arch", [](Snapshot& s) { s.platform.arch = "arm64"; }},
  };
  for (const auto& change : changes) {
    CAPTURE(change.name);
    auto s = small_snapshot();
    change.apply(s);
    CHECK(digest_value(s) != base);
  }
}

TEST_CASE("parse rejects bad fields with invalid_argument naming the JSON location") {
  const auto base = json_of(small_snapshot());
  REQUIRE(parse(base).has_value());
  const std::string a = oci::sha256_of("a").str();
  const std::string a_hex = a.substr(7);
  std::string a_upper = a;
  for (auto& c : a_upper) c = (c >= 'a' && c <= 'f') ? static_cast<char>(c - 'a' + 'A') : c;
  a_upper.replace(0, 6, "sha256");

  struct Case {
    std::string name;
    std::string from;
    std::string to;
    std::string location;  // JSON pointer the message must name
  };
  const std::string file0 = "/environments/0/packages/0/files/0";
  const std::string file1 = "/environments/0/packages/0/files/1";
  const std::vector<Case> cases = {
      {"media type", "\"application/vnd.envd.snapshot.v1+json\"",
       "\"application/vnd.oci.image.manifest.v1+json\"", "/media_type"},
      {"path ..", "\"path\":\"bin/a\"", "\"path\":\"../x\"", file0 + "/path"},
      {"path absolute", "\"path\":\"bin/a\"", "\"path\":\"/abs\"", file0 + "/path"},
      {"path empty component", "\"path\":\"bin/a\"", "\"path\":\"a//b\"", file0 + "/path"},
      {"path . component", "\"path\":\"bin/a\"", "\"path\":\"a/./b\"", file0 + "/path"},
      {"path empty", "\"path\":\"bin/a\"", "\"path\":\"\"", file0 + "/path"},
      {"path trailing slash", "\"path\":\"bin/a\"", "\"path\":\"bin/\"", file0 + "/path"},
      {"path NUL", "\"path\":\"bin/a\"", "\"path\":\"bin/a\\u0000b\"", file0 + "/path"},
      {"unowned path", "\"path\":\"etc/x\"", "\"path\":\"etc/../x\"",
       "/environments/0/unowned/0/path"},
      {"source path", "\"path\":\"README\"", "\"path\":\"/README\"", "/sources/0/files/0/path"},
      {"digest uppercase", a, a_upper, file0 + "/digest"},
      {"digest md5", a, "md5:0cc175b9c0f1b6a831c399e269772661", file0 + "/digest"},
      {"digest short", a, a.substr(0, a.size() - 1), file0 + "/digest"},
      {"digest long", a, a + "0", file0 + "/digest"},
      {"digest bare hex", a, a_hex, file0 + "/digest"},
      {"digest not a string", "\"" + a + "\"", "42", file0 + "/digest"},
      {"mode too big", "\"mode\":493", "\"mode\":4096", file0 + "/mode"},
      {"mode negative", "\"mode\":493", "\"mode\":-1", file0 + "/mode"},
      {"mode fraction", "\"mode\":493", "\"mode\":493.5", file0 + "/mode"},
      {"size string", "\"size\":1", "\"size\":\"1\"", file0 + "/size"},
      {"unknown type", "\"type\":\"file\"", "\"type\":\"dir\"", file0 + "/type"},
      {"symlink empty target", "\"target\":\"a\"", "\"target\":\"\"", file1 + "/target"},
      {"files unsorted", "\"path\":\"bin/b\"", "\"path\":\"bin/0\"", file1},
      {"files duplicate", "\"path\":\"bin/b\"", "\"path\":\"bin/a\"", file1},
      {"prefix relative", "\"prefix\":\"/opt/env\"", "\"prefix\":\"opt/env\"",
       "/environments/0/prefix"},
      {"prefix with ..", "\"prefix\":\"/opt/env\"", "\"prefix\":\"/opt/../env\"",
       "/environments/0/prefix"},
      {"prefix trailing slash", "\"prefix\":\"/opt/env\"", "\"prefix\":\"/opt/env/\"",
       "/environments/0/prefix"},
      {"prefix empty", "\"prefix\":\"/opt/env\"", "\"prefix\":\"\"", "/environments/0/prefix"},
      {"base_prefix relative", "\"base_prefix\":\"/opt/base\"", "\"base_prefix\":\"base\"",
       "/environments/0/base_prefix"},
      {"editable_root relative", "\"editable_root\":\"/src\"", "\"editable_root\":\"src\"",
       "/environments/0/packages/0/editable_root"},
      {"root relative", "\"root\":\"/src\"", "\"root\":\"src\"", "/sources/0/root"},
      {"root with .", "\"root\":\"/src\"", "\"root\":\"/./src\"", "/sources/0/root"},
      {"unknown kind", "\"kind\":\"conda\"", "\"kind\":\"pixi\"", "/environments/0/kind"},
      {"unknown manager", "\"manager\":\"conda\"", "\"manager\":\"npm\"",
       "/environments/0/packages/0/manager"},
      {"unknown role", "\"role\":\"src\"", "\"role\":\"lib\"", "/sources/0/role"},
      {"empty package name", "\"name\":\"pkg\"", "\"name\":\"\"",
       "/environments/0/packages/0/name"},
      {"modified unsafe", "\"modified\":[\"bin/a\"]", "\"modified\":[\"../a\"]",
       "/environments/0/packages/0/modified"},
      {"ignored negative", "\".gitignore\":2", "\".gitignore\":-2",
       "/sources/0/ignored/.gitignore"},
      {"ignored not an object", "\"ignored\":{\".gitignore\":2}", "\"ignored\":[]",
       "/sources/0/ignored"},
      {"dirty not a boolean", "\"dirty\":false", "\"dirty\":\"no\"", "/sources/0/dirty"},
      {"environment not an object", "\"environments\":[{", "\"environments\":[7,{",
       "/environments/0"},
      {"file not an object", "\"files\":[{\"digest\"", "\"files\":[\"x\",{\"digest\"", file0},
      {"missing media_type", "\"media_type\":\"application/vnd.envd.snapshot.v1+json\",", "",
       "/media_type"},
      {"missing platform", "\"platform\":{\"arch\":\"amd64\",\"libc\":\"musl\",\"os\":\"linux\"},",
       "", "/platform"},
      {"missing arch", "\"arch\":\"amd64\",", "", "/platform/arch"},
      {"missing environments", "\"environments\":", "\"environmentz\":", "/environments"},
      {"missing sources", "\"sources\":", "\"sourcez\":", "/sources"},
      {"missing packages", "\"packages\":", "\"packagez\":", "/environments/0/packages"},
      {"missing unowned", "\"unowned\":", "\"unownez\":", "/environments/0/unowned"},
      {"missing kind", "\"kind\":", "\"kinb\":", "/environments/0/kind"},
      {"missing prefix", "\"prefix\":\"/opt/env\"", "\"prefiks\":\"/opt/env\"",
       "/environments/0/prefix"},
      {"missing package version",
       "\"version\":", "\"versiom\":", "/environments/0/packages/0/version"},
      {"missing files", "\"files\":[{\"digest\"", "\"filez\":[{\"digest\"",
       "/environments/0/packages/0/files"},
      {"missing path", "\"path\":\"bin/a\",", "", file0 + "/path"},
      {"missing mode", "\"mode\":493,", "", file0 + "/mode"},
      {"missing size", "\"size\":1,", "", file0 + "/size"},
      {"missing digest", "\"digest\":\"" + a + "\",", "", file0 + "/digest"},
      {"missing type", "\"size\":1,\"type\":\"file\"", "\"size\":1", file0 + "/type"},
      {"missing target", "\"target\":\"a\",", "", file1 + "/target"},
      {"missing root", "\"root\":", "\"rooot\":", "/sources/0/root"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    auto doc = replaced(base, c.from, c.to);
    auto r = parse(doc);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == ErrorCode::invalid_argument);
    CAPTURE(r.error().message());
    CHECK(r.error().message().starts_with("snapshot "));
    CHECK(r.error().message().find(c.location + ":") != std::string::npos);
  }
}

TEST_CASE("parse rejects documents that are not snapshot objects") {
  struct Case {
    std::string name;
    std::string text;
    std::string message_part;
  };
  const std::vector<Case> cases = {
      {"array", "[]", "document must be a JSON object"},
      {"number", "42", "document must be a JSON object"},
      {"string", "\"snapshot\"", "document must be a JSON object"},
      {"null", "null", "document must be a JSON object"},
      {"empty object", "{}", "/media_type: missing"},
      {"media type not a string", "{\"media_type\":1}", "/media_type: must be a string"},
      {"truncated", "{\"media_type\":", "invalid JSON"},
      {"empty", "", "invalid JSON"},
      {"trailing garbage", "{} x", "invalid JSON"},
      {"not UTF-8", "{\"media_type\":\"\xff\"}", "invalid JSON"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    auto r = parse(c.text);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == ErrorCode::invalid_argument);
    CAPTURE(r.error().message());
    CHECK(r.error().message().find(c.message_part) != std::string::npos);
  }
}

TEST_CASE("a non-UTF-8 name makes to_json and digest_of fail with invalid_argument") {
  auto s = small_snapshot();
  s.environments[0].unowned[0].path = "etc/caf\xe9";  // Latin-1, not UTF-8
  auto text = to_json(s);
  REQUIRE_FALSE(text.has_value());
  CHECK(text.error().code() == ErrorCode::invalid_argument);
  auto d = digest_of(s);
  REQUIRE_FALSE(d.has_value());
  CHECK(d.error().code() == ErrorCode::invalid_argument);

  auto t = small_snapshot();
  t.environments[0].packages[0].files[1].target = "\xc3\x28";  // invalid 2-byte sequence
  auto text2 = to_json(t);
  REQUIRE_FALSE(text2.has_value());
  CHECK(text2.error().code() == ErrorCode::invalid_argument);

  // Valid UTF-8 is written as is and survives the round trip.
  auto u = small_snapshot();
  u.environments[0].unowned[0].path = "etc/caf\xc3\xa9";
  auto parsed = parse(json_of(u));
  REQUIRE(parsed.has_value());
  CHECK(parsed->environments[0].unowned[0].path == "etc/caf\xc3\xa9");
}

TEST_CASE("is_safe_relative_path") {
  for (std::string_view ok : {"a", "a/b/c", ".hidden", "a/.b", "...", "a..b", "a/b..",
                              "caf\xc3\xa9", "with space", "-"}) {
    CAPTURE(ok);
    CHECK(is_safe_relative_path(ok));
  }
  for (std::string_view bad :
       {std::string_view(""), std::string_view("/"), std::string_view("/a"), std::string_view("a/"),
        std::string_view("a//b"), std::string_view("."), std::string_view(".."),
        std::string_view("./a"), std::string_view("a/."), std::string_view("a/.."),
        std::string_view("../a"), std::string_view("a/../b"), std::string_view("a/./b"),
        std::string_view("a\0b", 3), std::string_view("\0", 1)}) {
    CAPTURE(bad);
    CHECK_FALSE(is_safe_relative_path(bad));
  }
}

TEST_CASE("totals counts files, bytes and packages over environments and sources") {
  auto t = totals(small_snapshot());
  // bin/a (1 byte), bin/b (symlink), etc/x (1 byte), README (1 byte).
  CHECK(t.files == 4);
  CHECK(t.bytes == 3);
  CHECK(t.packages == 1);

  auto r = totals(rich_snapshot());
  // conda: 3 + 1 package files, 1 unowned; venv: 1 + 2; base: 1; sources: 3 + 1.
  CHECK(r.files == 13);
  const std::uint64_t bytes = 3 + 2 + 4 + 13 + 21 + 22 + 6 + 10 + 10 + 6;
  CHECK(r.bytes == bytes);
  CHECK(r.packages == 3);

  auto empty = totals(Snapshot{});
  CHECK(empty.files == 0);
  CHECK(empty.bytes == 0);
  CHECK(empty.packages == 0);
}

TEST_CASE("the example document parses and matches its description") {
  auto s = parse(test::read_file(example_path()));
  REQUIRE(s.has_value());
  REQUIRE(s->environments.size() == 3);
  const auto& conda = s->environments[0];
  CHECK(conda.kind == EnvironmentKind::conda);
  REQUIRE(conda.packages.size() == 3);
  CHECK(conda.packages[0].subdir == "noarch");
  CHECK(conda.packages[2].manager == PackageManager::pip);
  const auto& venv = s->environments[1];
  CHECK(venv.kind == EnvironmentKind::venv);
  REQUIRE(venv.base_prefix.has_value());
  CHECK(*venv.base_prefix == s->environments[2].prefix);
  CHECK(s->environments[2].partial);
  REQUIRE(s->sources.size() == 1);
  CHECK(s->sources[0].git_commit.has_value());
  CHECK(s->sources[0].dirty);
  CHECK(totals(*s).packages == 5);
}

TEST_CASE("the schema file declares draft 2020-12 and the v1 id") {
  auto schema = test::read_file(schema_path());
  CHECK(schema.find("\"$schema\": \"https://json-schema.org/draft/2020-12/schema\"") !=
        std::string::npos);
  CHECK(schema.find("\"$id\": \"https://envd.dev/schemas/snapshot.v1.json\"") != std::string::npos);
}

TEST_CASE("schema accepts the example and what to_json writes") {
  auto example_text = test::read_file(example_path());
  auto example = parse(example_text);
  REQUIRE(example.has_value());
  const std::vector<std::string> docs = {example_text, json_of(rich_snapshot()),
                                         json_of(bare_snapshot()), json_of(small_snapshot()),
                                         json_of(*example)};
  auto results = validate_with_schema(docs);
  for (size_t i = 0; i < docs.size(); ++i) {
    CAPTURE(i);
    CHECK(results[i] == "valid");
  }
}

TEST_CASE("schema rejects invalid documents, and so does parse where it checks the same rule") {
  const auto base = json_of(small_snapshot());
  const std::string a = oci::sha256_of("a").str();
  const std::string file0 = "/environments/0/packages/0/files/0";
  enum class ParseToo { rejects, accepts };
  struct Case {
    std::string name;
    std::string from;
    std::string to;
    std::string location;  // where the schema validator reports the error (prefix)
    ParseToo parse_too;
  };
  std::string a_upper = a;
  for (size_t i = 7; i < a_upper.size(); ++i)
    if (a_upper[i] >= 'a' && a_upper[i] <= 'f') a_upper[i] = static_cast<char>(a_upper[i] - 32);
  const std::vector<Case> cases = {
      {"path ..", "\"path\":\"bin/a\"", "\"path\":\"../x\"", file0, ParseToo::rejects},
      {"path inner ..", "\"path\":\"bin/a\"", "\"path\":\"bin/../a\"", file0, ParseToo::rejects},
      {"path absolute", "\"path\":\"bin/a\"", "\"path\":\"/abs\"", file0, ParseToo::rejects},
      {"path a//b", "\"path\":\"bin/a\"", "\"path\":\"a//b\"", file0, ParseToo::rejects},
      {"path a/./b", "\"path\":\"bin/a\"", "\"path\":\"a/./b\"", file0, ParseToo::rejects},
      {"path trailing .", "\"path\":\"bin/a\"", "\"path\":\"bin/.\"", file0, ParseToo::rejects},
      {"path empty", "\"path\":\"bin/a\"", "\"path\":\"\"", file0, ParseToo::rejects},
      {"digest uppercase", a, a_upper, file0, ParseToo::rejects},
      {"digest md5", a, "md5:0cc175b9c0f1b6a831c399e269772661", file0, ParseToo::rejects},
      {"digest short", a, a.substr(0, a.size() - 2), file0, ParseToo::rejects},
      {"mode too big", "\"mode\":493", "\"mode\":4096", file0, ParseToo::rejects},
      {"unknown type", "\"type\":\"file\"", "\"type\":\"dir\"", file0, ParseToo::rejects},
      {"symlink empty target", "\"target\":\"a\"", "\"target\":\"\"",
       "/environments/0/packages/0/files/1", ParseToo::rejects},
      {"prefix relative", "\"prefix\":\"/opt/env\"", "\"prefix\":\"opt/env\"",
       "/environments/0/prefix", ParseToo::rejects},
      {"prefix trailing slash", "\"prefix\":\"/opt/env\"", "\"prefix\":\"/opt/env/\"",
       "/environments/0/prefix", ParseToo::rejects},
      {"root with ..", "\"root\":\"/src\"", "\"root\":\"/src/..\"", "/sources/0/root",
       ParseToo::rejects},
      {"media type", "\"application/vnd.envd.snapshot.v1+json\"", "\"application/json\"",
       "/media_type", ParseToo::rejects},
      {"unknown kind", "\"kind\":\"conda\"", "\"kind\":\"pixi\"", "/environments/0/kind",
       ParseToo::rejects},
      {"missing digest", "\"digest\":\"" + a + "\",", "", file0, ParseToo::rejects},
      {"modified unsafe", "\"modified\":[\"bin/a\"]", "\"modified\":[\"/a\"]",
       "/environments/0/packages/0/modified/0", ParseToo::rejects},
      // Stricter than parse: the exact shape the writer produces.
      {"missing created", "\"created\":\"2024-03-01T12:00:00Z\",", "", "", ParseToo::accepts},
      {"unknown top-level key", "\"host\":\"h\",", "\"host\":\"h\",\"extra\":1,", "",
       ParseToo::accepts},
      {"conda package without build", "\"build\":\"h0_0\",", "", "/environments/0/packages/0",
       ParseToo::accepts},
      {"pip package with build", "\"manager\":\"conda\"", "\"manager\":\"pip\"",
       "/environments/0/packages/0", ParseToo::accepts},
      {"git_commit not hex", "\"dirty\":false,", "\"dirty\":false,\"git_commit\":\"main\",",
       "/sources/0/git_commit", ParseToo::accepts},
  };
  std::vector<std::string> docs;
  for (const auto& c : cases) docs.push_back(replaced(base, c.from, c.to));
  auto results = validate_with_schema(docs);
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    CAPTURE(c.name);
    CAPTURE(results[i]);
    CHECK(results[i].starts_with("invalid " + c.location));
    CHECK(parse(docs[i]).has_value() == (c.parse_too == ParseToo::accepts));
  }
}

}  // namespace
}  // namespace envd::snapshot
