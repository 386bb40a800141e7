// The builder config: the example parses, errors name file, line and key, token files are hashed,
// and the example agrees with schemas/builder-config.schema.json (checked with python3-jsonschema).
#include "builder/builder_config.hpp"

#include <doctest/doctest.h>

#include <filesystem>

#include "support/run_command.hpp"
#include "support/scratch_dir.hpp"

namespace envd::builder {
namespace {

namespace fs = std::filesystem;
using test::ScratchDir;

template <class R>
std::string why(const R& r) {
  return r ? std::string() : r.error().message();
}

fs::path source_root() {
  return (fs::path(__FILE__).parent_path() / "../..").lexically_normal();
}

Result<BuilderConfig> parse_yaml(std::string_view yaml, const fs::path& base = "/etc/envd") {
  return parse_builder_config(yaml, "cfg.yaml", base);
}

}  // namespace

TEST_CASE("builder config: the example parses into the documented values") {
  auto c = load_builder_config(source_root() / "schemas/examples/builder-config.example.yaml");
  REQUIRE_MESSAGE(c.has_value(), why(c));
  CHECK(c->listen_host == "0.0.0.0");
  CHECK(c->listen_port == 5000);
  CHECK(c->data_dir == "/var/lib/envd/builder");
  REQUIRE(c->auth.tokens.size() == 3);
  CHECK(c->auth.tokens[1].name == "data-science-team");
  CHECK(c->auth.tokens[1].namespaces == std::vector<std::string>{"ds", "shared/envs"});
  CHECK(c->auth.tokens[1].access == Access::push);
  CHECK(c->auth.tokens[2].access == Access::pull);
  REQUIRE(c->tls.has_value());
  CHECK(c->tls->key == "/etc/envd/tls/builder.key");
  CHECK(c->limits.manifest_bytes == 4194304);
  CHECK(c->limits.concurrent_builds == 4);
  CHECK(c->compression == Compression::zstd);
  CHECK(c->layer_cap == 64);
  REQUIRE(c->mirrors.size() == 1);
  CHECK(c->mirrors[0].prefix == "envd");
  auto empty = parse_yaml("");
  REQUIRE(empty.has_value());
  CHECK(empty->listen_host == "127.0.0.1");
  CHECK(empty->limits.manifest_bytes == 4ULL << 20);
}

TEST_CASE("builder config: errors name the file, line and key") {
  struct Case {
    std::string yaml;
    std::string message;
  };
  for (const Case& k : {
           Case{"listen: 127.0.0.1:5000\nlimits:\n  blob_bytes: -5\n",
                "cfg.yaml:3: limits.blob_bytes: must be a positive integer"},
           Case{"limitz: {}\n", "cfg.yaml:1: limitz: unknown key"},
           Case{"listen: localhost\n",
                "cfg.yaml:1: listen: listen address \"localhost\": expected HOST:PORT"},
           Case{"compression: lz4\n", "cfg.yaml:1: compression: must be zstd or gzip"},
           Case{"tokens:\n  - name: a\n    namespaces: [x]\n",
                "cfg.yaml:2: tokens[0]: needs exactly one of sha256 and token_file"},
           Case{"tokens:\n  - name: a\n    sha256: ABC\n    namespaces: [x]\n",
                "cfg.yaml:3: tokens[0].sha256: must be 64 lowercase hex digits (sha256 of the "
                "token)"},
           Case{"tokens:\n  - name: a\n    sha256: " + std::string(64, '0') +
                    "\n    namespaces: [Bad]\n",
                "cfg.yaml:4: tokens[0].namespaces: \"Bad\" is neither \"*\" nor a repository "
                "prefix"},
           Case{"limits: [1, 2\n", "cfg.yaml:2: end of sequence flow not found"},
       }) {
    CAPTURE(k.yaml);
    auto c = parse_yaml(k.yaml);
    REQUIRE_FALSE(c.has_value());
    CHECK(c.error().code() == ErrorCode::invalid_argument);
    CHECK(c.error().message() == k.message);
  }
}

TEST_CASE("builder config: token files are read relative to the config and only their hash kept") {
  ScratchDir dir;
  test::write_file(dir / "secrets" / "ci.token", "s3cret\n");
  auto c = parse_yaml(
      "tokens:\n  - name: ci\n    token_file: secrets/ci.token\n    namespaces: ['*']\n"
      "    access: push\nlisten: '[::1]:0'\n",
      dir.path());
  REQUIRE_MESSAGE(c.has_value(), why(c));
  CHECK(c->auth.tokens[0].sha256_hex == token_hash("s3cret"));
  CHECK(c->listen_host == "::1");
  auto missing = parse_yaml("tokens:\n  - name: ci\n    token_file: nope\n    namespaces: ['*']\n",
                            dir.path());
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().code() == ErrorCode::not_found);
}

TEST_CASE("builder config: the example validates against the JSON Schema, a bad one does not") {
  // Debian's python3-yaml and python3-jsonschema (not whatever python is first on PATH).
  ScratchDir dir;
  test::write_file(dir / "bad.yaml", "limits:\n  blob_bytes: 0\nextra: 1\n");
  auto r =
      test::run_command({"/usr/bin/python3", "-c", R"PY(
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema)
for p in sys.argv[2:]:
    errors = list(v.iter_errors(yaml.safe_load(open(p))))
    print("valid" if not errors else "invalid")
)PY",
                         (source_root() / "schemas/builder-config.schema.json").string(),
                         (source_root() / "schemas/examples/builder-config.example.yaml").string(),
                         (dir / "bad.yaml").string()});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out == "valid\ninvalid\n");
  CHECK_FALSE(parse_yaml(test::read_file(dir / "bad.yaml")).has_value());
}
}  // namespace envd::builder
