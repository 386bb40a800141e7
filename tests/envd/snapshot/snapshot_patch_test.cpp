// Tests for snapshot patches: make_patch then apply_patch gives back exactly the new snapshot
// (same digest) for every kind of change; the patch holds only what changed; the index survives
// its text form; a patch against another base, or one that removes what the base lacks, is
// refused; a tampered patch is refused by the digest check.
#include "envd/snapshot/snapshot_patch.hpp"

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "envd/oci/digest.hpp"
#include "support/snapshot_samples.hpp"

namespace envd::snapshot {
namespace {

using test::pip;
using test::regular;

const std::string k_site = "lib/python3.11/site-packages/";

Snapshot base_snapshot() {
  Snapshot s;
  s.platform = {"linux", "amd64", "glibc 2.36"};
  s.created = "2026-11-29T00:00:00Z";
  s.host = "laptop";
  s.envd_version = "0.1.0";
  Environment env;
  env.kind = EnvironmentKind::prefix;
  env.name = "3.11.7";
  env.prefix = "/opt/py";
  env.python_version = "3.11.7";
  env.packages = {
      pip("attrs", "23.1.0", {regular(k_site + "attrs/__init__.py", "attrs")}),
      pip("numpy", "1.26.0",
          {regular(k_site + "numpy/__init__.py", "np"), regular(k_site + "numpy/core.so", "core")}),
      pip("six", "1.16.0", {regular(k_site + "six.py", "six")})};
  env.unowned = {regular("bin/python3", "python"), regular("lib/libpython3.11.so", "lib"),
                 regular("lib/python3.11/os.py", "os")};
  s.environments.push_back(env);
  SourceTree src;
  src.root = "/home/me/proj";
  src.git_commit = std::string(40, 'a');
  src.files = {regular("README.md", "readme"), regular("src/main.py", "main")};
  s.sources.push_back(src);
  return s;
}

ItemIndex index_of(const Snapshot& s) {
  auto d = digest_of(s);
  REQUIRE(d);
  auto index = ItemIndex::of(s, *d);
  REQUIRE(index);
  return *index;
}

// make_patch(base -> next), parse it, apply it to base: must give next, digest and all.
Patch round_trip(const Snapshot& base, const Snapshot& next) {
  auto base_index = index_of(base);
  auto next_index = index_of(next);
  auto text = make_patch(base_index, next, next_index);
  REQUIRE(text);
  auto patch = parse_patch(*text);
  REQUIRE_MESSAGE(patch, patch.error().message());
  CHECK(patch->base == base_index.snapshot_digest);
  CHECK(patch->digest == next_index.snapshot_digest);
  auto applied = apply_patch(base, *patch);
  REQUIRE_MESSAGE(applied, applied.error().message());
  CHECK(*applied == next);
  return *patch;
}

std::size_t package_count(const Patch& p) {
  std::size_t n = 0;
  for (const auto& e : p.fragment.environments) n += e.packages.size();
  return n;
}

TEST_CASE("no change: the patch carries no items") {
  auto s = base_snapshot();
  auto p = round_trip(s, s);
  CHECK(package_count(p) == 0);
  CHECK(p.fragment.environments.at(0).unowned.empty());
  CHECK(p.fragment.sources.at(0).files.empty());
  CHECK(p.removed_from_environments.at(0).packages.empty());
}

TEST_CASE("an added package travels alone, and lands in package order") {
  auto base = base_snapshot();
  auto next = base;
  auto& pkgs = next.environments[0].packages;
  pkgs.insert(pkgs.begin() + 1,
              pip("Django", "5.0", {regular(k_site + "django/__init__.py", "dj")}));
  auto p = round_trip(base, next);
  REQUIRE(package_count(p) == 1);
  CHECK(p.fragment.environments[0].packages[0].name == "Django");
  CHECK(p.fragment.environments[0].unowned.empty());
}

TEST_CASE("upgrade, removal, unowned and source changes") {
  auto base = base_snapshot();
  auto next = base;
  auto& env = next.environments[0];
  env.packages[1] = pip("numpy", "2.0.0", {regular(k_site + "numpy/__init__.py", "np2")});
  env.packages.erase(env.packages.begin() + 2);  // six
  env.unowned.erase(env.unowned.begin() + 1);    // lib/libpython3.11.so
  env.unowned.push_back(regular("share/man/x.1", "man"));
  env.unowned[0].mode = 0755;  // bin/python3: mode only
  next.sources[0].files[1] = regular("src/main.py", "main v2");
  next.sources[0].files.push_back(regular("src/util.py", "util"));
  next.sources[0].dirty = true;
  next.created = "2026-11-29T01:00:00Z";
  auto p = round_trip(base, next);
  CHECK(package_count(p) == 1);
  REQUIRE(p.removed_from_environments[0].packages.size() == 1);
  CHECK(p.removed_from_environments[0].packages[0].name == "six");
  CHECK(p.removed_from_environments[0].unowned == std::vector<std::string>{"lib/libpython3.11.so"});
  CHECK(p.fragment.environments[0].unowned.size() == 2);  // bin/python3 and share/man/x.1
  CHECK(p.fragment.sources[0].files.size() == 2);
  CHECK(p.fragment.created == "2026-11-29T01:00:00Z");
}

TEST_CASE("a hard link to an unchanged file travels alone and is checked once applied") {
  auto base = base_snapshot();
  auto next = base;
  // A new unowned file linked to bin/python3, which does not change (so is not in the patch).
  auto linked = regular("bin/python3.11", "python");
  linked.link = "bin/python3";
  auto& unowned = next.environments[0].unowned;
  unowned.insert(unowned.begin() + 1, linked);
  auto p = round_trip(base, next);
  REQUIRE(p.fragment.environments[0].unowned.size() == 1);
  CHECK(p.fragment.environments[0].unowned[0].link == "bin/python3");
  CHECK(p.fragment.environments[0].packages.empty());

  // The same link's target removed by the patch: applying it leaves a link to nothing.
  auto broken = next;
  broken.environments[0].unowned.erase(broken.environments[0].unowned.begin());  // bin/python3
  auto base_index = index_of(base);
  // make_patch writes the fragment with links checked per file; the whole document would be
  // refused, so the broken result's digest is computed with the link cleared and put back after.
  auto cleared = broken;
  cleared.environments[0].unowned[0].link.clear();
  auto cleared_index = index_of(cleared);
  auto text = make_patch(base_index, broken, cleared_index);
  REQUIRE(text);
  auto patch = parse_patch(*text);
  REQUIRE_MESSAGE(patch, patch.error().message());
  auto applied = apply_patch(base, *patch);
  REQUIRE_FALSE(applied);
  CHECK(applied.error().code() == ErrorCode::invalid_argument);
  CAPTURE(applied.error().message());
  CHECK(applied.error().message().starts_with("snapshot /environments/0/unowned/0/link: "));
  CHECK(applied.error().message().find("bin/python3") != std::string::npos);
}

TEST_CASE("a new environment and a new source tree travel whole; dropped ones disappear") {
  auto base = base_snapshot();
  auto next = base;
  Environment venv;
  venv.kind = EnvironmentKind::venv;
  venv.name = "venv";
  venv.prefix = "/home/me/venv";
  venv.base_prefix = "/opt/py";
  venv.unowned = {regular("pyvenv.cfg", "home = /opt/py/bin")};
  next.environments.insert(next.environments.begin(), venv);
  next.sources.clear();
  auto p = round_trip(base, next);
  CHECK(p.fragment.environments[0].unowned.size() == 1);
  CHECK(p.fragment.sources.empty());
}

TEST_CASE("the item index survives its text form") {
  auto s = base_snapshot();
  auto index = index_of(s);
  auto back = ItemIndex::parse(index.to_text());
  REQUIRE(back);
  CHECK(back->snapshot_digest == index.snapshot_digest);
  REQUIRE(back->items.size() == index.items.size());
  for (std::size_t i = 0; i < index.items.size(); ++i) {
    CHECK(back->items[i].key == index.items[i].key);
    CHECK(back->items[i].digest == index.items[i].digest);
  }
  // 3 packages + 3 unowned + 2 source files.
  CHECK(index.items.size() == 8);
  CHECK(index.find(index.items[0].key) != nullptr);
  CHECK(index.find("nothing") == nullptr);
  CHECK_FALSE(ItemIndex::parse("{\"snapshot_digest\":\"x\",\"items\":[]}"));
  CHECK_FALSE(ItemIndex::parse("[]"));
}

TEST_CASE("a patch made against another base fails the digest check, naming it") {
  auto base = base_snapshot();
  auto next = base;
  next.environments[0].packages[0].version = "24.0";
  auto other = base;  // what the builder holds differs from the sender's base
  other.environments[0].unowned.push_back(regular("zzz", "extra"));
  auto text = make_patch(index_of(base), next, index_of(next));
  REQUIRE(text);
  auto patch = parse_patch(*text);
  REQUIRE(patch);
  auto applied = apply_patch(other, *patch);
  REQUIRE_FALSE(applied);
  CHECK(applied.error().code() == ErrorCode::invalid_argument);
  CHECK(applied.error().message().find("digest") != std::string::npos);
}

TEST_CASE("a patch removing what the base lacks is refused") {
  auto base = base_snapshot();
  auto next = base;
  next.environments[0].packages.pop_back();
  next.environments[0].unowned.pop_back();
  auto text = make_patch(index_of(base), next, index_of(next));
  REQUIRE(text);
  auto patch = parse_patch(*text);
  REQUIRE(patch);
  auto smaller = next;  // already lacks six and os.py
  auto applied = apply_patch(smaller, *patch);
  REQUIRE_FALSE(applied);
  CHECK(applied.error().message().find("six") != std::string::npos);
}

TEST_CASE("malformed patches are refused with the JSON location") {
  auto s = base_snapshot();
  auto text = make_patch(index_of(s), s, index_of(s));
  REQUIRE(text);
  auto j = *text;
  CHECK_FALSE(parse_patch("{}"));
  CHECK_FALSE(parse_patch("not json"));
  auto wrong_type = j;
  wrong_type.replace(wrong_type.find("snapshot-patch"), 14, "snapshot-patcx");
  auto r = parse_patch(wrong_type);
  REQUIRE_FALSE(r);
  CHECK(r.error().message().find("/media_type") != std::string::npos);
  auto unsafe = j;
  auto at = unsafe.find("\"unowned\":[]");
  REQUIRE(at != std::string::npos);
  unsafe.replace(at, 12, "\"unowned\":[\"../etc/passwd\"]");
  r = parse_patch(unsafe);
  REQUIRE_FALSE(r);
  CHECK(r.error().message().find("/removed/environments/0/unowned/0") != std::string::npos);
}

}  // namespace
}  // namespace envd::snapshot
