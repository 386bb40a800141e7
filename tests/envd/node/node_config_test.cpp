// The node config: the example parses into the documented values and agrees with
// schemas/node-config.schema.json (python3-jsonschema); every bad input is refused with the file,
// line and key; token files are read relative to the config; durations, sizes, listen addresses.
#include "envd/node/node_config.hpp"

#include <doctest/doctest.h>

#include <filesystem>

#include "envd/util/listen_address.hpp"
#include "support/run_command.hpp"
#include "support/scratch_dir.hpp"

namespace envd::node {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test::ScratchDir;

template <class R>
std::string why(const R& r) {
  return r ? std::string() : r.error().message();
}

fs::path source_root() {
  return (fs::path(__FILE__).parent_path() / "../../..").lexically_normal();
}

Result<NodeConfig> parse_yaml(std::string_view yaml, const fs::path& base = "/etc/envd") {
  return parse_node_config(yaml, "node.yaml", base);
}

const std::string k_worker =
    "workers:\n  - name: w\n    image: 127.0.0.1:5000/team/env:v1\n    command: [/bin/true]\n";

}  // namespace

TEST_CASE("node config: the example parses into the documented values") {
  auto text = test::read_file(source_root() / "schemas/examples/node-config.example.yaml");
  auto c = parse_yaml(text);
  REQUIRE_MESSAGE(c.has_value(), why(c));
  CHECK(c->data_dir == "/var/lib/envd/node");
  REQUIRE(c->registries.size() == 2);
  CHECK(c->registries[0].host == "builder.example.com:5000");
  CHECK(c->registries[0].scheme == registry::Scheme::https);
  CHECK(c->registries[0].token_file == "/etc/envd/node-token");
  CHECK(c->registries[0].token.empty());  // read by read_tokens(), not by the parser
  CHECK(c->registries[0].ca_file == "/etc/envd/tls/ca.pem");
  CHECK(c->registries[0].watch == TagWatch::automatic);
  CHECK(c->registries[1].host == "registry.example.com");
  CHECK(c->registries[1].username == "cluster");
  CHECK(c->registries[1].watch == TagWatch::poll);
  CHECK(c->cache_quota == 50ull << 30);
  CHECK(c->cache_grace == 600s);
  CHECK(c->gc_interval == 5min);
  CHECK(c->isolation == Isolation::automatic);
  CHECK(c->assembly == Assembly::automatic);
  CHECK(c->listen_host == "127.0.0.1");
  CHECK(c->listen_port == 5001);
  CHECK(c->poll_interval == 30s);
  CHECK(c->parallel_downloads == 4);
  REQUIRE(c->workers.size() == 2);
  const auto& dask = c->workers[0];
  CHECK(dask.spec.name == "dask");
  CHECK(dask.image == "builder.example.com:5000/ds/env:latest");
  CHECK(dask.command == std::vector<std::string>{"dask", "worker",
                                                 "tcp://scheduler.example.com:8786", "--nthreads",
                                                 "4"});
  CHECK(dask.spec.replicas == 2);
  CHECK(dask.spec.restart == RestartPolicy::always);
  CHECK(dask.environment ==
        std::vector<std::string>{"DASK_DISTRIBUTED__WORKER__DAEMON=False", "OMP_NUM_THREADS=1"});
  CHECK(dask.spec.stop_grace == 30s);
  CHECK(dask.spec.readiness.after == 2s);
  CHECK(dask.spec.readiness.command.size() == 3);
  CHECK(dask.spec.readiness.interval == 500ms);
  CHECK(dask.spec.readiness.timeout == 5min);
  CHECK(c->workers[1].spec.restart == RestartPolicy::on_failure);
  CHECK(c->workers[1].image.find("@sha256:4f2a7c") != std::string::npos);
}

TEST_CASE("node config: an empty file and a minimal worker get the defaults") {
  auto empty = parse_yaml("");
  REQUIRE(empty.has_value());
  CHECK(empty->data_dir.empty());
  CHECK(empty->listen_host == "127.0.0.1");
  CHECK(empty->listen_port == 5001);
  CHECK_FALSE(empty->cache_quota.has_value());
  CHECK(empty->workers.empty());
  CHECK(empty->assembly == Assembly::automatic);
  auto hardlink = parse_yaml("assembly: hardlink\n");
  REQUIRE_MESSAGE(hardlink.has_value(), why(hardlink));
  CHECK(hardlink->assembly == Assembly::hardlink);
  auto c = parse_yaml(k_worker + "data_dir: node-data\n", "/srv/cfg");
  REQUIRE_MESSAGE(c.has_value(), why(c));
  CHECK(c->data_dir == "/srv/cfg/node-data");
  const auto& w = c->workers[0];
  CHECK(w.spec.replicas == 1);
  CHECK(w.spec.restart == RestartPolicy::always);
  CHECK(w.spec.stop_grace == 10s);
  CHECK(w.spec.readiness.after == 2s);
  CHECK(w.spec.readiness.command.empty());
  CHECK(w.environment.empty());
  // References are kept canonical.
  auto bare = parse_yaml(
      "workers:\n  - {name: w, image: 'localhost:5000/a/b', command: [x], replicas: 0}\n");
  REQUIRE_MESSAGE(bare.has_value(), why(bare));
  CHECK(bare->workers[0].image == "localhost:5000/a/b");
  CHECK(bare->workers[0].spec.replicas == 0);
}

TEST_CASE("node config: every bad input names the file, line and key") {
  struct Case {
    std::string yaml;
    std::string message;
  };
  const std::string w = "workers:\n  - name: w\n    image: 127.0.0.1:5000/team/env\n";
  for (const Case& k : {
           Case{"dta_dir: /x\n", "node.yaml:1: dta_dir: unknown key"},
           Case{"- a\n- b\n", "node.yaml:1: (top level): must be a mapping"},
           Case{"data_dir: ''\n", "node.yaml:1: data_dir: must be a non-empty string"},
           Case{"data_dir: /a\ndata_dir: /b\n", "node.yaml:2: data_dir: duplicate key"},
           Case{"listen: [1, 2\n", "node.yaml:2: end of sequence flow not found"},
           Case{"isolation: docker\n", "node.yaml:1: isolation: must be auto, bwrap or none"},
           Case{"assembly: overlay\n", "node.yaml:1: assembly: must be auto or hardlink"},
           Case{"listen: localhost\n",
                "node.yaml:1: listen: listen address \"localhost\": expected HOST:PORT"},
           Case{"listen: '127.0.0.1:70000'\n",
                "node.yaml:1: listen: listen address \"127.0.0.1:70000\": port must be a number "
                "from 0 to 65535"},
           Case{"cache_quota: 10PB\n",
                "node.yaml:1: cache_quota: \"10PB\" is not a size: unknown unit \"PB\" (kB MB GB "
                "TB KiB MiB GiB TiB)"},
           Case{"cache_quota: -1\n",
                "node.yaml:1: cache_quota: \"-1\" is not a size: expected bytes or a number with "
                "a unit (kB MB GB TB KiB MiB GiB TiB)"},
           Case{"cache_quota: 99999999999TiB\n",
                "node.yaml:1: cache_quota: \"99999999999TiB\" is not a size: too large"},
           Case{"cache_quota: {a: 1}\n",
                "node.yaml:1: cache_quota: must be a size (e.g. 50GB, 20GiB)"},
           Case{"poll_interval: 10ms\n", "node.yaml:1: poll_interval: must be at least 100ms"},
           Case{"gc_interval: soon\n",
                "node.yaml:1: gc_interval: \"soon\" is not a duration (e.g. 30s, 500ms, 2m, 1h)"},
           Case{"parallel_downloads: 0\n",
                "node.yaml:1: parallel_downloads: must be an integer from 1 to 64"},
           Case{"registries: {url: x}\n", "node.yaml:1: registries: must be a list"},
           Case{"registries:\n  - url: ftp://host\n",
                "node.yaml:2: registries[0].url: must be an http:// or https:// URL"},
           Case{"registries:\n  - url: https://host/v2/\n",
                "node.yaml:2: registries[0].url: must be a registry's base URL: "
                "scheme://HOST[:PORT]"},
           Case{"registries:\n  - token_file: t\n", "node.yaml:2: registries[0].url: missing"},
           Case{"registries:\n  - url: http://a:5000\n    username: u\n",
                "node.yaml:2: registries[0].username: needs token_file (the password or token)"},
           Case{"registries:\n  - url: http://a:5000\n    watch: push\n",
                "node.yaml:3: registries[0].watch: must be auto, envd or poll"},
           Case{"registries:\n  - url: http://a:5000\n  - url: https://a:5000/\n",
                "node.yaml:3: registries[1].url: a second entry for host a:5000"},
           Case{"registries:\n  - url: http://a:5000\n    tokenfile: t\n",
                "node.yaml:3: registries[0].tokenfile: unknown key"},
           Case{"workers:\n  name: w\n", "node.yaml:2: workers: must be a list"},
           Case{"workers:\n  - image: 127.0.0.1:5000/a/b\n    command: [x]\n",
                "node.yaml:2: workers[0].name: missing"},
           Case{"workers:\n  - name: w\n    command: [x]\n",
                "node.yaml:2: workers[0].image: missing"},
           Case{w, "node.yaml:2: workers[0].command: missing"},
           Case{w + "    command: dask worker\n",
                "node.yaml:4: workers[0].command: must be a non-empty list of strings"},
           Case{w + "    command: []\n",
                "node.yaml:4: workers[0].command: must be a non-empty list of strings"},
           Case{w + "    command: [dask, '']\n",
                "node.yaml:4: workers[0].command[1]: must be a non-empty string"},
           Case{"workers:\n  - name: ../x\n",
                "node.yaml:2: workers[0].name: must be 1-63 letters, digits, '-', '_' or '.', "
                "starting with a letter or digit"},
           Case{"workers:\n  - name: w\n    image: Team/Env\n",
                "node.yaml:3: workers[0].image: invalid image reference \"Team/Env\": invalid "
                "repository name \"Team/Env\" (lowercase letters, digits and . _ - between "
                "them, '/' between components)"},
           Case{w + "    command: [x]\n    replicas: -1\n",
                "node.yaml:5: workers[0].replicas: must be an integer from 0 to 1000"},
           Case{w + "    command: [x]\n    replicas: 1001\n",
                "node.yaml:5: workers[0].replicas: must be an integer from 0 to 1000"},
           Case{w + "    command: [x]\n    replicas: two\n",
                "node.yaml:5: workers[0].replicas: must be an integer from 0 to 1000"},
           Case{w + "    command: [x]\n    restart: sometimes\n",
                "node.yaml:5: workers[0].restart: must be always, on-failure or never"},
           Case{w + "    command: [x]\n    replica: 2\n",
                "node.yaml:5: workers[0].replica: unknown key"},
           Case{w + "    command: [x]\n    environment: [A=1]\n",
                "node.yaml:5: workers[0].environment: must be a mapping"},
           Case{w + "    command: [x]\n    environment:\n      1X: a\n",
                "node.yaml:6: workers[0].environment.1X: not a variable name "
                "([A-Za-z_][A-Za-z0-9_]*)"},
           Case{w + "    command: [x]\n    environment:\n      A: [1]\n",
                "node.yaml:6: workers[0].environment.A: must be a string"},
           Case{w + "    command: [x]\n    stop_grace_period: 10 parsecs\n",
                "node.yaml:5: workers[0].stop_grace_period: \"10 parsecs\" is not a duration "
                "(e.g. 30s, 500ms, 2m, 1h)"},
           Case{w + "    command: [x]\n    readiness:\n      after: 10s\n      timeout: 5s\n",
                "node.yaml:6: workers[0].readiness.timeout: must be longer than readiness.after"},
           Case{w + "    command: [x]\n    readiness:\n      check: [x]\n",
                "node.yaml:6: workers[0].readiness.check: unknown key"},
           Case{w + "    command: [x]\n    readiness:\n      interval: 0ms\n",
                "node.yaml:6: workers[0].readiness.interval: must be more than 0"},
           Case{w + "    command: [x]\n  - name: w\n    image: 127.0.0.1:5000/a/b\n"
                    "    command: [y]\n",
                "node.yaml:5: workers[1].name: a second worker named w"},
       }) {
    CAPTURE(k.yaml);
    auto c = parse_yaml(k.yaml);
    REQUIRE_FALSE(c.has_value());
    CHECK(c.error().code() == ErrorCode::invalid_argument);
    CHECK(c.error().message() == k.message);
  }
}

TEST_CASE("node config: token files are read relative to the config file") {
  ScratchDir dir;
  test::write_file(dir / "secrets" / "node.token", "s3cret\n");
  test::write_file(dir / "node.yaml",
                   "registries:\n  - url: http://127.0.0.1:5000\n    token_file: "
                   "secrets/node.token\n  - url: https://localhost:5443\n" +
                       k_worker);
  auto before = test::tree_listing(dir.path());
  auto c = load_node_config(dir / "node.yaml");
  REQUIRE_MESSAGE(c.has_value(), why(c));
  CHECK(c->registries[0].token == "s3cret");
  CHECK(c->registries[0].scheme == registry::Scheme::http);
  CHECK(c->registries[1].host == "localhost:5443");
  CHECK(c->registries[1].scheme == registry::Scheme::https);
  CHECK(c->registries[1].token.empty());

  test::write_file(dir / "missing.yaml",
                   "registries:\n  - url: http://127.0.0.1:5000\n    token_file: nope\n");
  test::write_file(dir / "empty.token", "\n");
  test::write_file(dir / "empty.yaml",
                   "registries:\n  - url: http://127.0.0.1:5000\n    token_file: empty.token\n");
  before = test::tree_listing(dir.path());
  auto missing = load_node_config(dir / "missing.yaml");
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().code() == ErrorCode::not_found);
  CHECK(missing.error().message().starts_with((dir / "missing.yaml").string() +
                                              ":3: registries[0].token_file: "));
  CHECK(missing.error().message().find((dir / "nope").string()) != std::string::npos);
  auto empty = load_node_config(dir / "empty.yaml");
  REQUIRE_FALSE(empty.has_value());
  CHECK(empty.error().code() == ErrorCode::invalid_argument);
  CHECK(empty.error().message() ==
        (dir / "empty.yaml").string() +
            ":3: registries[0].token_file: " + (dir / "empty.token").string() + " is empty");
  auto no_file = load_node_config(dir / "absent.yaml");
  REQUIRE_FALSE(no_file.has_value());
  CHECK(no_file.error().code() == ErrorCode::not_found);
  CHECK(test::tree_listing(dir.path()) == before);  // reading a config writes nothing
}

TEST_CASE("node config: durations, sizes and listen addresses") {
  CHECK(parse_duration("30s").value() == 30s);
  CHECK(parse_duration("45").value() == 45s);
  CHECK(parse_duration("250ms").value() == 250ms);
  CHECK(parse_duration("2m").value() == 2min);
  CHECK(parse_duration("1h").value() == 1h);
  CHECK(parse_duration("0").value() == 0ms);
  for (const char* bad : {"", "s", "1.5s", "-1s", "10d", "1 s", "99999999999999h"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_duration(bad).has_value());
  }
  CHECK(parse_size("1024").value() == 1024);
  CHECK(parse_size("2kB").value() == 2000);
  CHECK(parse_size("3 MB").value() == 3'000'000);
  CHECK(parse_size("50GB").value() == 50'000'000'000ull);
  CHECK(parse_size("20GiB").value() == 20ull << 30);
  CHECK(parse_size("1TiB").value() == 1ull << 40);
  CHECK(parse_size("7B").value() == 7);
  for (const char* bad : {"", "GB", "1.5GB", "5gb", "1PB", "-3", "18446744073709551616"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_size(bad).has_value());
  }
  CHECK(parse_listen_address("0.0.0.0:9100").value() ==
        std::pair<std::string, int>("0.0.0.0", 9100));
  CHECK(parse_listen_address("[::1]:0").value() == std::pair<std::string, int>("::1", 0));
  for (const char* bad : {"9100", ":9100", "::1:9100", "[::1:9100", "host:x", "host:-1"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_listen_address(bad).has_value());
  }
  CHECK(parse_restart_policy("on-failure").value() == RestartPolicy::on_failure);
  CHECK_FALSE(parse_restart_policy("on_failure").has_value());
}

TEST_CASE("node config: the example validates against the JSON Schema, bad ones do not") {
  // Debian's python3-yaml and python3-jsonschema (not whatever python is first on PATH).
  ScratchDir dir;
  test::write_file(dir / "bad-key.yaml", k_worker + "extra: 1\n");
  test::write_file(dir / "bad-replicas.yaml",
                   "workers:\n  - {name: w, image: a/b, command: [x], replicas: -1}\n");
  test::write_file(dir / "bad-restart.yaml",
                   "workers:\n  - {name: w, image: a/b, command: [x], restart: sometimes}\n");
  test::write_file(dir / "bad-duration.yaml", "poll_interval: 10 parsecs\n");
  test::write_file(dir / "good-minimal.yaml", k_worker + "cache_quota: 20GiB\n");
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
                         (source_root() / "schemas/node-config.schema.json").string(),
                         (source_root() / "schemas/examples/node-config.example.yaml").string(),
                         (dir / "good-minimal.yaml").string(), (dir / "bad-key.yaml").string(),
                         (dir / "bad-replicas.yaml").string(), (dir / "bad-restart.yaml").string(),
                         (dir / "bad-duration.yaml").string()});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out == "valid\nvalid\ninvalid\ninvalid\ninvalid\ninvalid\n");
  CHECK(parse_yaml(test::read_file(dir / "good-minimal.yaml")).has_value());
  for (const char* bad :
       {"bad-key.yaml", "bad-replicas.yaml", "bad-restart.yaml", "bad-duration.yaml"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_yaml(test::read_file(dir / bad)).has_value());
  }
}

}  // namespace envd::node
