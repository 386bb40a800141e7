// Tests for the snapshot JSON form against its references: byte-identical output to nlohmann's
// canonical dump of the tree the writer used to build, agreement with
// schemas/snapshot.schema.json (checked with Debian's python3-jsonschema) and the example
// document, and hard links in the document.
#include <doctest/doctest.h>

#include "support/snapshot_fixtures.hpp"

namespace envd::snapshot {
namespace {

using namespace fixtures;

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
