// Tests for the snapshot JSON form: round trip, canonical output, the digest and its volatile
// fields, what the writer refuses, and parse's validation with JSON locations. Agreement with
// nlohmann's dump and with schemas/snapshot.schema.json, and hard links:
// snapshot_agreement_test.cpp.
#include <doctest/doctest.h>

#include "support/snapshot_fixtures.hpp"

namespace envd::snapshot {
namespace {

using namespace fixtures;

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

}  // namespace
}  // namespace envd::snapshot
