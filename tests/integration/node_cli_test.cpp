// `envd node pull|run|ls|gc` end to end with the envd binary: images built by `envd push` (local
// store and `envd builder serve`), a busybox image with a whiteout pushed by skopeo into Debian's
// docker-registry, kill -9 mid-download then a resumed pull, and leases seen by ls and gc.
#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
#define CPPHTTPLIB_OPENSSL_SUPPORT  // must match how libcpp-httplib was built (class layouts)
#endif
#include <doctest/doctest.h>
#include <fcntl.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "envd/oci/image.hpp"
#include "envd/registry/distribution_fixture.hpp"
#include "support/builder_serve.hpp"
#include "support/layer_forge.hpp"
#include "support/python_prefix.hpp"
#include "support/run_command.hpp"
#include "support/scratch_dir.hpp"

namespace {

namespace fs = std::filesystem;
using envd::test::CommandResult;
using envd::test::ForgeEntry;
using envd::test::last_json_line;
using envd::test::read_file;
using envd::test::run_command;
using envd::test::ScratchDir;
using envd::test::write_file;
using json = nlohmann::json;
using Env = std::map<std::string, std::string>;

CommandResult envd(std::vector<std::string> args, const Env& env = {}) {
  args.insert(args.begin(), envd::test::envd_binary());
  return run_command(args, env);
}

// `envd ARGS...` as a child process (output to files), for kill -9 and for runs that must
// outlive a check; killed and reaped when the object goes.
class EnvdProcess {
 public:
  EnvdProcess(const std::vector<std::string>& args, const Env& env, const fs::path& log) {
    m_pid = ::fork();
    REQUIRE(m_pid >= 0);
    if (m_pid == 0) {
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int null = ::open("/dev/null", O_RDONLY);
      ::dup2(null, 0);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
      std::vector<std::string> argv = {envd::test::envd_binary()};
      argv.insert(argv.end(), args.begin(), args.end());
      std::vector<char*> raw;
      for (auto& a : argv) raw.push_back(a.data());
      raw.push_back(nullptr);
      ::execv(raw[0], raw.data());
      _exit(127);
    }
  }
  ~EnvdProcess() {
    if (m_pid > 0) {
      ::kill(m_pid, SIGKILL);
      wait();
    }
  }
  EnvdProcess(const EnvdProcess&) = delete;
  EnvdProcess& operator=(const EnvdProcess&) = delete;
  void signal(int sig) { ::kill(m_pid, sig); }
  int wait() {
    int status = 0;
    ::waitpid(m_pid, &status, 0);
    m_pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t m_pid = -1;
};

// Polls `done` until it holds or `seconds` pass.
bool eventually(const std::function<bool()>& done, int seconds = 30) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return done();
}

void make_prefix(const fs::path& prefix) {
  write_file(prefix / "bin/python3", "#!/bin/sh\necho \"python from the image, args: $*\"\n");
  fs::permissions(prefix / "bin/python3", fs::perms(0755));
  write_file(prefix / "lib/python3.11/os.py", "# os\n");
  envd::test::write_pip_packages(prefix, "p", 3);
}

// `envd push` of `prefix` as team/env:v1 into $ENVD_HOME's embedded builder; its JSON.
json push_prefix(const fs::path& prefix, const Env& env) {
  auto push = envd(
      {"push", "--prefix", prefix.string(), "--no-src", "--name", "team/env:v1", "--json"}, env);
  INFO("push stderr: " << push.err);
  REQUIRE(push.exit_code == 0);
  return last_json_line(push.out);
}

json pull_json(const std::vector<std::string>& args, const Env& env) {
  std::vector<std::string> argv = {"node", "pull"};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back("--json");
  auto r = envd(argv, env);
  INFO("node pull stderr: " << r.err);
  REQUIRE(r.exit_code == 0);
  return last_json_line(r.out);
}

TEST_CASE("envd node pull and run an image envd push built: local store and envd builder serve") {
  ScratchDir dir;
  fs::path prefix = dir / "env";
  make_prefix(prefix);
  const Env env = {{"ENVD_HOME", (dir / "home").string()}};
  auto pushed = push_prefix(prefix, env);

  auto pulled = pull_json({"team/env:v1"}, env);
  CHECK(pulled["image"] == "team/env:v1");
  CHECK(pulled["manifest_digest"] == pushed["manifest_digest"]);
  CHECK(pulled["layers"] == pushed["layers"]);
  CHECK(pulled["layers_fetched"] == pushed["layers"]);
  CHECK(pulled["bytes_fetched"].get<std::uint64_t>() > 0);
  CHECK(pulled["seconds"].get<double>() >= 0);
  fs::path rootfs = pulled["path"].get<std::string>();
  CHECK(rootfs.string().starts_with((dir / "home/node/envs").string()));
  CHECK(read_file(rootfs / prefix.relative_path() / "lib/python3.11/os.py") == "# os\n");
  CHECK(fs::exists(rootfs / ".envd/snapshot.json"));

  // The host's copy changes after the push: the run sees the image's.
  write_file(prefix / "bin/python3", "#!/bin/sh\necho python from the host\n");
  auto run =
      envd({"node", "run", "team/env:v1", "--", (prefix / "bin/python3").string(), "a", "b"}, env);
  INFO("node run stderr: " << run.err);
  CHECK(run.exit_code == 0);
  CHECK(run.out == "python from the image, args: a b\n");
  auto exit7 = envd({"node", "run", "team/env:v1", "--", "/bin/sh", "-c", "exit 7"}, env);
  CHECK(exit7.exit_code == 7);

  // Assembly recorded the image's roots beside the rootfs (what a run reads instead of the
  // snapshot). Without the record (an environment assembled by an older envd), or with a damaged
  // one, the run reads the snapshot; a damaged one is reported.
  const fs::path record = rootfs.string() + ".roots.json";
  REQUIRE(fs::exists(record));
  auto snapshot = json::parse(read_file(rootfs / ".envd/snapshot.json"));
  auto recorded = json::parse(read_file(record));
  CHECK(recorded["environments"].size() == 1);
  CHECK(recorded["environments"][0]["prefix"] == snapshot["environments"][0]["prefix"]);
  CHECK(recorded["environments"][0]["prefix"].get<std::string>().ends_with("/env"));
  const std::string record_text = read_file(record);
  for (const char* damage : {"removed", "{\"media_type\": 1}"}) {
    CAPTURE(damage);
    if (std::string_view(damage) == "removed")
      fs::remove(record);
    else
      write_file(record, damage);
    auto fallback =
        envd({"node", "run", "team/env:v1", "--", (prefix / "bin/python3").string()}, env);
    INFO("node run stderr: " << fallback.err);
    CHECK(fallback.exit_code == 0);
    CHECK(fallback.out == "python from the image, args: \n");
    CHECK((fallback.err.find("roots record unusable") != std::string::npos) ==
          (std::string_view(damage) != "removed"));
  }
  write_file(record, record_text);

  // The same image from `envd builder serve`, into another data dir.
  envd::test::Serve serve({"--listen", "127.0.0.1:0", "--data", (dir / "home/builder").string()},
                          env, dir / "serve.log");
  std::string remote = "127.0.0.1:" + std::to_string(serve.port()) + "/team/env:v1";
  auto remote_pull = pull_json({remote, "--data", (dir / "node2").string()}, env);
  CHECK(remote_pull["image"] == remote);
  CHECK(remote_pull["manifest_digest"] == pushed["manifest_digest"]);
  CHECK(remote_pull["layers_fetched"] == pushed["layers"]);
  auto remote_run = envd({"node", "run", remote, "--data", (dir / "node2").string(), "--",
                          (prefix / "bin/python3").string()},
                         env);
  INFO("remote run stderr: " << remote_run.err);
  CHECK(remote_run.exit_code == 0);
  CHECK(remote_run.out == "python from the image, args: \n");

  // Bad input: a reference that does not parse is a usage-level failure naming it; a missing
  // local image names the reference.
  auto bad = envd({"node", "pull", "Bad Ref", "--data", (dir / "node3").string()}, env);
  CHECK(bad.exit_code == 1);
  CHECK(bad.err.find("Bad Ref") != std::string::npos);
  auto missing = envd({"node", "pull", "team/none:v1", "--data", (dir / "node3").string()}, env);
  CHECK(missing.exit_code == 1);
  CHECK(missing.err.find("team/none") != std::string::npos);
  auto no_cmd = envd({"node", "run", "team/env:v1"}, env);
  CHECK(no_cmd.exit_code == 2);
}

// True for an existing directory without entries.
bool is_empty_dir(const fs::path& path) {
  return fs::is_directory(path) && fs::directory_iterator(path) == fs::directory_iterator();
}

TEST_CASE("node run shows an environment by overlay mount, seen only by envd and its commands") {
  ScratchDir dir;
  fs::permissions(dir.path(), fs::perms(0755));  // for the rootless run below
  fs::path prefix = dir / "env";
  make_prefix(prefix);
  const Env env = {{"ENVD_HOME", (dir / "home").string()}};
  REQUIRE(push_prefix(prefix, env)["layers"].get<int>() >= 2);
  write_file(prefix / "lib/python3.11/os.py", "# the host's\n");
  const std::string os_py = (prefix / "lib/python3.11/os.py").string();

  // `node run` pulls by itself (--assembly auto): the environment is an overlay of the layers,
  // nothing assembled; on the host its rootfs is an empty mount point.
  auto run = envd({"node", "run", "team/env:v1", "--", "cat", os_py}, env);
  INFO("run stderr: " << run.err);
  CHECK(run.exit_code == 0);
  CHECK(run.out == "# os\n");
  auto listed = last_json_line(envd({"node", "ls", "--json"}, env).out);
  REQUIRE(listed["images"].size() == 1);
  CHECK(listed["images"][0]["assembly"] == "overlay");
  const fs::path rootfs = listed["images"][0]["path"].get<std::string>();
  CHECK(is_empty_dir(rootfs));
  CHECK(fs::exists(rootfs.parent_path() / "overlay.json"));
  CHECK(fs::exists(rootfs.string() + ".roots.json"));  // read from the layer holding the snapshot
  auto again = pull_json({"team/env:v1", "--assembly", "auto"}, env);
  CHECK(again["assembly"] == "overlay");
  CHECK(again["layers_fetched"] == 0);

  // Relocation (isolation none) reads the files through the mount too.
  auto relocated = envd({"node", "run", "team/env:v1", "--isolation", "none", "--",
                         (prefix / "bin/python3").string(), "x"},
                        env);
  INFO("relocated run stderr: " << relocated.err);
  CHECK(relocated.exit_code == 0);
  CHECK(relocated.out == "python from the image, args: x\n");

  // Rootless: nobody's envd makes its own user namespace for the mount (bubblewrap then makes
  // one inside it), pulling from `envd builder serve` into a data dir of its own.
  envd::test::Serve serve({"--listen", "127.0.0.1:0", "--data", (dir / "home/builder").string()},
                          env, dir / "serve.log");
  const std::string remote = "127.0.0.1:" + std::to_string(serve.port()) + "/team/env:v1";
  fs::create_directories(dir / "nobody");
  REQUIRE(run_command({"chown", "nobody:nogroup", (dir / "nobody").string()}).exit_code == 0);
  auto rootless = run_command(
      {"/usr/bin/setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
       envd::test::envd_binary(), "node", "run", remote, "--", "sh", "-c", "id -u; cat " + os_py},
      {{"ENVD_HOME", (dir / "nobody").string()}});
  INFO("rootless run stderr: " << rootless.err);
  CHECK(rootless.exit_code == 0);
  CHECK(rootless.out == "65534\n# os\n");
  auto nobody_ls = last_json_line(
      envd({"node", "ls", "--json", "--data", (dir / "nobody/node").string()}, env).out);
  REQUIRE(nobody_ls["images"].size() == 1);
  CHECK(nobody_ls["images"][0]["assembly"] == "overlay");

  // `node pull` promises a path holding the files (DESIGN.md §5): it builds the tree of the
  // overlay environment, which every later run uses.
  auto tree = pull_json({"team/env:v1"}, env);
  CHECK(tree["assembly"] == "hardlink");
  CHECK(fs::path(tree["path"].get<std::string>()) == rootfs);
  CHECK(read_file(rootfs / prefix.relative_path() / "lib/python3.11/os.py") == "# os\n");
  auto tree_run = envd({"node", "run", "team/env:v1", "--", "cat", os_py}, env);
  CHECK(tree_run.out == "# os\n");
  CHECK(last_json_line(envd({"node", "ls", "--json"}, env).out)["images"][0]["assembly"] ==
        "hardlink");

  // gc evicts an overlay environment like any other.
  auto fresh = dir / "fresh";
  auto overlay_run =
      envd({"node", "run", "team/env:v1", "--data", fresh.string(), "--", "cat", os_py}, env);
  CHECK(overlay_run.out == "# os\n");
  // Where the mount fails, the run builds the tree and says so. (Here a record naming one layer
  // twice: the kernel wants two distinct ones.)
  const fs::path fresh_env = fs::directory_iterator(fresh / "envs")->path();
  auto record = json::parse(read_file(fresh_env / "overlay.json"));
  const json top = record["layers"].back();
  record["layers"] = json::array({top, top});
  write_file(fresh_env / "overlay.json", record.dump());
  auto fallback = envd({"node", "run", "team/env:v1", "--data", fresh.string(), "--", "true"}, env);
  CHECK(fallback.exit_code == 0);
  CHECK(fallback.err.find("overlay mount failed") != std::string::npos);
  CHECK(!is_empty_dir(fresh_env / "rootfs"));
  CHECK(last_json_line(envd({"node", "ls", "--json", "--data", fresh.string()}, env)
                           .out)["images"][0]["assembly"] == "hardlink");
  auto gc =
      envd({"node", "gc", "--data", fresh.string(), "--quota", "0", "--grace", "0", "--json"}, env);
  INFO("gc stderr: " << gc.err);
  REQUIRE(gc.exit_code == 0);
  CHECK(last_json_line(gc.out)["envs_removed"] == 1);
  CHECK(fs::is_empty(fresh / "envs"));
  CHECK(fs::is_empty(fresh / "layers"));

  // --assembly hardlink on the run: a tree from the start, never a mount.
  auto hard = dir / "hard";
  auto hard_run = envd({"node", "run", "team/env:v1", "--data", hard.string(), "--assembly",
                        "hardlink", "--", "cat", os_py},
                       env);
  CHECK(hard_run.out == "# os\n");
  auto hard_ls = last_json_line(envd({"node", "ls", "--json", "--data", hard.string()}, env).out);
  CHECK(hard_ls["images"][0]["assembly"] == "hardlink");
  CHECK(!fs::exists(hard / "envs" /
                    hard_ls["images"][0]["manifest_digest"].get<std::string>().substr(7) /
                    "overlay.json"));
  auto bad = envd({"node", "run", "team/env:v1", "--assembly", "overlayfs", "--", "true"}, env);
  CHECK(bad.exit_code == 2);
}

// An OCI image layout holding busybox-static as a rootfs, with a second layer that whites out
// /etc/remove-me, tagged "1".
void write_busybox_layout(const fs::path& layout) {
  using E = ForgeEntry;
  auto base = envd::test::forge_layer(
      {E::dir("bin"), E::file("bin/busybox", read_file("/bin/busybox"), 0755),
       E::symlink("bin/sh", "busybox"), E::dir("etc"), E::file("etc/hello", "hello\n"),
       E::file("etc/remove-me", "gone soon\n"), E::dir("tmp", 01777)},
      envd::test::ForgeCompression::gzip);
  auto top =
      envd::test::forge_layer({E::whiteout("etc/remove-me"), E::file("etc/added", "added\n")},
                              envd::test::ForgeCompression::gzip);
  envd::oci::ImageConfig config;
  config.os = "linux";
  config.architecture = "amd64";
  config.env = {"PATH=/bin"};
  config.working_dir = "/etc";
  config.diff_ids = {base.diff_id, top.diff_id};
  std::string config_json = envd::oci::serialize(config);
  auto desc = [](std::string_view type, const std::string& blob) {
    return envd::oci::Descriptor{std::string(type), envd::oci::sha256_of(blob), blob.size(), {}};
  };
  envd::oci::ImageManifest m{desc(envd::oci::media_type::k_config, config_json),
                             {desc(base.media_type(), base.blob), desc(top.media_type(), top.blob)},
                             {}};
  std::string manifest = envd::oci::serialize(m);
  for (const std::string* blob : {&base.blob, &top.blob, &config_json, &manifest})
    write_file(layout / "blobs/sha256" / std::string(envd::oci::sha256_of(*blob).hex()), *blob);
  write_file(layout / "oci-layout", R"({"imageLayoutVersion":"1.0.0"})");
  json index = {{"schemaVersion", 2},
                {"manifests",
                 {{{"mediaType", envd::oci::media_type::k_manifest},
                   {"digest", envd::oci::sha256_of(manifest).str()},
                   {"size", manifest.size()},
                   {"annotations", {{"org.opencontainers.image.ref.name", "1"}}}}}}};
  write_file(layout / "index.json", index.dump());
}

TEST_CASE("interop: busybox pushed by skopeo into docker-registry runs; the whiteout applies") {
  ScratchDir dir;
  write_busybox_layout(dir / "layout");
  envd::registry::test_support::Distribution registry(dir / "registry");
  std::string ref = registry.host() + "/x/busybox:1";
  auto copy = run_command({"skopeo", "copy", "--dest-tls-verify=false",
                           "oci:" + (dir / "layout").string() + ":1", "docker://" + ref});
  INFO("skopeo: " << copy.err);
  REQUIRE(copy.exit_code == 0);
  const Env env = {{"ENVD_HOME", (dir / "home").string()}};

  auto ls_root = envd({"node", "run", ref, "--", "/bin/busybox", "ls", "/"}, env);
  INFO("run stderr: " << ls_root.err);
  CHECK(ls_root.exit_code == 0);
  CHECK(ls_root.out.find("bin") != std::string::npos);
  CHECK(ls_root.out.find("etc") != std::string::npos);
  auto ls_etc = envd({"node", "run", ref, "--", "/bin/busybox", "ls", "/etc"}, env);
  CHECK(ls_etc.exit_code == 0);
  CHECK(ls_etc.out.find("hello") != std::string::npos);
  CHECK(ls_etc.out.find("added") != std::string::npos);
  CHECK(ls_etc.out.find("remove-me") == std::string::npos);
  auto cat = envd({"node", "run", ref, "--", "sh", "-c", "cat hello; exit 3"}, env);
  CHECK(cat.out == "hello\n");  // WorkingDir /etc, PATH from the image
  CHECK(cat.exit_code == 3);

  // ls shows it, not in use; a lease (a running `envd node run`) keeps gc from evicting it.
  auto listed = last_json_line(envd({"node", "ls", "--json"}, env).out);
  REQUIRE(listed["images"].size() == 1);
  const auto& image = listed["images"][0];
  CHECK(image["references"] == json::array({ref}));
  CHECK(image["in_use"] == false);
  CHECK(image["size"].get<std::uint64_t>() > 1000000);  // busybox is in it
  // Its second layer holds a whiteout, which an overlay of the layers would show as a file.
  CHECK(image["assembly"] == "hardlink");
  std::string digest = image["manifest_digest"];

  EnvdProcess sleeper({"node", "run", ref, "--", "/bin/busybox", "sleep", "60"}, env,
                      dir / "sleeper.log");
  REQUIRE(eventually([&] {
    auto l = last_json_line(envd({"node", "ls", "--json"}, env).out);
    return l["images"].size() == 1 && l["images"][0]["in_use"] == true;
  }));
  auto kept = envd({"node", "gc", "--quota", "0", "--grace", "0", "--json"}, env);
  REQUIRE(kept.exit_code == 0);
  auto kept_json = last_json_line(kept.out);
  CHECK(kept_json["images_evicted"].empty());
  CHECK(kept_json["kept_in_use"] == json::array({digest}));
  CHECK(kept_json["quota_met"] == false);
  CHECK(kept_json["quota"] == 0);
  sleeper.signal(SIGTERM);  // forwarded to the command
  CHECK(sleeper.wait() == 128 + SIGTERM);

  auto gc = envd({"node", "gc", "--quota", "1K", "--grace", "0", "--json"}, env);
  REQUIRE(gc.exit_code == 0);
  auto gc_json = last_json_line(gc.out);
  CHECK(gc_json["images_evicted"] == json::array({digest}));
  CHECK(gc_json["bytes_after"] == 0);
  CHECK(gc_json["quota_met"] == true);
  CHECK(gc_json["bytes_freed"] == gc_json["bytes_before"]);
  CHECK(last_json_line(envd({"node", "ls", "--json"}, env).out)["images"].empty());
  auto bad_quota = envd({"node", "gc", "--quota", "ten"}, env);
  CHECK(bad_quota.exit_code == 1);
  CHECK(bad_quota.err.find("ten") != std::string::npos);
}

// A one-image registry that serves its big layer slowly while `slow` is set, recording each
// Range header it receives. httplib answers Range requests from the content provider itself.
struct SlowRegistry {
  httplib::Server server;
  std::thread thread;
  int port = 0;
  std::atomic<bool> slow{true};
  std::mutex mutex;
  std::vector<std::string> ranges;
  std::map<std::string, std::string> blobs;  // digest -> bytes
  std::string manifest;
  std::string manifest_digest;

  SlowRegistry(const envd::test::ForgedLayer& layer) {
    envd::oci::ImageConfig config;
    config.os = "linux";
    config.architecture = "amd64";
    config.diff_ids = {layer.diff_id};
    std::string config_json = envd::oci::serialize(config);
    blobs[layer.digest.str()] = layer.blob;
    blobs[envd::oci::sha256_of(config_json).str()] = config_json;
    manifest = envd::oci::serialize(envd::oci::ImageManifest{
        {std::string(envd::oci::media_type::k_config),
         envd::oci::sha256_of(config_json),
         config_json.size(),
         {}},
        {{std::string(layer.media_type()), layer.digest, layer.blob.size(), {}}},
        {}});
    manifest_digest = envd::oci::sha256_of(manifest).str();
    server.Get("/v2/", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("{}", "application/json");
    });
    server.Get(R"(/v2/x/slow/manifests/(.+))",
               [this](const httplib::Request&, httplib::Response& res) {
                 res.set_header("Docker-Content-Digest", manifest_digest);
                 res.set_content(manifest, std::string(envd::oci::media_type::k_manifest));
               });
    server.Get(R"(/v2/x/slow/blobs/(sha256:[0-9a-f]{64}))", [this](const httplib::Request& req,
                                                                   httplib::Response& res) {
      auto it = blobs.find(req.matches[1]);
      if (it == blobs.end()) {
        res.status = 404;
        return;
      }
      if (req.has_header("Range")) {
        std::lock_guard lock(mutex);
        ranges.push_back(req.get_header_value("Range"));
      }
      const std::string& data = it->second;
      res.set_header("Accept-Ranges", "bytes");
      res.set_content_provider(
          data.size(), "application/octet-stream",
          [this, &data](std::size_t offset, std::size_t length, httplib::DataSink& sink) {
            // Throttled while `slow`: 16 kB per 10 ms, about 1.6 MB/s.
            std::size_t n = std::min<std::size_t>(length, slow ? 16384 : 1 << 20);
            if (slow) std::this_thread::sleep_for(std::chrono::milliseconds(10));
            return sink.write(data.data() + offset, n);
          });
    });
    port = server.bind_to_any_port("127.0.0.1");
    REQUIRE(port > 0);
    thread = std::thread([this] { server.listen_after_bind(); });
  }
  ~SlowRegistry() {
    server.stop();
    thread.join();
  }
  std::vector<std::string> seen_ranges() {
    std::lock_guard lock(mutex);
    return ranges;
  }
};

TEST_CASE("kill -9 of envd node pull mid-download: the rerun resumes with Range and completes") {
  ScratchDir dir;
  std::string payload(8 << 20, '\0');
  std::mt19937_64 rng(42);
  for (std::size_t i = 0; i < payload.size(); i += 8) {
    std::uint64_t v = rng();
    std::memcpy(payload.data() + i, &v, 8);
  }
  auto layer =
      envd::test::forge_layer({ForgeEntry::dir("data"), ForgeEntry::file("data/big", payload)},
                              envd::test::ForgeCompression::gzip);
  SlowRegistry registry(layer);
  std::string ref = "127.0.0.1:" + std::to_string(registry.port) + "/x/slow:1";
  fs::path data = dir / "node";
  fs::path partial = data / "resume" / std::string(layer.digest.hex());
  {
    EnvdProcess pull({"node", "pull", ref, "--data", data.string()}, {}, dir / "pull1.log");
    REQUIRE_MESSAGE(eventually([&] {
                      std::error_code ec;
                      auto size = fs::file_size(partial, ec);  // -1 on error
                      return !ec && size > (1u << 20);
                    }),
                    read_file(dir / "pull1.log"));
    pull.signal(SIGKILL);
    CHECK(pull.wait() == 128 + SIGKILL);
  }
  auto kept = fs::file_size(partial);
  CHECK(kept > (1u << 20));
  CHECK(kept < layer.blob.size());
  // No half environment: nothing under envs, no image recorded.
  CHECK(fs::is_empty(data / "envs"));
  auto ls = last_json_line(envd({"node", "ls", "--data", data.string(), "--json"}).out);
  CHECK(ls["images"].empty());

  registry.slow = false;
  auto pulled = pull_json({ref, "--data", data.string()}, {});
  CHECK(pulled["manifest_digest"] == registry.manifest_digest);
  CHECK(pulled["layers_fetched"] == 1);
  auto ranges = registry.seen_ranges();
  REQUIRE(ranges.size() == 1);
  CHECK(ranges[0].starts_with("bytes="));
  std::uint64_t resumed_at = std::stoull(ranges[0].substr(6));
  CHECK(resumed_at >= kept);  // the kept bytes were not fetched again
  CHECK(pulled["bytes_fetched"].get<std::uint64_t>() < layer.blob.size() - (1u << 20));
  CHECK(read_file(fs::path(pulled["path"].get<std::string>()) / "data/big") == payload);
  CHECK_FALSE(fs::exists(partial));
  CHECK(fs::is_empty(data / "staging"));
}

}  // namespace
