// Tests for the snapshot JSON form: round trip, canonical output byte-identical to nlohmann's
// dump of the tree the writer used to build, the digest and its volatile fields, what the writer
// refuses, parse's validation with JSON locations, and agreement with schemas/snapshot.schema.json
// (checked with Debian's python3-jsonschema).
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
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
// One environment and one source tree on linux/amd64, with the fixed created/host/version.
Snapshot one_env_snapshot(Environment e, SourceTree src, std::string libc) {
  Snapshot s;
  s.platform = {"linux", "amd64", std::move(libc)};
  s.environments = {std::move(e)};
  s.sources = {std::move(src)};
  s.created = "2024-03-01T12:00:00Z";
  s.host = "h";
  s.envd_version = "0.1.0";
  return s;
}

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

  return one_env_snapshot(e, src, "musl");
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

// Hard links in every place a root's files are: a pair inside one package, a package file and
// an unowned file of the same group (different items of one root), a group of three in the
// unowned files, and a pair in a source tree. "etc/x" also exists in the source tree with the
// same content but is no link: each root is its own.
Snapshot linked_snapshot() {
  auto linked = [](FileEntry f, std::string link) {
    f.link = std::move(link);
    return f;
  };
  Package p;
  p.name = "python";
  p.version = "3.6.15";
  p.manager = PackageManager::pip;
  p.installer = "pip";
  p.files = {regular("bin/python3.6", "elf36", 0755),
             linked(regular("bin/python3.6m", "elf36", 0755), "bin/python3.6"),
             linked(regular("lib/libpy.so", "lib", 0644), "etc/lib-copy")};

  Environment e;
  e.kind = EnvironmentKind::prefix;
  e.name = "3.6.15";
  e.prefix = "/root/.pyenv/versions/3.6.15";
  e.python_version = "3.6.15";
  e.packages = {p};
  e.unowned = {regular("etc/lib-copy", "lib", 0644), regular("share/a", "three"),
               linked(regular("share/b", "three"), "share/a"),
               linked(regular("share/c", "three"), "share/a")};

  SourceTree src;
  src.root = "/src";
  src.files = {regular("data/one.csv", "1,2\n"),
               linked(regular("data/two.csv", "1,2\n"), "data/one.csv"),
               regular("etc/lib-copy", "lib", 0644)};

  return one_env_snapshot(e, src, "glibc 2.36");
}

// --- reference: the nlohmann tree builder to_json used before the direct writer -------------
// Kept verbatim (apart from Digest::view) so the writer's bytes can be compared with it: the
// snapshot digest is taken over these bytes, so they must never change.
namespace reference {

using nlohmann::json;

json file_to_json(const FileEntry& f) {
  json j = {{"path", f.path}, {"mode", f.mode}};
  if (f.type == FileType::regular) {
    j["type"] = "file";
    j["size"] = f.size;
    j["digest"] = f.digest ? f.digest->str() : std::string();
    if (!f.link.empty()) j["link"] = f.link;  // added with hard links: only when set
  } else {
    j["type"] = "symlink";
    j["target"] = f.target;
  }
  return j;
}

json files_to_json(const std::vector<FileEntry>& files) {
  json arr = json::array();
  for (const auto& f : files) arr.push_back(file_to_json(f));
  return arr;
}

json package_to_json(const Package& p) {
  json j = {{"name", p.name},
            {"version", p.version},
            {"manager", std::string(to_string(p.manager))},
            {"installer", p.installer},
            {"requested", p.requested},
            {"files", files_to_json(p.files)},
            {"modified", p.modified}};
  if (p.manager == PackageManager::conda) {
    j["build"] = p.build;
    j["channel"] = p.channel;
    j["subdir"] = p.subdir;
  }
  if (!p.direct_url.empty()) j["direct_url"] = p.direct_url;
  if (p.editable_root) j["editable_root"] = *p.editable_root;
  return j;
}

json environment_to_json(const Environment& e) {
  json pkgs = json::array();
  for (const auto& p : e.packages) pkgs.push_back(package_to_json(p));
  json j = {{"kind", std::string(to_string(e.kind))},
            {"name", e.name},
            {"prefix", e.prefix},
            {"python_version", e.python_version},
            {"system_site_packages", e.system_site_packages},
            {"partial", e.partial},
            {"packages", std::move(pkgs)},
            {"unowned", files_to_json(e.unowned)}};
  if (e.base_prefix) j["base_prefix"] = *e.base_prefix;
  return j;
}

json source_to_json(const SourceTree& s) {
  json j = {{"root", s.root},
            {"role", std::string(to_string(s.role))},
            {"dirty", s.dirty},
            {"ignored", s.ignored},
            {"files", files_to_json(s.files)}};
  if (s.git_commit) j["git_commit"] = *s.git_commit;
  return j;
}

json stable_json(const Snapshot& s) {
  json envs = json::array();
  for (const auto& e : s.environments) envs.push_back(environment_to_json(e));
  json srcs = json::array();
  for (const auto& src : s.sources) srcs.push_back(source_to_json(src));
  return {
      {"media_type", std::string(k_media_type)},
      {"platform", {{"os", s.platform.os}, {"arch", s.platform.arch}, {"libc", s.platform.libc}}},
      {"environments", std::move(envs)},
      {"sources", std::move(srcs)}};
}

// nlohmann's canonical dump; nullopt where it throws (invalid UTF-8).
std::optional<std::string> dump(const json& j) {
  try {
    return j.dump(-1, ' ', false, json::error_handler_t::strict);
  } catch (const json::exception&) {
    return std::nullopt;
  }
}

std::optional<std::string> to_json(const Snapshot& s) {
  json j = stable_json(s);
  j["created"] = s.created;
  j["host"] = s.host;
  j["envd_version"] = s.envd_version;
  return dump(j);
}

std::optional<std::string> stable_text(const Snapshot& s) {
  return dump(stable_json(s));
}

}  // namespace reference

// Names, targets and free-text fields full of what escaping must get right: every control
// character, quotes, backslashes, DEL, 2-, 3- and 4-byte UTF-8 (up to U+10FFFF), NUL where a
// field allows it, extreme numbers, empty strings and empty lists.
Snapshot unusual_snapshot() {
  std::string controls;
  for (char c = 1; c < 0x20; ++c) controls += c;
  Package p;
  p.name = "na\"me\\";
  p.version = std::string("1.0\0rc", 6);
  p.manager = PackageManager::conda;
  p.build = controls;
  p.channel = "";
  p.subdir = "\x7f";
  p.installer = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf \xef\xbf\xbf";
  p.direct_url = "https://h/p?q=\"x\"&r=\\\\y";
  p.editable_root = "/home/\xc3\xa9l\xc3\xa8ve/\"q\"";
  FileEntry big = regular("a\\b\"c", "", 07777);
  big.size = std::numeric_limits<std::uint64_t>::max();
  p.files = {regular(" ", "space", 0), big, regular("bin/\b\f\n\r\t", "ctl"),
             symlink("bin/\x01\x1f", "../\x7f\"\\\\\n"),
             regular("\xe2\x82\xac/\xf0\x9f\x98\x80", "u")};
  std::sort(p.files.begin(), p.files.end(),
            [](const FileEntry& a, const FileEntry& b) { return a.path < b.path; });
  p.modified = {"a\\b\"c", "\xe2\x82\xac/\xf0\x9f\x98\x80"};

  Package empty;  // pip, every list empty, every string empty but the name
  empty.name = "e";

  Environment e;
  e.kind = EnvironmentKind::venv;
  e.name = std::string("\0", 1);
  e.prefix =
      "/p\\r\"e\xc3\xa9"
      "fix";
  e.python_version = "\t";
  e.base_prefix = "/";
  e.system_site_packages = true;
  e.partial = true;
  e.packages = {p, empty};

  Environment none;  // no packages, no files
  none.prefix = "/x";

  SourceTree src;
  src.root = "/s\\\"";
  src.role = SourceRole::editable;
  src.git_commit = "";
  src.dirty = true;
  src.ignored = {{"", 0},
                 {"\"q\"", 1},
                 {"\\\\", 2},
                 {"\x01", 3},
                 {"z", std::numeric_limits<std::uint64_t>::max()},
                 {"\xc3\xa9", 5},
                 {"\xf0\x9f\x98\x80", 6},
                 {"\x7f", 7}};
  src.files = {symlink("l", "\xf0\x9f\x98\x80")};

  SourceTree bare_src;  // no files, nothing ignored
  bare_src.root = "/t";

  Snapshot s;
  s.platform = {"\xc3\xa9", "\"", "\\\\"};
  s.environments = {e, none};
  s.sources = {src, bare_src};
  s.created = "\n";
  s.host = std::string("h\0st\x1f\x7f\xc2\x80", 8);
  s.envd_version = "";
  return s;
}

// A deterministic random snapshot: names drawn from pieces that exercise escaping and UTF-8,
// files sorted by path as the writer requires, optional fields set at random.
Snapshot random_snapshot(std::uint32_t seed, std::size_t max_files = 30) {
  std::mt19937 rng(seed);
  auto pick = [&](std::size_t n) {
    return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng);
  };
  auto coin = [&] { return pick(2) == 0; };
  static const std::vector<std::string> k_pieces = {"a",
                                                    "Z",
                                                    "0",
                                                    "-",
                                                    ".",
                                                    "_",
                                                    " ",
                                                    "\"",
                                                    "\\\\",
                                                    "\x01",
                                                    "\x1f",
                                                    "\b",
                                                    "\f",
                                                    "\n",
                                                    "\r",
                                                    "\t",
                                                    "\x7f",
                                                    "\xc2\x80",
                                                    "\xc3\xa9",
                                                    "\xdf\xbf",
                                                    "\xe0\xa0\x80",
                                                    "\xe2\x82\xac",
                                                    "\xed\x9f\xbf",
                                                    "\xee\x80\x80",
                                                    "\xef\xbf\xbf",
                                                    "\xf0\x90\x80\x80",
                                                    "\xf0\x9f\x98\x80",
                                                    "\xf4\x8f\xbf\xbf"};
  auto text = [&](std::size_t max_pieces) {
    std::string out;
    for (std::size_t i = pick(max_pieces + 1); i > 0; --i) out += k_pieces[pick(k_pieces.size())];
    return out;
  };
  auto component = [&] {
    std::string c;
    while (c.empty() || c == "." || c == "..") c = text(4);
    return c;
  };
  auto path = [&] {
    std::string p = component();
    for (std::size_t i = pick(3); i > 0; --i) p += "/" + component();
    return p;
  };
  auto absolute = [&] { return coin() ? std::string("/") : "/" + path(); };
  auto files = [&] {
    std::vector<FileEntry> out;
    for (std::size_t i = pick(max_files + 1); i > 0; --i) {
      auto name = path();
      if (coin()) {
        auto f = regular(name, text(3), static_cast<std::uint32_t>(pick(07777 + 1)));
        f.size = rng();
        out.push_back(std::move(f));
      } else {
        auto target = text(5);
        out.push_back(symlink(name, target.empty() ? "t" : target));
      }
    }
    std::sort(out.begin(), out.end(),
              [](const FileEntry& a, const FileEntry& b) { return a.path < b.path; });
    out.erase(std::unique(out.begin(), out.end(),
                          [](const FileEntry& a, const FileEntry& b) { return a.path == b.path; }),
              out.end());
    return out;
  };

  Snapshot s;
  s.platform = {text(2), text(2), text(2)};
  for (std::size_t i = pick(4); i > 0; --i) {
    Environment e;
    e.kind = static_cast<EnvironmentKind>(pick(3));
    e.name = text(3);
    e.prefix = absolute();
    e.python_version = text(2);
    if (coin()) e.base_prefix = absolute();
    e.system_site_packages = coin();
    e.partial = coin();
    for (std::size_t j = pick(4); j > 0; --j) {
      Package p;
      p.name = "p" + text(3);
      p.version = text(2);
      p.manager = coin() ? PackageManager::conda : PackageManager::pip;
      if (p.manager == PackageManager::conda) {
        p.build = text(2);
        p.channel = text(2);
        p.subdir = text(2);
      }
      p.installer = text(2);
      p.requested = coin();
      if (coin()) p.direct_url = text(3);
      if (coin()) p.editable_root = absolute();
      p.files = files();
      for (const auto& f : p.files)
        if (coin()) p.modified.push_back(f.path);
      e.packages.push_back(std::move(p));
    }
    e.unowned = files();
    s.environments.push_back(std::move(e));
  }
  for (std::size_t i = pick(3); i > 0; --i) {
    SourceTree src;
    src.root = absolute();
    src.role = coin() ? SourceRole::src : SourceRole::editable;
    if (coin()) src.git_commit = text(2);
    src.dirty = coin();
    for (std::size_t j = pick(4); j > 0; --j) src.ignored[text(2)] = rng();
    src.files = files();
    s.sources.push_back(std::move(src));
  }
  s.created = text(2);
  s.host = text(2);
  s.envd_version = text(2);
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

// Bytes as \xNN for test messages.
std::string printable_bytes(std::string_view s) {
  std::string out;
  char buf[5];
  for (unsigned char c : s) {
    std::snprintf(buf, sizeof buf, "\\x%02x", c);
    out += buf;
  }
  return out;
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

// to_json and digest_of both refuse `s` with invalid_argument, the same message, which names
// `location` (a JSON pointer); returns the message.
std::string refused_message(const Snapshot& s, const std::string& location) {
  auto text = to_json(s);
  REQUIRE_FALSE(text.has_value());
  CHECK(text.error().code() == ErrorCode::invalid_argument);
  CAPTURE(text.error().message());
  CHECK(text.error().message().starts_with("snapshot " + location + ": "));
  auto d = digest_of(s);
  REQUIRE_FALSE(d.has_value());
  CHECK(d.error().message() == text.error().message());
  return text.error().message();
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
       "/environments/0/packages/0", ParseToo::rejects},
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

// --- the direct writer against nlohmann's canonical dump ------------------------------------

// The writer's bytes must equal nlohmann's canonical dump twice over: of the tree the old writer
// built, and of nlohmann's own parse of the writer's output. The digest must be the old one, and
// parse() must give the snapshot back.
void check_same_as_nlohmann(const Snapshot& s) {
  auto text = to_json(s);
  REQUIRE(text.has_value());
  auto old_text = reference::to_json(s);
  REQUIRE(old_text.has_value());
  CHECK(*text == *old_text);
  auto redumped = reference::dump(nlohmann::json::parse(*text));
  REQUIRE(redumped.has_value());
  CHECK(*text == *redumped);

  auto stable = reference::stable_text(s);
  REQUIRE(stable.has_value());
  CHECK(digest_value(s) == oci::sha256_of(*stable));

  auto parsed = parse(*text);
  REQUIRE(parsed.has_value());
  CHECK(*parsed == s);
}

TEST_CASE("to_json and digest_of give the bytes of nlohmann's canonical dump") {
  SUBCASE("fixtures") {
    for (const auto& s : {small_snapshot(), rich_snapshot(), bare_snapshot(), unusual_snapshot()})
      check_same_as_nlohmann(s);
  }
  SUBCASE("empty snapshot") {
    check_same_as_nlohmann(Snapshot{});
  }
  SUBCASE("random snapshots") {
    for (std::uint32_t seed = 1; seed <= 200; ++seed) {
      CAPTURE(seed);
      check_same_as_nlohmann(random_snapshot(seed));
    }
  }
  SUBCASE("a snapshot the size of a real environment") {
    // Tens of thousands of files, as a real prefix has (~50,000); correctness only, no timing.
    auto s = rich_snapshot();
    auto& files = s.environments[0].packages[0].files;
    files.clear();
    for (int i = 0; i < 20000; ++i) {
      char name[48];
      std::snprintf(name, sizeof name, "lib/python3.11/site-packages/m%05d/__init__.py", i);
      files.push_back(i % 10 == 9 ? symlink(name, "../x") : regular(name, name, 0644));
    }
    check_same_as_nlohmann(s);
  }
}

TEST_CASE("string escaping and UTF-8 validation agree with nlohmann for every short byte string") {
  // Every 1- and 2-byte string; 3- and 4-byte strings over every multi-byte lead (E0..EF,
  // F0..F5) with the second byte across 7F..C0 (every boundary of the allowed ranges) and the
  // other bytes at the edges of the continuation range. Each goes into a string field, alone and
  // followed by a quote; the writer must fail exactly when nlohmann's strict dump throws, and
  // otherwise produce the same bytes.
  std::vector<std::string> inputs;
  for (int a = 0; a < 256; ++a) {
    inputs.push_back(std::string(1, static_cast<char>(a)));
    for (int b = 0; b < 256; ++b) inputs.push_back({static_cast<char>(a), static_cast<char>(b)});
  }
  const unsigned char edges3[] = {0x00, 0x22, 0x41, 0x7f, 0x80, 0x8f,
                                  0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xff};
  const unsigned char edges4[] = {0x41, 0x80, 0xbf, 0xc0};
  for (int a = 0xe0; a <= 0xef; ++a)
    for (int b = 0x7f; b <= 0xc0; ++b)
      for (auto c : edges3)
        inputs.push_back({static_cast<char>(a), static_cast<char>(b), static_cast<char>(c)});
  for (int a = 0xf0; a <= 0xf5; ++a)
    for (int b = 0x7f; b <= 0xc0; ++b)
      for (auto c : edges4)
        for (auto d : edges4)
          inputs.push_back({static_cast<char>(a), static_cast<char>(b), static_cast<char>(c),
                            static_cast<char>(d)});

  std::size_t accepted = 0;
  std::size_t mismatches = 0;
  std::size_t wrong_codes = 0;
  std::string first_mismatches;
  // nlohmann's side dumps just the string (the rest of the document is fixed), to keep this fast.
  const auto empty_doc = reference::to_json(Snapshot{});
  REQUIRE(empty_doc.has_value());
  const auto host_at = empty_doc->find("\"host\":\"\"");
  REQUIRE(host_at != std::string::npos);
  const auto before_host = empty_doc->substr(0, host_at + 7);
  const auto after_host = empty_doc->substr(host_at + 9);
  Snapshot s;
  for (const auto& input : inputs) {
    for (const std::string& text : {input, input + "\""}) {
      s.host = text;
      auto ours = to_json(s);
      auto theirs = reference::dump(nlohmann::json(text));
      bool same = ours.has_value() == theirs.has_value() &&
                  (!theirs || *ours == before_host + *theirs + after_host);
      if (!same && ++mismatches <= 10) first_mismatches += printable_bytes(text) + " ";
      if (ours && same) ++accepted;
      if (!ours && ours.error().code() != ErrorCode::invalid_argument) ++wrong_codes;
    }
  }
  CAPTURE(first_mismatches);
  CHECK(mismatches == 0);
  CHECK(wrong_codes == 0);
  // Exactly the well-formed sequences of RFC 3629 are accepted, each alone and before a quote:
  // 128 ASCII; 128 * 128 ASCII pairs + 30 * 64 two-byte; three-byte leads E0..EF with their
  // allowed second bytes (32 + 12 * 64 + 32 + 2 * 64 = 960) times the 6 continuation edges in
  // edges3; four-byte leads F0..F4 (48 + 3 * 64 + 16 = 256) times 2 * 2 continuation edges.
  CHECK(accepted == 2 * (128 + (128 * 128 + 30 * 64) + 960 * 6 + 256 * 4));
}

TEST_CASE("an invalid UTF-8 string makes the error name its location and its bytes") {
  auto s = small_snapshot();
  s.environments[0].unowned[0].path = "etc/caf\xe9";
  for (const auto& r : {to_json(s).error(), digest_of(s).error()}) {
    CHECK(r.code() == ErrorCode::invalid_argument);
    CAPTURE(r.message());
    CHECK(r.message().starts_with("snapshot /environments/0/unowned/0/path: invalid UTF-8"));
    CHECK(r.message().find("\"etc/caf\\xe9\"") != std::string::npos);
  }
  auto t = small_snapshot();
  t.sources[0].ignored["\xff"] = 1;
  auto r = to_json(t);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().message().starts_with("snapshot /sources/0/ignored: invalid UTF-8"));
}

TEST_CASE("to_json and digest_of refuse what parse would reject, naming the location") {
  struct Case {
    std::string name;
    std::function<void(Snapshot&)> apply;
    std::string location;  // JSON pointer the message must name
    std::string names;     // text the message must also contain (the offending value)
  };
  const std::string pkg0 = "/environments/0/packages/0";
  const std::string file0 = pkg0 + "/files/0";
  const auto pkg = [](Snapshot& s) -> Package& { return s.environments[0].packages[0]; };
  const std::vector<Case> cases = {
      {"regular file without a digest", [&](Snapshot& s) { pkg(s).files[0].digest.reset(); },
       file0 + "/digest", "\"bin/a\""},
      {"unowned file without a digest",
       [](Snapshot& s) { s.environments[0].unowned[0].digest.reset(); },
       "/environments/0/unowned/0/digest", "\"etc/x\""},
      {"source file without a digest", [](Snapshot& s) { s.sources[0].files[0].digest.reset(); },
       "/sources/0/files/0/digest", "\"README\""},
      {"path ..", [&](Snapshot& s) { pkg(s).files[0].path = "../a"; }, file0 + "/path", "\"../a\""},
      {"path absolute", [&](Snapshot& s) { pkg(s).files[0].path = "/a"; }, file0 + "/path",
       "\"/a\""},
      {"path empty", [&](Snapshot& s) { pkg(s).files[0].path = ""; }, file0 + "/path", "\"\""},
      {"path a//b", [&](Snapshot& s) { pkg(s).files[0].path = "a//b"; }, file0 + "/path",
       "\"a//b\""},
      {"path trailing /", [&](Snapshot& s) { pkg(s).files[0].path = "bin/"; }, file0 + "/path",
       "\"bin/\""},
      {"path NUL", [&](Snapshot& s) { pkg(s).files[0].path = std::string("a\0b", 3); },
       file0 + "/path", "\"a\\x00b\""},
      {"source path inner ..", [](Snapshot& s) { s.sources[0].files[0].path = "a/../b"; },
       "/sources/0/files/0/path", "\"a/../b\""},
      {"prefix relative", [](Snapshot& s) { s.environments[0].prefix = "opt/env"; },
       "/environments/0/prefix", "\"opt/env\""},
      {"prefix empty", [](Snapshot& s) { s.environments[0].prefix = ""; }, "/environments/0/prefix",
       "\"\""},
      {"prefix trailing /", [](Snapshot& s) { s.environments[0].prefix = "/opt/env/"; },
       "/environments/0/prefix", "\"/opt/env/\""},
      {"prefix with ..", [](Snapshot& s) { s.environments[0].prefix = "/opt/../env"; },
       "/environments/0/prefix", "\"/opt/../env\""},
      {"base_prefix relative", [](Snapshot& s) { s.environments[0].base_prefix = "base"; },
       "/environments/0/base_prefix", "\"base\""},
      {"editable_root relative", [&](Snapshot& s) { pkg(s).editable_root = "./src"; },
       pkg0 + "/editable_root", "\"./src\""},
      {"root relative", [](Snapshot& s) { s.sources[0].root = "src"; }, "/sources/0/root",
       "\"src\""},
      {"root with .", [](Snapshot& s) { s.sources[0].root = "/./src"; }, "/sources/0/root",
       "\"/./src\""},
      {"mode too big", [&](Snapshot& s) { pkg(s).files[0].mode = 010000; }, file0 + "/mode", ""},
      {"symlink empty target", [&](Snapshot& s) { pkg(s).files[1].target = ""; },
       pkg0 + "/files/1/target", "\"bin/b\""},
      {"symlink target with NUL",
       [&](Snapshot& s) { pkg(s).files[1].target = std::string("\0", 1); },
       pkg0 + "/files/1/target", "\"bin/b\""},
      {"files unsorted", [&](Snapshot& s) { std::swap(pkg(s).files[0], pkg(s).files[1]); },
       pkg0 + "/files/1", "\"bin/a\""},
      {"files duplicate", [&](Snapshot& s) { pkg(s).files[1].path = "bin/a"; }, pkg0 + "/files/1",
       "\"bin/a\""},
      {"empty package name", [&](Snapshot& s) { pkg(s).name = ""; }, pkg0 + "/name", ""},
      {"modified unsafe", [&](Snapshot& s) { pkg(s).modified = {"../a"}; }, pkg0 + "/modified/0",
       "\"../a\""},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    auto s = small_snapshot();
    c.apply(s);
    CHECK(refused_message(s, c.location).find(c.names) != std::string::npos);
  }
}

TEST_CASE("parse rejects build, channel and subdir on a pip package") {
  const auto base = json_of(bare_snapshot());  // one pip package, "six"
  const std::string pkg0 = "/environments/0/packages/0";
  for (std::string key : {"build", "channel", "subdir"}) {
    CAPTURE(key);
    auto doc =
        replaced(base, "\"files\":[{\"digest\"", "\"" + key + "\":\"x\",\"files\":[{\"digest\"");
    auto r = parse(doc);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == ErrorCode::invalid_argument);
    CAPTURE(r.error().message());
    CHECK(r.error().message().starts_with("snapshot " + pkg0 + "/" + key + ": "));
  }
  // Even empty: the writer never writes them for pip, so the round trip would drop them.
  auto empty =
      parse(replaced(base, "\"files\":[{\"digest\"", "\"build\":\"\",\"files\":[{\"digest\""));
  CHECK_FALSE(empty.has_value());
}

// --- hard links ------------------------------------------------------------------------------

TEST_CASE("hard links: written between digest and mode only when set, and parsed back") {
  const auto s = linked_snapshot();
  const auto text = json_of(s);
  CAPTURE(text);
  CHECK(text.find("{\"digest\":\"" + oci::sha256_of("elf36").str() +
                  "\",\"link\":\"bin/python3.6\",\"mode\":493,\"path\":\"bin/python3.6m\","
                  "\"size\":5,\"type\":\"file\"}") != std::string::npos);
  // The first member of a group and files without links have no "link" key at all.
  CHECK(text.find("{\"digest\":\"" + oci::sha256_of("elf36").str() +
                  "\",\"mode\":493,\"path\":\"bin/python3.6\",") != std::string::npos);
  std::size_t links = 0;
  for (std::size_t at = 0; (at = text.find("\"link\":", at)) != std::string::npos; ++at) ++links;
  CHECK(links == 5);
  check_same_as_nlohmann(s);
  auto parsed = parse(text);
  REQUIRE(parsed.has_value());
  CHECK(parsed->environments[0].packages[0].files[1].link == "bin/python3.6");
  CHECK(parsed->environments[0].packages[0].files[0].link.empty());
  CHECK(parsed->sources[0].files[1].link == "data/one.csv");
  CHECK(json_of(*parsed) == text);
  CHECK(validate_with_schema({text}) == std::vector<std::string>{"valid"});
}

TEST_CASE("hard links are part of the digest; snapshots without links keep theirs") {
  auto s = linked_snapshot();
  const auto with_links = digest_value(s);
  auto unlinked = s;
  for (auto& f : unlinked.environments[0].packages[0].files) f.link.clear();
  for (auto& f : unlinked.environments[0].unowned) f.link.clear();
  for (auto& f : unlinked.sources[0].files) f.link.clear();
  CHECK(digest_value(unlinked) != with_links);
  // Without links the document is byte for byte what the writer wrote before links existed.
  auto old_text = reference::to_json(unlinked);
  REQUIRE(old_text.has_value());
  CHECK(json_of(unlinked) == *old_text);
  CHECK(json_of(unlinked).find("\"link\"") == std::string::npos);
  // One link moved to another first member is another snapshot.
  auto moved = s;
  moved.environments[0].unowned[3].link.clear();
  CHECK(digest_value(moved) != with_links);
}

TEST_CASE("bad hard links are refused by parse, naming the JSON location and the paths") {
  const auto base = json_of(linked_snapshot());
  REQUIRE(parse(base).has_value());
  const std::string pkg_files = "/environments/0/packages/0/files/";
  const std::string unowned = "/environments/0/unowned/";
  const std::string three = oci::sha256_of("three").str();
  struct Case {
    std::string name;
    std::string from;
    std::string to;
    std::string location;  // JSON pointer the message must name
    std::string names;     // text the message must also contain
  };
  const std::vector<Case> cases = {
      {"names no file", "\"link\":\"bin/python3.6\"", "\"link\":\"bin/python3.5\"",
       pkg_files + "1/link", "bin/python3.5"},
      {"names the file itself", "\"link\":\"bin/python3.6\"", "\"link\":\"bin/python3.6m\"",
       pkg_files + "1/link", "bin/python3.6m"},
      {"unsafe path", "\"link\":\"bin/python3.6\"", "\"link\":\"../python3.6\"",
       pkg_files + "1/link", "bin/python3.6m"},
      {"absolute path", "\"link\":\"bin/python3.6\"",
       "\"link\":\"/root/.pyenv/versions/3.6.15/bin/python3.6\"", pkg_files + "1/link",
       "bin/python3.6m"},
      {"empty", "\"link\":\"bin/python3.6\"", "\"link\":\"\"", pkg_files + "1/link", ""},
      {"not a string", "\"link\":\"bin/python3.6\"", "\"link\":7", pkg_files + "1/link", ""},
      {"names a file that is itself a link",
       "\"link\":\"share/a\",\"mode\":420,\"path\":\"share/c\"",
       "\"link\":\"share/b\",\"mode\":420,\"path\":\"share/c\"", unowned + "3/link", "share/b"},
      {"names a later file", "\"link\":\"share/a\",\"mode\":420,\"path\":\"share/b\"",
       "\"link\":\"share/c\",\"mode\":420,\"path\":\"share/b\"", unowned + "2/link", "share/c"},
      {"names a file of another digest", "\"link\":\"etc/lib-copy\"", "\"link\":\"bin/python3.6\"",
       pkg_files + "2/link", "another digest"},
      {"another mode than its first member",
       "\"link\":\"share/a\",\"mode\":420,\"path\":\"share/b\"",
       "\"link\":\"share/a\",\"mode\":384,\"path\":\"share/b\"", unowned + "2/link", "share/a"},
      {"names a file of another root", "\"link\":\"data/one.csv\"", "\"link\":\"bin/python3.6\"",
       "/sources/0/files/1/link", "bin/python3.6"},
      {"on a symlink",
       "\"digest\":\"" + three +
           "\",\"mode\":420,\"path\":\"share/a\",\"size\":5,\"type\":\"file\"",
       "\"link\":\"etc/lib-copy\",\"mode\":511,\"path\":\"share/"
       "a\",\"target\":\"x\",\"type\":\"symlink\"",
       unowned + "1/link", ""},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    auto r = parse(replaced(base, c.from, c.to));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == ErrorCode::invalid_argument);
    CAPTURE(r.error().message());
    CHECK(r.error().message().starts_with("snapshot " + c.location + ": "));
    CHECK(r.error().message().find(c.names) != std::string::npos);
  }
}

TEST_CASE("to_json and digest_of refuse bad hard links as parse does") {
  const auto pkg = [](Snapshot& s) -> Package& { return s.environments[0].packages[0]; };
  struct Case {
    std::string name;
    std::function<void(Snapshot&)> apply;
    std::string location;
  };
  const std::string pkg_files = "/environments/0/packages/0/files/";
  const std::vector<Case> cases = {
      {"names no file", [&](Snapshot& s) { pkg(s).files[1].link = "bin/nothing"; },
       pkg_files + "1/link"},
      {"names itself", [&](Snapshot& s) { pkg(s).files[1].link = "bin/python3.6m"; },
       pkg_files + "1/link"},
      {"unsafe", [&](Snapshot& s) { pkg(s).files[1].link = "bin/../bin/python3.6"; },
       pkg_files + "1/link"},
      {"another digest", [&](Snapshot& s) { pkg(s).files[1].digest = oci::sha256_of("x"); },
       pkg_files + "1/link"},
      {"a chain", [](Snapshot& s) { s.environments[0].unowned[3].link = "share/b"; },
       "/environments/0/unowned/3/link"},
      {"on a symlink",
       [](Snapshot& s) {
         auto& f = s.sources[0].files[1];
         f.type = FileType::symlink;
         f.target = "one.csv";
         f.digest.reset();
       },
       "/sources/0/files/1/link"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    auto s = linked_snapshot();
    c.apply(s);
    refused_message(s, c.location);
  }
}

TEST_CASE("schema rejects a link that is no safe relative path, or on a symlink") {
  const auto base = json_of(linked_snapshot());
  const std::vector<std::string> docs = {
      replaced(base, "\"link\":\"bin/python3.6\"", "\"link\":\"../bin/python3.6\""),
      replaced(base, "\"link\":\"bin/python3.6\"", "\"link\":\"\""),
      replaced(base, "\"link\":\"bin/python3.6\"", "\"link\":7"),
      replaced(base,
               "\"digest\":\"" + oci::sha256_of("three").str() +
                   "\",\"mode\":420,\"path\":\"share/a\",\"size\":5,\"type\":\"file\"",
               "\"link\":\"etc/lib-copy\",\"mode\":511,\"path\":\"share/a\",\"target\":\"x\","
               "\"type\":\"symlink\""),
  };
  auto results = validate_with_schema(docs);
  for (std::size_t i = 0; i < docs.size(); ++i) {
    CAPTURE(i);
    CAPTURE(results[i]);
    CHECK(results[i].starts_with("invalid /environments/0/"));
    CHECK_FALSE(parse(docs[i]).has_value());
  }
}

}  // namespace
}  // namespace envd::snapshot
