// Tests for diff_snapshots: each kind of change lands in its own list and nowhere else; an
// identical build key gives an empty diff and every field that moves the digest shows up;
// version order; the one-line summary.
#include "envd/snapshot/snapshot_diff.hpp"

#include <doctest/doctest.h>

#include <functional>
#include <string>
#include <vector>

#include "envd/oci/digest.hpp"
#include "support/snapshot_samples.hpp"

namespace envd::snapshot {
namespace {

using test::pip;
using test::regular;
using test::symlink;

using Strings = std::vector<std::string>;

Package conda(std::string name, std::string version, std::string build) {
  Package p;
  p.name = std::move(name);
  p.version = std::move(version);
  p.manager = PackageManager::conda;
  p.build = std::move(build);
  p.channel = "conda-forge";
  p.subdir = "linux-64";
  p.installer = "conda";
  p.files = {regular("conda-meta/" + p.name + ".json", p.name)};
  return p;
}

const std::string k_site = "lib/python3.11/site-packages/";

Snapshot base_snapshot() {
  Snapshot s;
  s.platform = {"linux", "amd64", "glibc 2.36"};
  Environment env;
  env.kind = EnvironmentKind::conda;
  env.name = "ds";
  env.prefix = "/opt/conda/envs/ds";
  env.python_version = "3.11.7";
  env.packages = {
      conda("numpy", "1.26.3", "py311h_0"),
      pip("requests", "2.31.0",
          {regular(k_site + "requests/__init__.py", "r1"),
           regular(k_site + "requests/api.py", "api")}),
      pip("six", "1.16.0", {regular(k_site + "six.py", "six")}),
  };
  env.unowned = {regular("bin/activate-extra", "x", 0755), symlink("lib/libz.so", "libz.so.1")};
  s.environments.push_back(env);
  SourceTree src;
  src.root = "/home/u/proj";
  src.git_commit = "1111111111111111111111111111111111111111";
  src.ignored = {{".gitignore", 2}};
  src.files = {regular("README.md", "readme"), regular("src/model.py", "v1"),
               regular("src/util.py", "util")};
  s.sources.push_back(src);
  s.created = "2024-01-01T00:00:00Z";
  s.host = "laptop";
  s.envd_version = "0.1.0";
  return s;
}

Environment& env0(Snapshot& s) {
  return s.environments.front();
}
Package& package(Snapshot& s, std::string_view name) {
  for (auto& p : env0(s).packages)
    if (p.name == name) return p;
  FAIL("no package " << name);
  throw 0;
}

Strings names(const std::vector<PackageRef>& refs) {
  Strings out;
  for (const auto& r : refs) out.push_back(r.name + " " + r.version);
  return out;
}

TEST_CASE("identical snapshots, and ones differing only in volatile fields, give an empty diff") {
  Snapshot a = base_snapshot();
  Snapshot b = base_snapshot();
  CHECK(diff_snapshots(a, b).empty());
  b.created = "2025-02-02T00:00:00Z";
  b.host = "other";
  b.envd_version = "9.9";
  const auto d = diff_snapshots(a, b);
  CHECK(d.empty());
  CHECK(d.environments.empty());
  CHECK(d.sources.empty());
  CHECK(summary_line(d) == "no changes");
}

TEST_CASE("an added package is listed as added and nowhere else") {
  Snapshot a = base_snapshot();
  Snapshot b = base_snapshot();
  env0(b).packages.insert(env0(b).packages.begin(),
                          pip("attrs", "23.2.0", {regular(k_site + "attrs/__init__.py", "a")}));
  const auto d = diff_snapshots(a, b);
  REQUIRE(d.environments.size() == 1);
  const auto& e = d.environments[0];
  CHECK(e.presence == Presence::both);
  CHECK(e.prefix == "/opt/conda/envs/ds");
  CHECK(names(e.added) == Strings{"attrs 23.2.0"});
  CHECK(e.added[0].manager == PackageManager::pip);
  CHECK(e.removed.empty());
  CHECK(e.upgraded.empty());
  CHECK(e.downgraded.empty());
  CHECK(e.changed.empty());
  CHECK(e.unowned.empty());
  CHECK(e.other.empty());
  CHECK(d.sources.empty());
  CHECK(summary_line(d) == "+attrs 23.2.0");
}

TEST_CASE("a removed package is listed as removed") {
  Snapshot a = base_snapshot();
  Snapshot b = base_snapshot();
  std::erase_if(env0(b).packages, [](const Package& p) { return p.name == "six"; });
  const auto d = diff_snapshots(a, b);
  REQUIRE(d.environments.size() == 1);
  CHECK(names(d.environments[0].removed) == Strings{"six 1.16.0"});
  CHECK(d.environments[0].added.empty());
  CHECK(d.environments[0].changed.empty());
  CHECK(summary_line(d) == "-six 1.16.0");
}

TEST_CASE("a newer version is an upgrade with old and new versions; an older one a downgrade") {
  Snapshot a = base_snapshot();
  Snapshot b = base_snapshot();
  package(b, "requests").version = "2.32.0";
  package(b, "requests").files[0] = regular(k_site + "requests/__init__.py", "r2");
  package(b, "numpy").version = "1.26.2";
  const auto d = diff_snapshots(a, b);
  REQUIRE(d.environments.size() == 1);
  const auto& e = d.environments[0];
  REQUIRE(e.upgraded.size() == 1);
  CHECK(e.upgraded[0] ==
        VersionChange{"requests", PackageManager::pip, "2.31.0", "2.32.0", "", ""});
  REQUIRE(e.downgraded.size() == 1);
  CHECK(e.downgraded[0] ==
        VersionChange{"numpy", PackageManager::conda, "1.26.3", "1.26.2", "py311h_0", "py311h_0"});
  // A version change is not also reported as file changes, additions or removals.
  CHECK(e.changed.empty());
  CHECK(e.added.empty());
  CHECK(e.removed.empty());
  CHECK(summary_line(d) == "requests 2.31.0 -> 2.32.0, numpy 1.26.3 -> 1.26.2");
}

TEST_CASE("the same version with another conda build counts as an upgrade showing the builds") {
  Snapshot a = base_snapshot();
  Snapshot b = base_snapshot();
  package(b, "numpy").build = "py311h_1";
  const auto d = diff_snapshots(a, b);
  REQUIRE(d.environments.size() == 1);
  REQUIRE(d.environments[0].upgraded.size() == 1);
  CHECK(d.environments[0].upgraded[0].old_build == "py311h_0");
  CHECK(d.environments[0].upgraded[0].new_build == "py311h_1");
  CHECK(summary_line(d) == "numpy 1.26.3 (py311h_0) -> 1.26.3 (py311h_1)");
}

TEST_CASE("a package whose files changed at the same version lists exactly those files") {
  Snapshot a = base_snapshot();
  Snapshot b = base_snapshot();
  auto& files = package(b, "requests").files;
  files[1] = regular(k_site + "requests/api.py", "patched");  // content
  files.push_back(regular(k_site + "requests/zz_new.py", "new"));
  files.erase(files.begin());  // requests/__init__.py removed
  const auto d = diff_snapshots(a, b);
  REQUIRE(d.environments.size() == 1);
  const auto& e = d.environments[0];
  REQUIRE(e.changed.size() == 1);
  const auto& c = e.changed[0];
  CHECK(c.name == "requests");
  CHECK(c.version == "2.31.0");
  CHECK(c.files.added == Strings{k_site + "requests/zz_new.py"});
  CHECK(c.files.removed == Strings{k_site + "requests/__init__.py"});
  CHECK(c.files.modified == Strings{k_site + "requests/api.py"});
  CHECK(c.fields.empty());
  CHECK(e.upgraded.empty());
  CHECK(summary_line(d) == "~requests (3 files)");
}

TEST_CASE("a mode, size-only or symlink-target change is a modified file") {
  Snapshot a = base_snapshot();
  Snapshot b = base_snapshot();
  env0(b).unowned[0].mode = 0700;
  env0(b).unowned[1].target = "libz.so.2";
  const auto d = diff_snapshots(a, b);
  REQUIRE(d.environments.size() == 1);
  CHECK(d.environments[0].unowned.modified == Strings{"bin/activate-extra", "lib/libz.so"});
  CHECK(d.environments[0].unowned.added.empty());
  CHECK(summary_line(d) == "unowned: 2 files");

  Snapshot c = base_snapshot();
  env0(c).unowned[0].size += 1;
  CHECK(diff_snapshots(a, c).environments.at(0).unowned.modified == Strings{"bin/activate-extra"});
  Snapshot t = base_snapshot();
  env0(t).unowned[1] = regular("lib/libz.so", "now a file");
  CHECK(diff_snapshots(a, t).environments.at(0).unowned.modified == Strings{"lib/libz.so"});
}

TEST_CASE("a hard link made or undone is a modified file") {
  Snapshot a = base_snapshot();
  Snapshot b = base_snapshot();
  b.sources[0].files[2] = regular("src/util.py", "v1");  // now the content of src/model.py
  Snapshot c = b;
  c.sources[0].files[2].link = "src/model.py";
  const auto d = diff_snapshots(b, c);
  REQUIRE(d.sources.size() == 1);
  CHECK(d.sources[0].files.modified == Strings{"src/util.py"});
  CHECK(d.sources[0].files.added.empty());
  CHECK(d.sources[0].files.removed.empty());
  CHECK(*digest_of(b) != *digest_of(c));
  CHECK(diff_snapshots(c, b).sources.at(0).files.modified == Strings{"src/util.py"});
  CHECK(diff_snapshots(a, c).sources.at(0).files.modified == Strings{"src/util.py"});
}

TEST_CASE("unowned files added and removed") {
  Snapshot a = base_snapshot();
  Snapshot b = base_snapshot();
  env0(b).unowned.erase(env0(b).unowned.begin());
  env0(b).unowned.push_back(regular("share/new.txt", "n"));
  const auto d = diff_snapshots(a, b);
  REQUIRE(d.environments.size() == 1);
  CHECK(d.environments[0].unowned.added == Strings{"share/new.txt"});
  CHECK(d.environments[0].unowned.removed == Strings{"bin/activate-extra"});
  CHECK(d.environments[0].unowned.modified.empty());
  CHECK(d.environments[0].added.empty());
}

TEST_CASE("metadata-only package changes are named field by field") {
  Snapshot a = base_snapshot();
  Snapshot b = base_snapshot();
  package(b, "six").installer = "uv";
  package(b, "six").requested = true;
  package(b, "six").editable_root = "/home/u/six";
  package(b, "six").modified = {k_site + "six.py"};
  const auto d = diff_snapshots(a, b);
  REQUIRE(d.environments.size() == 1);
  REQUIRE(d.environments[0].changed.size() == 1);
  const auto& c = d.environments[0].changed[0];
  CHECK(c.files.empty());
  CHECK(c.fields == Strings{"editable_root (none) -> /home/u/six", "installer pip -> uv",
                            "modified [] -> [" + k_site + "six.py]", "requested false -> true"});
  CHECK(summary_line(d) == "~six (metadata)");
}

TEST_CASE("the same name under another package manager is a removal plus an addition") {
  Snapshot a = base_snapshot();
  Snapshot b = base_snapshot();
  Package& six = package(b, "six");
  six.manager = PackageManager::conda;
  six.build = "pyh_0";
  const auto d = diff_snapshots(a, b);
  REQUIRE(d.environments.size() == 1);
  REQUIRE(d.environments[0].added.size() == 1);
  REQUIRE(d.environments[0].removed.size() == 1);
  CHECK(d.environments[0].added[0].manager == PackageManager::conda);
  CHECK(d.environments[0].removed[0].manager == PackageManager::pip);
  CHECK(d.environments[0].upgraded.empty());
}

TEST_CASE("source files added, removed and edited, with git state as other changes") {
  Snapshot a = base_snapshot();
  Snapshot b = base_snapshot();
  auto& src = b.sources[0];
  src.files[1] = regular("src/model.py", "v2");
  src.files.erase(src.files.begin() + 2);
  src.files.push_back(regular("src/zeta.py", "z"));
  src.dirty = true;
  src.git_commit = "2222222222222222222222222222222222222222";
  src.ignored[".gitignore"] = 3;
  src.ignored[".envdignore"] = 1;
  const auto d = diff_snapshots(a, b);
  CHECK(d.environments.empty());
  REQUIRE(d.sources.size() == 1);
  const auto& s = d.sources[0];
  CHECK(s.root == "/home/u/proj");
  CHECK(s.presence == Presence::both);
  CHECK(s.files.added == Strings{"src/zeta.py"});
  CHECK(s.files.removed == Strings{"src/util.py"});
  CHECK(s.files.modified == Strings{"src/model.py"});
  CHECK(s.other == Strings{"dirty false -> true",
                           "git_commit 1111111111111111111111111111111111111111 -> "
                           "2222222222222222222222222222222222222222",
                           "ignored by .envdignore 0 -> 1 entries",
                           "ignored by .gitignore 2 -> 3 entries"});
  CHECK(summary_line(d, 2) == "src: 3 files, src dirty false -> true and 3 more");
}

TEST_CASE("a source tree or environment on one side only lists all of its content") {
  Snapshot a = base_snapshot();
  Snapshot b = base_snapshot();
  b.sources.clear();
  Environment venv;
  venv.kind = EnvironmentKind::venv;
  venv.prefix = "/home/u/.venv";
  venv.packages = {pip("pytest", "8.0.0"), pip("iniconfig", "2.0.0")};
  venv.unowned = {regular("pyvenv.cfg", "home = /usr/bin")};
  b.environments.push_back(venv);
  SourceTree editable;
  editable.root = "/home/u/lib";
  editable.role = SourceRole::editable;
  editable.files = {regular("setup.py", "s")};
  b.sources.push_back(editable);

  auto d = diff_snapshots(a, b);
  REQUIRE(d.environments.size() == 1);
  CHECK(d.environments[0].presence == Presence::added);
  CHECK(d.environments[0].kind == EnvironmentKind::venv);
  CHECK(names(d.environments[0].added) == Strings{"iniconfig 2.0.0", "pytest 8.0.0"});
  CHECK(d.environments[0].unowned.added == Strings{"pyvenv.cfg"});
  REQUIRE(d.sources.size() == 2);
  CHECK(d.sources[0].root == "/home/u/lib");
  CHECK(d.sources[0].presence == Presence::added);
  CHECK(d.sources[0].files.added == Strings{"setup.py"});
  CHECK(d.sources[1].root == "/home/u/proj");
  CHECK(d.sources[1].presence == Presence::removed);
  CHECK(d.sources[1].files.removed == Strings{"README.md", "src/model.py", "src/util.py"});
  CHECK(summary_line(d) ==
        "+environment /home/u/.venv (2 packages), +editable /home/u/lib (1 file), "
        "-src /home/u/proj (3 files)");

  // And the other way round.
  d = diff_snapshots(b, a);
  REQUIRE(d.environments.size() == 1);
  CHECK(d.environments[0].presence == Presence::removed);
  CHECK(names(d.environments[0].removed) == Strings{"iniconfig 2.0.0", "pytest 8.0.0"});
  CHECK(d.environments[0].unowned.removed == Strings{"pyvenv.cfg"});
}

TEST_CASE("environment-level fields, the platform and the environments' order are reported") {
  Snapshot a = base_snapshot();
  Snapshot b = base_snapshot();
  env0(b).python_version = "3.11.8";
  env0(b).kind = EnvironmentKind::prefix;
  b.platform.libc = "glibc 2.37";
  auto d = diff_snapshots(a, b);
  REQUIRE(d.environments.size() == 1);
  CHECK(d.environments[0].kind == EnvironmentKind::prefix);
  CHECK(d.environments[0].other ==
        Strings{"kind conda -> prefix", "python_version 3.11.7 -> 3.11.8"});
  CHECK(d.other == Strings{"platform.libc glibc 2.36 -> glibc 2.37"});

  Snapshot two = base_snapshot();
  Environment second;
  second.prefix = "/opt/other";
  two.environments.push_back(second);
  Snapshot swapped = two;
  std::swap(swapped.environments[0], swapped.environments[1]);
  d = diff_snapshots(two, swapped);
  CHECK(d.environments.empty());
  CHECK(d.other == Strings{"environment order changed"});
}

TEST_CASE("several environments: the summary says which environment each change is in") {
  Snapshot a = base_snapshot();
  Environment second;
  second.prefix = "/opt/other";
  second.packages = {pip("tqdm", "4.0")};
  a.environments.push_back(second);
  Snapshot b = a;
  b.environments[1].packages[0].version = "4.1";
  package(b, "six").version = "1.17.0";
  const auto d = diff_snapshots(a, b);
  REQUIRE(d.environments.size() == 2);
  CHECK(d.environments[0].prefix == "/opt/conda/envs/ds");
  CHECK(d.environments[1].prefix == "/opt/other");
  CHECK(summary_line(d) == "/opt/conda/envs/ds: six 1.16.0 -> 1.17.0, /opt/other: tqdm 4.0 -> 4.1");
}

TEST_CASE("duplicate package entries do not hide one another") {
  Snapshot a = base_snapshot();
  Snapshot b = base_snapshot();
  env0(b).packages.push_back(pip("six", "1.16.0", {regular(k_site + "six.py", "six")}));
  const auto d = diff_snapshots(a, b);
  REQUIRE(d.environments.size() == 1);
  CHECK(names(d.environments[0].added) == Strings{"six 1.16.0"});
}

TEST_CASE("every field that changes the digest changes the diff") {
  const Snapshot a = base_snapshot();
  const auto base_digest = digest_of(a);
  REQUIRE(base_digest);
  const std::vector<std::pair<std::string, std::function<void(Snapshot&)>>> mutations = {
      {"platform.os", [](Snapshot& s) { s.platform.os = "darwin"; }},
      {"platform.arch", [](Snapshot& s) { s.platform.arch = "arm64"; }},
      {"env.name", [](Snapshot& s) { env0(s).name = "ds2"; }},
      {"env.prefix", [](Snapshot& s) { env0(s).prefix = "/opt/conda/envs/ds2"; }},
      {"env.base_prefix", [](Snapshot& s) { env0(s).base_prefix = "/usr"; }},
      {"env.system_site_packages", [](Snapshot& s) { env0(s).system_site_packages = true; }},
      {"env.partial", [](Snapshot& s) { env0(s).partial = true; }},
      {"package.channel", [](Snapshot& s) { package(s, "numpy").channel = "defaults"; }},
      {"package.subdir", [](Snapshot& s) { package(s, "numpy").subdir = "noarch"; }},
      {"package.direct_url", [](Snapshot& s) { package(s, "six").direct_url = "file:///x"; }},
      {"package.file digest",
       [](Snapshot& s) { package(s, "six").files[0].digest = oci::sha256_of("other"); }},
      {"source.role", [](Snapshot& s) { s.sources[0].role = SourceRole::editable; }},
      {"source.root", [](Snapshot& s) { s.sources[0].root = "/home/u/proj2"; }},
      {"source.git_commit", [](Snapshot& s) { s.sources[0].git_commit.reset(); }},
      {"source.file mode", [](Snapshot& s) { s.sources[0].files[0].mode = 0600; }},
  };
  for (const auto& [what, mutate] : mutations) {
    CAPTURE(what);
    Snapshot b = a;
    mutate(b);
    auto digest = digest_of(b);
    REQUIRE(digest);
    CHECK(*digest != *base_digest);
    const auto d = diff_snapshots(a, b);
    CHECK_FALSE(d.empty());
    CHECK(summary_line(d) != "no changes");
  }
}

TEST_CASE("a long summary is cut with a count of what is left out") {
  Snapshot a = base_snapshot();
  Snapshot b = base_snapshot();
  for (int i = 0; i < 30; ++i) env0(b).packages.push_back(pip("p" + std::to_string(i), "1.0"));
  const std::string line = summary_line(diff_snapshots(a, b), 3);
  CHECK(line == "+p0 1.0, +p1 1.0, +p10 1.0 and 27 more");
}

TEST_CASE("compare_versions orders releases, pre-releases and post-releases") {
  struct Case {
    const char* a;
    const char* b;
    int sign;
  };
  const Case cases[] = {
      {"1.0", "1.1", -1},
      {"1.9", "1.10", -1},
      {"1.10", "1.9", 1},
      {"1.0", "1.0.0", 0},
      {"1.0.0", "1.0", 0},
      {"01.2", "1.2", 0},
      {"v1.2", "1.2", 0},
      {"1.0rc1", "1.0", -1},
      {"1.0", "1.0rc1", 1},
      {"1.0a1", "1.0b1", -1},
      {"1.0b2", "1.0rc1", -1},
      {"1.0.dev0", "1.0a1", -1},
      {"1.0alpha1", "1.0a2", -1},
      {"1.0.post1", "1.0", 1},
      {"1.0.post1", "1.0.1", -1},
      {"1.0rc1", "1.0.1", -1},
      {"2.1.0+cpu", "2.1.0", 1},
      {"2023.10.1", "2023.9.30", 1},
      {"1.26.4", "1.26.4", 0},
      {"99999999999999999999", "100000000000000000000", -1},
      {"", "0", 0},
  };
  for (const auto& c : cases) {
    CAPTURE(c.a);
    CAPTURE(c.b);
    const int r = compare_versions(c.a, c.b);
    CHECK((r > 0) - (r < 0) == c.sign);
    const int back = compare_versions(c.b, c.a);
    CHECK((back > 0) - (back < 0) == -c.sign);
  }
}

}  // namespace
}  // namespace envd::snapshot
