// `envd builder mirror` end to end: envd push (embedded builder) into a scratch ENVD_HOME, mirror
// to Debian's docker-registry, then skopeo sees the same manifest digest there; a second mirror
// copies nothing; bad references exit 2-style usage errors (1 with a message naming them).
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "../envd/registry/distribution_fixture.hpp"
#include "support/builder_serve.hpp"
#include "support/python_prefix.hpp"
#include "support/run_command.hpp"
#include "support/scratch_dir.hpp"

namespace {

namespace fs = std::filesystem;
using envd::test::run_command;
using envd::test::ScratchDir;
using envd::test::write_file;
using nlohmann::json;

// A small Python-like prefix: an interpreter stub and a few packages with dist-info.
void make_prefix(const fs::path& prefix) {
  write_file(prefix / "bin/python3", "#!/bin/sh\necho python\n");
  fs::permissions(prefix / "bin/python3", fs::perms(0755));
  write_file(prefix / "lib/python3.11/os.py", "# os\n");
  envd::test::write_pip_packages(prefix, "m", 3);
}

using envd::test::last_json_line;

}  // namespace

TEST_CASE("envd builder mirror copies a pushed image to docker-registry; skopeo agrees") {
  ScratchDir dir;
  make_prefix(dir / "env");
  const std::map<std::string, std::string> env = {{"ENVD_HOME", (dir / "home").string()}};
  auto push = run_command({envd::test::envd_binary(), "push", "--prefix", (dir / "env").string(),
                           "--no-src", "--name", "team/env:v1", "--json"},
                          env);
  INFO("push stderr: " << push.err);
  REQUIRE(push.exit_code == 0);
  std::string digest = last_json_line(push.out)["manifest_digest"];

  envd::registry::test_support::Distribution dist(dir / "dist");
  std::string dest = dist.host() + "/mirror/env:v1";
  auto mirror =
      run_command({envd::test::envd_binary(), "builder", "mirror", "team/env:v1", dest}, env);
  INFO("mirror stderr: " << mirror.err);
  REQUIRE(mirror.exit_code == 0);
  CHECK(mirror.out.starts_with("mirrored team/env:v1 to " + dest + "@" + digest + ": "));
  CHECK(mirror.out.find(" 0 already there") != std::string::npos);

  auto inspect = run_command({"skopeo", "inspect", "--tls-verify=false", "docker://" + dest});
  INFO("skopeo stderr: " << inspect.err);
  REQUIRE(inspect.exit_code == 0);
  CHECK(json::parse(inspect.out)["Digest"] == digest);

  // Again, to another tag, with --data and --json: every blob is already there.
  auto again = run_command({envd::test::envd_binary(), "builder", "mirror", "team/env:v1",
                            dist.host() + "/mirror/env:v2", "--data",
                            (dir / "home" / "builder").string(), "--json"});
  INFO("mirror stderr: " << again.err);
  REQUIRE(again.exit_code == 0);
  json summary = last_json_line(again.out);
  CHECK(summary["manifest_digest"] == digest);
  CHECK(summary["blobs_copied"] == 0);
  CHECK(summary["blobs_skipped"].get<int>() > 0);
  auto v2 = run_command(
      {"skopeo", "inspect", "--tls-verify=false", "docker://" + dist.host() + "/mirror/env:v2"});
  REQUIRE(v2.exit_code == 0);
  CHECK(json::parse(v2.out)["Digest"] == digest);
}

TEST_CASE("envd builder mirror refuses bad references and unknown images, naming them") {
  ScratchDir dir;
  const std::map<std::string, std::string> env = {{"ENVD_HOME", (dir / "home").string()}};
  auto bin = envd::test::envd_binary();
  auto remote_source =
      run_command({bin, "builder", "mirror", "127.0.0.1:1/a/b:v1", "127.0.0.1:1/c/d"}, env);
  CHECK(remote_source.exit_code == 1);
  CHECK(remote_source.err.find("127.0.0.1:1/a/b:v1") != std::string::npos);
  auto local_dest = run_command({bin, "builder", "mirror", "team/env:v1", "team/other:v1"}, env);
  CHECK(local_dest.exit_code == 1);
  CHECK(local_dest.err.find("team/other:v1") != std::string::npos);
  auto bad = run_command({bin, "builder", "mirror", "Team/env", "127.0.0.1:1/c/d"}, env);
  CHECK(bad.exit_code == 1);
  CHECK(bad.err.find("\"Team/env\"") != std::string::npos);
  auto no_store = run_command({bin, "builder", "mirror", "team/none:v1", "127.0.0.1:1/c/d"}, env);
  CHECK(no_store.exit_code == 1);
  CHECK(no_store.err.find((dir / "home" / "builder").string()) != std::string::npos);
  CHECK_FALSE(fs::exists(dir / "home"));  // nothing created by a command that only reads
  fs::create_directories(dir / "home" / "builder");
  auto unknown = run_command({bin, "builder", "mirror", "team/none:v1", "127.0.0.1:1/c/d"}, env);
  CHECK(unknown.exit_code == 1);
  CHECK(unknown.err.find("team/none:v1") != std::string::npos);
  auto usage = run_command({bin, "builder", "mirror", "team/env:v1"}, env);
  CHECK(usage.exit_code == 2);
}

TEST_CASE("envd builder serve mirrors every moved tag to the registries of its config") {
  ScratchDir dir;
  make_prefix(dir / "env");
  const std::map<std::string, std::string> env = {{"ENVD_HOME", (dir / "home").string()}};
  auto push = run_command({envd::test::envd_binary(), "push", "--prefix", (dir / "env").string(),
                           "--no-src", "--name", "team/env:v1", "--json"},
                          env);
  INFO("push stderr: " << push.err);
  REQUIRE(push.exit_code == 0);
  std::string digest = last_json_line(push.out)["manifest_digest"];

  envd::registry::test_support::Distribution dist(dir / "dist");
  write_file(dir / "builder.yaml",
             "mirrors:\n  - url: http://" + dist.host() + "\n    prefix: copies\n");
  envd::test::Serve serve({"--listen", "127.0.0.1:0", "--data", (dir / "home/builder").string(),
                           "--config", (dir / "builder.yaml").string()},
                          env, dir / "serve.log");
  // An OCI client moves a tag (skopeo copies the image to a new name at the builder): the
  // builder mirrors that repository's tags without being asked.
  std::string builder = "127.0.0.1:" + std::to_string(serve.port());
  auto copy = run_command({"skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                           "docker://" + builder + "/team/env:v1",
                           "docker://" + builder + "/team/copy:v2"});
  INFO("skopeo stderr: " << copy.err);
  REQUIRE(copy.exit_code == 0);

  const std::string mirrored = "docker://" + dist.host() + "/copies/team/copy:v2";
  envd::test::CommandResult inspect;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  do {
    inspect = run_command({"skopeo", "inspect", "--tls-verify=false", mirrored});
  } while (inspect.exit_code != 0 && std::chrono::steady_clock::now() < deadline);
  INFO("serve log: " << envd::test::read_file(dir / "serve.log"));
  REQUIRE(inspect.exit_code == 0);
  CHECK(json::parse(inspect.out)["Digest"] == digest);
  CHECK(serve.stop() == 0);
}

TEST_CASE("envd builder serve refuses a mirror URL it cannot use, naming the key") {
  ScratchDir dir;
  write_file(dir / "builder.yaml", "mirrors:\n  - url: not-a-url\n");
  auto serve =
      run_command({envd::test::envd_binary(), "builder", "serve", "--listen", "127.0.0.1:0",
                   "--data", (dir / "data").string(), "--config", (dir / "builder.yaml").string()});
  CHECK(serve.exit_code == 1);
  CHECK(serve.err.find("mirrors[0].url") != std::string::npos);
  CHECK_FALSE(fs::exists(dir / "data"));
}
