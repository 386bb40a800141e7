// `envd builder serve` end to end: `envd push` builds into $ENVD_HOME/builder with the embedded
// builder, the served data dir is read by skopeo (inspect, copy to an OCI layout), and the layout
// unpacks (zstd + tar, or oci-image-tool and umoci for gzip) to exactly the snapshot's files.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "support/builder_serve.hpp"
#include "support/python_prefix.hpp"
#include "support/run_command.hpp"
#include "support/scratch_dir.hpp"

namespace {

namespace fs = std::filesystem;
using envd::test::run_command;
using envd::test::ScratchDir;
using envd::test::write_file;
using json = nlohmann::json;
using envd::test::Serve;

void make_prefix(const fs::path& prefix) {
  write_file(prefix / "bin/python3", "#!/bin/sh\necho python\n");
  fs::permissions(prefix / "bin/python3", fs::perms(0755));
  fs::create_symlink("python3", prefix / "bin/python");
  write_file(prefix / "lib/python3.11/os.py", "# os\n");
  write_file(prefix / "etc/secret.cfg", "private = 1\n");
  fs::permissions(prefix / "etc/secret.cfg", fs::perms(0600));
  envd::test::write_pip_packages(prefix, "p", 5);
}

using envd::test::last_json_line;

envd::test::CommandResult tool(const std::vector<std::string>& argv) {
  auto r = run_command(argv);
  INFO(argv[0] << " " << argv[1] << ": " << r.err << r.out);
  CHECK(r.exit_code == 0);
  return r;
}

// The layer blobs of `tag` in an OCI image layout, in manifest order: (media type, blob path).
std::vector<std::pair<std::string, fs::path>> layers_of(const fs::path& layout,
                                                        const std::string& tag) {
  auto blob = [&](const std::string& digest) { return layout / "blobs/sha256" / digest.substr(7); };
  auto index = json::parse(envd::test::read_file(layout / "index.json"));
  std::string manifest_digest;
  for (const auto& m : index["manifests"])
    if (m["annotations"]["org.opencontainers.image.ref.name"] == tag) manifest_digest = m["digest"];
  REQUIRE(!manifest_digest.empty());
  auto manifest = json::parse(envd::test::read_file(blob(manifest_digest)));
  std::vector<std::pair<std::string, fs::path>> out;
  for (const auto& l : manifest["layers"]) out.emplace_back(l["mediaType"], blob(l["digest"]));
  return out;
}

// Checks that `rootfs` holds exactly the files of the snapshot in its /.envd/snapshot.json (and
// that document), with their digests, modes and symlink targets. Returns the files checked.
std::size_t check_rootfs(const fs::path& rootfs) {
  auto doc = json::parse(envd::test::read_file(rootfs / ".envd/snapshot.json"));
  std::map<std::string, json> expected;  // path relative to the rootfs -> file entry
  auto add = [&](const std::string& root, const json& files) {
    for (const auto& f : files)
      expected[fs::path(root).relative_path().string() + "/" + f["path"].get<std::string>()] = f;
  };
  for (const auto& env : doc["environments"]) {
    for (const auto& p : env["packages"]) add(env["prefix"], p["files"]);
    add(env["prefix"], env["unowned"]);
  }
  for (const auto& src : doc["sources"]) add(src["root"], src["files"]);

  std::set<std::string> found;
  for (auto it = fs::recursive_directory_iterator(rootfs); it != fs::recursive_directory_iterator();
       ++it)
    if (!it->is_directory() || it->is_symlink())
      found.insert(it->path().lexically_relative(rootfs).string());
  std::set<std::string> wanted = {".envd/snapshot.json"};
  for (const auto& [path, f] : expected) wanted.insert(path);
  auto minus = [](const std::set<std::string>& a, const std::set<std::string>& b) {
    std::string out;
    for (const auto& x : a)
      if (!b.count(x)) out += x + " ";
    return out;
  };
  CHECK(minus(found, wanted) == "");  // nothing extra
  CHECK(minus(wanted, found) == "");  // nothing missing

  std::vector<std::string> hash_argv = {"sha256sum", "--"};
  for (const auto& [path, f] : expected) {
    CAPTURE(path);
    struct stat st {};
    REQUIRE(::lstat((rootfs / path).c_str(), &st) == 0);
    if (f["type"] == "symlink") {
      CHECK(S_ISLNK(st.st_mode));
      CHECK(fs::read_symlink(rootfs / path).string() == f["target"].get<std::string>());
    } else {
      CHECK(S_ISREG(st.st_mode));
      CHECK((st.st_mode & 07777) == f["mode"].get<unsigned>());
      CHECK(static_cast<std::uint64_t>(st.st_size) == f["size"].get<std::uint64_t>());
      hash_argv.push_back((rootfs / path).string());
    }
  }
  auto sums = tool(hash_argv);
  std::istringstream in(sums.out);
  std::size_t hashed = 0;
  for (std::string line; std::getline(in, line); ++hashed) {
    std::string path = fs::path(line.substr(66)).lexically_relative(rootfs).string();
    CAPTURE(path);
    CHECK("sha256:" + line.substr(0, 64) == expected.at(path)["digest"].get<std::string>());
  }
  CHECK(hashed == hash_argv.size() - 2);
  return expected.size();
}

}  // namespace

TEST_CASE("envd builder serve: --help, and a non-loopback address without tokens is refused") {
  auto help = run_command({envd::test::envd_binary(), "builder", "serve", "--help"});
  CHECK(help.exit_code == 0);
  CHECK(help.out.find("--listen") != std::string::npos);
  CHECK(help.out.find("--data") != std::string::npos);
  CHECK(help.out.find("--config") != std::string::npos);

  ScratchDir dir;
  auto open = run_command({envd::test::envd_binary(), "builder", "serve", "--listen", "0.0.0.0:0",
                           "--data", (dir / "data").string()});
  CHECK(open.exit_code == 1);
  CHECK(open.err.find("token") != std::string::npos);
  CHECK_FALSE(fs::exists(dir / "data"));  // refused before anything was created
  auto usage = run_command({envd::test::envd_binary(), "builder", "serve", "--listen", "nowhere"});
  CHECK(usage.exit_code == 2);
}

TEST_CASE("what envd push built is served: skopeo inspects and copies it; it unpacks exactly") {
  ScratchDir dir;
  make_prefix(dir / "env");
  const std::map<std::string, std::string> env = {{"ENVD_HOME", (dir / "home").string()}};
  auto push = [&](const std::string& name, const std::string& compression) {
    auto r = run_command({envd::test::envd_binary(), "push", "--prefix", (dir / "env").string(),
                          "--no-src", "--name", name, "--compression", compression, "--json"},
                         env);
    INFO("push stderr: " << r.err);
    REQUIRE(r.exit_code == 0);
    return last_json_line(r.out);
  };
  auto zstd_push = push("team/env:v1", "zstd");
  auto gzip_push = push("team/env:gz", "gzip");

  Serve serve({"--listen", "127.0.0.1:0", "--data", (dir / "home/builder").string()}, env,
              dir / "serve.log");
  CHECK(serve.line() ==
        "envd builder listening on http://127.0.0.1:" + std::to_string(serve.port()) + " (data " +
            (dir / "home/builder").string() + ")\n");
  const std::string registry = "docker://127.0.0.1:" + std::to_string(serve.port()) + "/team/env";

  auto inspect = tool({"skopeo", "inspect", "--tls-verify=false", registry + ":v1"});
  auto inspected = json::parse(inspect.out);
  CHECK(inspected["Digest"] == zstd_push["manifest_digest"]);
  CHECK(inspected["Labels"]["dev.envd.snapshot.digest"] == zstd_push["snapshot_digest"]);

  // The envd API answers on the same port: the tag's current digest.
  auto watch = tool(
      {"curl", "-sf",
       "http://127.0.0.1:" + std::to_string(serve.port()) + "/envd/v1/team/env/tags/v1/watch"});
  CHECK(json::parse(watch.out) == json{{"digest", zstd_push["manifest_digest"]}});

  SUBCASE("zstd: the layers extracted in order hold exactly the snapshot's files") {
    tool({"skopeo", "copy", "--src-tls-verify=false", registry + ":v1",
          "oci:" + (dir / "oci").string() + ":v1"});
    fs::create_directories(dir / "rootfs");
    for (const auto& [media_type, blob] : layers_of(dir / "oci", "v1")) {
      CHECK(media_type == "application/vnd.oci.image.layer.v1.tar+zstd");
      tool({"sh", "-c", "zstd -dc \"$1\" | tar -xpf - -C \"$2\"", "sh", blob.string(),
            (dir / "rootfs").string()});
    }
    CHECK(check_rootfs(dir / "rootfs") == 19);
  }
  SUBCASE("gzip: oci-image-tool validates the layout and umoci unpacks it") {
    tool({"skopeo", "copy", "--src-tls-verify=false", registry + ":gz",
          "oci:" + (dir / "oci").string() + ":gz"});
    for (const auto& [media_type, blob] : layers_of(dir / "oci", "gz"))
      CHECK(media_type == "application/vnd.oci.image.layer.v1.tar+gzip");
    tool({"oci-image-tool", "validate", "--type", "image", "--ref", "name=gz",
          (dir / "oci").string()});
    tool({"umoci", "unpack", "--rootless", "--image", (dir / "oci").string() + ":gz",
          (dir / "bundle").string()});
    CHECK(check_rootfs(dir / "bundle/rootfs") == 19);
    auto gz = json::parse(tool({"skopeo", "inspect", "--tls-verify=false", registry + ":gz"}).out);
    CHECK(gz["Digest"] == gzip_push["manifest_digest"]);
  }
  CHECK(serve.stop() == 0);  // SIGTERM stops it cleanly
}
