// Snapshots for the snapshot JSON tests (tests/envd/snapshot/snapshot_json_test.cpp and
// snapshot_agreement_test.cpp): small, rich, bare, linked, unusual and random ones, and helpers
// to serialise them, validate documents against schemas/snapshot.schema.json and check a refusal.
#pragma once

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
#include "support/snapshot_samples.hpp"

namespace envd::snapshot::fixtures {

namespace fs = std::filesystem;

using test::regular;
using test::symlink;

// Small enough that its canonical text is predictable, so tests can edit it as a string.
// Modes are chosen so "mode":493 (0755) occurs once: on packages/0/files/0.
// One environment and one source tree on linux/amd64, with the fixed created/host/version.
inline Snapshot one_env_snapshot(Environment e, SourceTree src, std::string libc) {
  Snapshot s;
  s.platform = {"linux", "amd64", std::move(libc)};
  s.environments = {std::move(e)};
  s.sources = {std::move(src)};
  s.created = "2024-03-01T12:00:00Z";
  s.host = "h";
  s.envd_version = "0.1.0";
  return s;
}

inline Snapshot small_snapshot() {
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
inline Snapshot rich_snapshot() {
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
inline Snapshot bare_snapshot() {
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
inline Snapshot linked_snapshot() {
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

// Names, targets and free-text fields full of what escaping must get right: every control
// character, quotes, backslashes, DEL, 2-, 3- and 4-byte UTF-8 (up to U+10FFFF), NUL where a
// field allows it, extreme numbers, empty strings and empty lists.
inline Snapshot unusual_snapshot() {
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
inline Snapshot random_snapshot(std::uint32_t seed, std::size_t max_files = 30) {
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

inline std::string json_of(const Snapshot& s) {
  auto text = to_json(s);
  REQUIRE(text.has_value());
  return *text;
}

inline oci::Digest digest_value(const Snapshot& s) {
  auto d = digest_of(s);
  REQUIRE(d.has_value());
  return *d;
}

// Replaces the first occurrence of `from`, which must occur.
inline std::string replaced(std::string text, std::string_view from, std::string_view to) {
  auto pos = text.find(from);
  REQUIRE_MESSAGE(pos != std::string::npos, "substring not found: " << from);
  text.replace(pos, from.size(), to);
  return text;
}

// Bytes as \xNN for test messages.
inline std::string printable_bytes(std::string_view s) {
  std::string out;
  char buf[5];
  for (unsigned char c : s) {
    std::snprintf(buf, sizeof buf, "\\x%02x", c);
    out += buf;
  }
  return out;
}

inline fs::path schema_path() {
  return (fs::path(__FILE__).parent_path() / "../../schemas/snapshot.schema.json")
      .lexically_normal();
}
inline fs::path example_path() {
  return (fs::path(__FILE__).parent_path() / "../../schemas/examples/snapshot.example.json")
      .lexically_normal();
}

// Validates each document against the schema with Debian's python3-jsonschema (not the pyenv
// python on PATH). Returns one line per document: "valid" or "invalid <json pointer>: <message>".
inline std::vector<std::string> validate_with_schema(const std::vector<std::string>& documents) {
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
inline std::string refused_message(const Snapshot& s, const std::string& location) {
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

}  // namespace envd::snapshot::fixtures
