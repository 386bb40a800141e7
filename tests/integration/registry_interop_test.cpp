// Interop with real peers: skopeo pushes an OCI layout into the builder's registry (with a token
// as Basic credentials), inspects and pulls it back; images copy to Debian's docker-registry
// (distribution) and back with equal digests.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <thread>

#include "../builder/registry_fixture.hpp"
#include "../envd/registry/distribution_fixture.hpp"
#include "builder/auth.hpp"
#include "support/run_command.hpp"

namespace envd::builder {
namespace {

namespace fs = std::filesystem;
using namespace envd::builder::registry_test;

using envd::registry::test_support::Child;
using envd::registry::test_support::free_port;

test::CommandResult skopeo(std::vector<std::string> args) {
  args.insert(args.begin(), "skopeo");
  auto r = test::run_command(args);
  INFO("skopeo " << args[1] << ": " << r.err);
  CHECK(r.exit_code == 0);
  return r;
}

// An OCI image layout with one gzip layer (a few files), tagged v1. Returns the manifest digest.
std::string write_oci_layout(const fs::path& dir, const fs::path& work) {
  test::write_file(work / "rootfs" / "etc" / "hello.txt", "hello from envd\n");
  test::write_file(work / "rootfs" / "bin" / "run.sh", "#!/bin/sh\necho run\n");
  auto tar =
      test::run_command({"tar", "--format=ustar", "--owner=0", "--group=0", "--mtime=@0", "-cf",
                         (work / "layer.tar").string(), "-C", (work / "rootfs").string(), "."});
  REQUIRE(tar.exit_code == 0);
  REQUIRE(test::run_command({"gzip", "-n", "-k", (work / "layer.tar").string()}).exit_code == 0);
  std::string layer_tar = test::read_file(work / "layer.tar");
  std::string layer_gz = test::read_file(work / "layer.tar.gz");
  oci::ImageConfig config;
  config.architecture = "amd64";
  config.os = "linux";
  config.cmd = {"/bin/sh", "/bin/run.sh"};
  config.diff_ids = {oci::sha256_of(layer_tar)};
  std::string config_json = oci::serialize(config);
  oci::ImageManifest m{descriptor(oci::media_type::k_config, config_json),
                       {descriptor(oci::media_type::k_layer_gzip, layer_gz)},
                       {}};
  std::string manifest = oci::serialize(m);
  for (const std::string* blob : {&layer_gz, &config_json, &manifest})
    test::write_file(dir / "blobs" / "sha256" / std::string(oci::sha256_of(*blob).hex()), *blob);
  test::write_file(dir / "oci-layout", R"({"imageLayoutVersion":"1.0.0"})");
  nlohmann::json index = {{"schemaVersion", 2},
                          {"manifests",
                           {{{"mediaType", oci::media_type::k_manifest},
                             {"digest", digest_of(manifest)},
                             {"size", manifest.size()},
                             {"annotations", {{"org.opencontainers.image.ref.name", "v1"}}}}}}};
  test::write_file(dir / "index.json", index.dump());
  return digest_of(manifest);
}

std::map<std::string, std::string> blobs_of_layout(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::directory_iterator(dir / "blobs" / "sha256"))
    out[e.path().filename().string()] = test::read_file(e.path());
  return out;
}

}  // namespace

TEST_CASE("skopeo pushes into the registry with a token, inspects and pulls it back") {
  ServerOptions o;
  o.auth.tokens = {{"ci", token_hash("ci-token"), {"test"}, Access::push}};
  Registry reg(o);
  ScratchDir work;
  std::string digest = write_oci_layout(work / "src", work / "build");
  std::string ref = "docker://" + reg.url() + "/test/img:v1";
  skopeo({"copy", "--dest-tls-verify=false", "--dest-creds", "ci:ci-token",
          "oci:" + (work / "src").string() + ":v1", ref});
  auto resolved = reg.index->resolve("test/img", "v1");
  REQUIRE(resolved.has_value());
  REQUIRE(resolved->has_value());
  CHECK((*resolved)->digest.str() == digest);  // pushed unchanged: same manifest bytes

  auto inspect = skopeo({"inspect", "--tls-verify=false", "--creds", "ci:ci-token", ref});
  auto j = nlohmann::json::parse(inspect.out, nullptr, false);
  REQUIRE_FALSE(j.is_discarded());
  CHECK(j["Digest"] == digest);
  CHECK(j["Layers"].size() == 1);

  skopeo({"copy", "--src-tls-verify=false", "--src-creds", "ci:ci-token", ref,
          "oci:" + (work / "dst").string() + ":v1"});
  CHECK(blobs_of_layout(work / "dst") == blobs_of_layout(work / "src"));

  // Without credentials skopeo is turned away.
  auto anon = test::run_command({"skopeo", "inspect", "--tls-verify=false", ref});
  CHECK(anon.exit_code != 0);
}

TEST_CASE("images copy from our registry to distribution and back with equal digests") {
  Registry reg;
  ScratchDir work;
  std::string digest = write_oci_layout(work / "src", work / "build");
  skopeo({"copy", "--dest-tls-verify=false", "oci:" + (work / "src").string() + ":v1",
          "docker://" + reg.url() + "/test/img:v1"});

  int port = free_port();
  std::string addr = "127.0.0.1:" + std::to_string(port);
  test::write_file(work / "distribution.yml",
                   "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
                   "    rootdirectory: " +
                       (work / "distribution").string() + "\nhttp:\n  addr: " + addr + "\n");
  Child distribution({"/usr/bin/docker-registry", "serve", (work / "distribution.yml").string()},
                     work / "distribution.log");
  httplib::Client probe("127.0.0.1", port);
  probe.set_connection_timeout(0, 200000);
  bool ready = false;
  for (int attempt = 0; attempt < 100 && !ready; ++attempt) {
    auto r = probe.Get("/v2/");
    ready = r && r->status == 200;
    if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(50));  // polling, bounded
  }
  REQUIRE_MESSAGE(ready, test::read_file(work / "distribution.log"));

  skopeo({"copy", "--src-tls-verify=false", "--dest-tls-verify=false",
          "docker://" + reg.url() + "/test/img:v1", "docker://" + addr + "/mirror/img:v1"});
  auto theirs = skopeo({"inspect", "--tls-verify=false", "docker://" + addr + "/mirror/img:v1"});
  CHECK(nlohmann::json::parse(theirs.out)["Digest"] == digest);

  skopeo({"copy", "--src-tls-verify=false", "--dest-tls-verify=false",
          "docker://" + addr + "/mirror/img:v1", "docker://" + reg.url() + "/test/back:v2"});
  auto back = reg.index->resolve("test/back", "v2");
  REQUIRE(back.has_value());
  REQUIRE(back->has_value());
  CHECK((*back)->digest.str() == digest);
}
}  // namespace envd::builder
