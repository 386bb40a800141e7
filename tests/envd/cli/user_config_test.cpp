// The user config: the shipped example parses and agrees with the JSON Schema; every bad input
// names its line and key; paths resolve; the token file; and the precedence flag > environment >
// file for the push target and the snapshot options.
#include <doctest/doctest.h>
#include <stdlib.h>

#include <initializer_list>
#include <map>
#include <optional>

#include "envd/cli/defaults.hpp"
#include "envd/cli/push_session.hpp"
#include "envd/cli/user_config.hpp"
#include "support/python_prefix.hpp"
#include "support/run_command.hpp"
#include "support/scratch_dir.hpp"

namespace envd::cli {
namespace {

namespace fs = std::filesystem;
using test::ScratchDir;

fs::path source_root() {
  return (fs::path(__FILE__).parent_path() / "../../..").lexically_normal();
}

template <class R>
std::string why(const R& r) {
  return r ? std::string() : r.error().message();
}

Result<UserConfig> parse(std::string_view yaml, const fs::path& base = "/etc/envd") {
  return parse_user_config(yaml, "config.yaml", base);
}

// The error message of parsing `yaml`, which must fail with invalid_argument.
std::string error_of(std::string_view yaml) {
  auto r = parse(yaml);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code() == ErrorCode::invalid_argument);
  return r.error().message();
}

// Sets environment variables for the scope, restoring the old values after.
class EnvScope {
 public:
  explicit EnvScope(
      std::initializer_list<std::pair<const std::string, std::optional<std::string>>> vars) {
    for (const auto& [k, v] : vars) {
      const char* old = std::getenv(k.c_str());
      m_old[k] = old != nullptr ? std::optional<std::string>(old) : std::nullopt;
      if (v) {
        ::setenv(k.c_str(), v->c_str(), 1);
      } else {
        ::unsetenv(k.c_str());
      }
    }
  }
  ~EnvScope() {
    for (const auto& [k, v] : m_old) {
      if (v) {
        ::setenv(k.c_str(), v->c_str(), 1);
      } else {
        ::unsetenv(k.c_str());
      }
    }
  }
  EnvScope(const EnvScope&) = delete;
  EnvScope& operator=(const EnvScope&) = delete;

 private:
  std::map<std::string, std::optional<std::string>> m_old;
};

}  // namespace

TEST_CASE("the example config parses, and it and a bad one are checked by the JSON Schema") {
  EnvScope env({{"HOME", "/home/ada"}});
  auto c = load_user_config_file(source_root() / "schemas/examples/envd-config.example.yaml");
  REQUIRE_MESSAGE(c.has_value(), why(c));
  CHECK(c->builder == "https://builder.example.com");
  CHECK(c->token.empty());
  CHECK(c->token_file == "/home/ada/.config/envd/token");
  CHECK(c->name == "ds/churn-model:latest");
  CHECK(c->ignore ==
        std::vector<std::string>{"data/", "*.parquet", "notebooks/.ipynb_checkpoints/"});
  CHECK(c->allow_secrets == std::vector<std::string>{"tests/fixtures/fake-key.pem"});
  CHECK(c->compression == "zstd");
  CHECK(c->ca_file.empty());

  // Debian's python3-yaml and python3-jsonschema (not whatever python is first on PATH).
  ScratchDir dir;
  test::write_file(dir / "bad1.yaml", "builder: ftp://x\n");
  test::write_file(dir / "bad2.yaml", "token: a\ntoken_file: b\n");
  test::write_file(dir / "bad3.yaml", "compresion: zstd\n");
  auto r = test::run_command(
      {"/usr/bin/python3", "-c", R"PY(
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema)
for p in sys.argv[2:]:
    print("valid" if not list(v.iter_errors(yaml.safe_load(open(p)))) else "invalid")
)PY",
       (source_root() / "schemas/envd-config.schema.json").string(),
       (source_root() / "schemas/examples/envd-config.example.yaml").string(),
       (dir / "bad1.yaml").string(), (dir / "bad2.yaml").string(), (dir / "bad3.yaml").string()});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out == "valid\ninvalid\ninvalid\ninvalid\n");
  for (const char* bad : {"bad1.yaml", "bad2.yaml", "bad3.yaml"})
    CHECK_FALSE(parse(test::read_file(dir / bad)).has_value());
}

TEST_CASE("every bad config names the line and the key") {
  CHECK(error_of("builder: http://b:5000\ncompresion: zstd\n") ==
        "config.yaml:2: compresion: unknown key (known: builder, token, token_file, name, "
        "ignore, allow_secrets, compression, ca_file)");
  CHECK(error_of("# a comment\nname: team/env\nignore: 3\n") ==
        "config.yaml:3: ignore: must be a list of strings");
  CHECK(error_of("ignore:\n  - data/\n  - [x]\n") ==
        "config.yaml:3: ignore[1]: must be a non-empty string");
  CHECK(error_of("builder:\n  url: http://x\n") ==
        "config.yaml:2: builder: must be a non-empty string");
  CHECK(error_of("builder: 127.0.0.1:5000\n") ==
        "config.yaml:1: builder: must be an http:// or https:// URL without a path, not "
        "\"127.0.0.1:5000\"");
  CHECK(error_of("builder: http://b:5000/v2\n").find("config.yaml:1: builder:") == 0);
  CHECK(error_of("compression: lz4\n") ==
        "config.yaml:1: compression: must be zstd or gzip, not \"lz4\"");
  CHECK(error_of("name: Team/Env\n").find("config.yaml:1: name: \"Team/Env\" is not") == 0);
  CHECK(error_of("name: team/env:bad:tag\n").find("config.yaml:1: name:") == 0);
  CHECK(error_of("token: abc\nname: a/b\ntoken_file: /t\n") ==
        "config.yaml:1: token: give either token or token_file, not both");
  CHECK(error_of("name: a/b\nname: c/d\n") == "config.yaml:2: name: given twice");
  CHECK(error_of("- builder\n") ==
        "config.yaml:1: (top level): must be a mapping of keys to values");
  CHECK(error_of("ca_file: /nonexistent/ca.pem\n") ==
        "config.yaml:1: ca_file: /nonexistent/ca.pem is not a readable file");
  // Not YAML at all: yaml-cpp's mark gives the line.
  std::string bad_yaml = error_of("builder: http://b\nignore: [a, b\nname: x\n");
  CHECK(bad_yaml.find("config.yaml:") == 0);
  CHECK(bad_yaml.find("not valid YAML") != std::string::npos);
  std::string map_value = error_of("name: team/env\nbuilder: a: b\n");
  CHECK(map_value.find("config.yaml:2: not valid YAML") == 0);
}

TEST_CASE("empty files, relative and ~ paths, and the token file") {
  EnvScope env({{"HOME", "/home/ada"}});
  auto empty = parse("");
  REQUIRE(empty.has_value());
  CHECK(empty->builder.empty());
  auto comments = parse("# nothing yet\n");
  REQUIRE(comments.has_value());

  ScratchDir dir;
  test::write_file(dir / "ca.pem", "-----BEGIN CERTIFICATE-----\n");
  test::write_file(dir / "secrets/token", "  s3cret-token\n\n");
  auto c = parse("token_file: secrets/token\nca_file: ca.pem\n", dir.path());
  REQUIRE_MESSAGE(c.has_value(), why(c));
  CHECK(c->token_file == dir / "secrets/token");
  CHECK(c->ca_file == dir / "ca.pem");
  auto token = config_token(*c);
  REQUIRE_MESSAGE(token.has_value(), why(token));
  CHECK(*token == "s3cret-token");

  auto home = parse("token_file: ~/tok\n");
  REQUIRE(home.has_value());
  CHECK(home->token_file == "/home/ada/tok");

  auto literal = parse("token: abc\n");
  REQUIRE(literal.has_value());
  CHECK(config_token(*literal).value_or("") == "abc");

  test::write_file(dir / "empty-token", "\n");
  auto blank = parse("token_file: empty-token\n", dir.path());
  REQUIRE(blank.has_value());
  auto blank_token = config_token(*blank);
  REQUIRE_FALSE(blank_token.has_value());
  CHECK(blank_token.error().message().find("empty-token is empty") != std::string::npos);

  auto missing = parse("token_file: nope\n", dir.path());
  REQUIRE(missing.has_value());
  auto missing_token = config_token(*missing);
  REQUIRE_FALSE(missing_token.has_value());
  CHECK(missing_token.error().code() == ErrorCode::not_found);
  CHECK(missing_token.error().message().find("token_file") != std::string::npos);
}

TEST_CASE("where the config is read from; a missing default is empty, a named missing one not") {
  ScratchDir dir;
  {
    EnvScope env({{"ENVD_CONFIG", std::nullopt},
                  {"XDG_CONFIG_HOME", std::nullopt},
                  {"HOME", (dir / "home").string()}});
    CHECK(user_config_path() == dir / "home/.config/envd/config.yaml");
    auto none = load_user_config();
    REQUIRE_MESSAGE(none.has_value(), why(none));
    CHECK(none->file.empty());
    test::write_file(dir / "home/.config/envd/config.yaml", "name: team/env\n");
    auto found = load_user_config();
    REQUIRE(found.has_value());
    CHECK(found->name == "team/env");
    CHECK(found->file == dir / "home/.config/envd/config.yaml");
  }
  {
    EnvScope env({{"ENVD_CONFIG", std::nullopt}, {"XDG_CONFIG_HOME", (dir / "xdg").string()}});
    CHECK(user_config_path() == dir / "xdg/envd/config.yaml");
  }
  {
    EnvScope env({{"ENVD_CONFIG", (dir / "missing.yaml").string()}});
    auto missing = load_user_config();
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().code() == ErrorCode::not_found);
    CHECK(missing.error().message().find("missing.yaml") != std::string::npos);
    test::write_file(dir / "bad.yaml", "builder: http://b\nwhat: 1\n");
    EnvScope bad({{"ENVD_CONFIG", (dir / "bad.yaml").string()}});
    auto r = load_user_config();
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message() == (dir / "bad.yaml").string() +
                                     ":2: what: unknown key (known: builder, token, token_file, "
                                     "name, ignore, allow_secrets, compression, ca_file)");
  }
}

TEST_CASE("push target: flags override the environment, which overrides the file") {
  ScratchDir dir;
  test::write_file(dir / "token", "file-token\n");
  auto c = parse("builder: http://from-file:1\ntoken_file: token\ncompression: gzip\n", dir.path());
  REQUIRE(c.has_value());
  c->file = dir / "config.yaml";
  {
    EnvScope env({{"ENVD_BUILDER", std::nullopt}, {"ENVD_TOKEN", std::nullopt}});
    auto t = resolve_push_target("", "", *c, dir / "home");
    REQUIRE_MESSAGE(t.has_value(), why(t));
    CHECK(t->builder_url == "http://from-file:1");
    CHECK(t->token == "file-token");
    CHECK(t->compression == "gzip");
    CHECK(t->envd_home == dir / "home");
    auto flags = resolve_push_target("https://from-flag:2/", "zstd", *c, dir / "home");
    REQUIRE(flags.has_value());
    CHECK(flags->builder_url == "https://from-flag:2");
    CHECK(flags->compression == "zstd");
    auto embedded = resolve_push_target("", "", UserConfig{}, dir / "home");
    REQUIRE(embedded.has_value());
    CHECK(embedded->builder_url.empty());
    CHECK(embedded->token.empty());
    CHECK(embedded->compression.empty());
  }
  {
    EnvScope env({{"ENVD_BUILDER", "http://from-env:3"}, {"ENVD_TOKEN", "env-token"}});
    auto t = resolve_push_target("", "", *c, dir / "home");
    REQUIRE(t.has_value());
    CHECK(t->builder_url == "http://from-env:3");
    CHECK(t->token == "env-token");
    auto flag = resolve_push_target("http://from-flag:2", "", *c, dir / "home");
    REQUIRE(flag.has_value());
    CHECK(flag->builder_url == "http://from-flag:2");
  }
  {
    EnvScope env({{"ENVD_BUILDER", "not-a-url"}, {"ENVD_TOKEN", std::nullopt}});
    auto bad = resolve_push_target("", "", *c, dir / "home");
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().code() == ErrorCode::invalid_argument);
    CHECK(bad.error().message().find("ENVD_BUILDER: \"not-a-url\"") == 0);
    auto flag = resolve_push_target("http://x/path", "", *c, dir / "home");
    REQUIRE_FALSE(flag.has_value());
    CHECK(flag.error().message().find("--builder") == 0);
  }
}

TEST_CASE("snapshot options take the config's ignore patterns and secret allow-list") {
  ScratchDir dir;
  auto c = parse("ignore: [data/]\nallow_secrets: [keys/test.pem]\n");
  REQUIRE(c.has_value());
  auto o = snapshot_options(
      {{(dir / "env").string()}, (dir / "src").string(), false, {"other.key"}}, *c);
  REQUIRE_MESSAGE(o.has_value(), why(o));
  CHECK(o->extra_ignores == std::vector<std::string>{"data/"});
  CHECK(o->secret_allow == std::vector<std::string>{"keys/test.pem", "other.key"});
  CHECK(o->prefixes == std::vector<fs::path>{dir / "env"});
}

TEST_CASE("image names resolve with namespace and tag defaults; bad ones are refused") {
  snapshot::Snapshot snap;
  snap.environments.push_back({});
  snap.environments[0].name = "My Env_2";
  auto dflt = resolve_image_name("", snap);
  REQUIRE(dflt.has_value());
  CHECK(dflt->repository == "local/my-env_2");
  CHECK(dflt->tag == "latest");
  auto bare = resolve_image_name("model:v3", snap);
  REQUIRE(bare.has_value());
  CHECK(bare->repository == "local/model");
  CHECK(bare->tag == "v3");
  auto full = resolve_image_name("team/sub/env", snap);
  REQUIRE(full.has_value());
  CHECK(full->repository == "team/sub/env");
  for (const std::string bad : {"Team/Env", "team/env:", "team//env", "team/env:bad tag"}) {
    CAPTURE(bad);
    auto r = resolve_image_name(bad, snap);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == ErrorCode::invalid_argument);
    CHECK(r.error().message().find(bad) != std::string::npos);
  }
}

TEST_CASE("push_once (embedded) records each push; last_pushed_snapshot reads the latest back") {
  ScratchDir dir;
  test::write_file(dir / "env/bin/python3", "#!/bin/sh\n");
  test::write_file(dir / "env/lib/python3.11/os.py", "# os\n");
  test::write_pip_packages(dir / "env", "p", 2);
  PushRequest request;
  request.snapshot.prefixes = {dir / "env"};
  request.snapshot.state_dir = dir / "home";
  request.name = "team/env:v1";
  PushTarget target;
  target.envd_home = dir / "home";

  auto none = last_pushed_snapshot(dir / "home", "team/env");
  REQUIRE(none.has_value());
  CHECK_FALSE(none->has_value());

  PushProgress progress;
  std::vector<std::string> steps;
  progress.on_step = [&](std::string_view line) { steps.emplace_back(line); };
  auto first = push_once(request, target, &progress);
  REQUIRE_MESSAGE(first.has_value(), why(first));
  CHECK(first->repository == "team/env");
  CHECK(first->tag == "v1");
  CHECK(first->image == "team/env@" + first->manifest_digest.str());
  CHECK_FALSE(first->unchanged);
  CHECK(progress.phase == 3);
  REQUIRE(steps.size() == 2);
  CHECK(steps[0].starts_with("snapshot: "));
  CHECK(steps[1].starts_with("build: "));
  auto recorded = last_pushed_snapshot(dir / "home", "team/env");
  REQUIRE_MESSAGE(recorded.has_value(), why(recorded));
  REQUIRE(recorded->has_value());
  CHECK(snapshot::digest_of(**recorded).value() == first->snapshot_digest);

  auto again = push_once(request, target);
  REQUIRE(again.has_value());
  CHECK(again->unchanged);
  CHECK(again->manifest_digest == first->manifest_digest);

  test::write_pip_packages(dir / "env", "q", 1);
  auto second = push_once(request, target);
  REQUIRE(second.has_value());
  CHECK(second->snapshot_digest != first->snapshot_digest);
  auto latest = last_pushed_snapshot(dir / "home", "team/env");
  REQUIRE(latest.has_value());
  REQUIRE(latest->has_value());
  CHECK(snapshot::digest_of(**latest).value() == second->snapshot_digest);
  // Only the latest push's document is kept.
  std::size_t documents = 0;
  for (const auto& e : fs::directory_iterator(dir / "home/pushed/team+env"))
    documents += e.path().extension() == ".json" && e.path().filename() != "push.json";
  CHECK(documents == 1);
  CHECK_FALSE(last_pushed_snapshot(dir / "home", "Bad//Name").has_value());
}

}  // namespace envd::cli
