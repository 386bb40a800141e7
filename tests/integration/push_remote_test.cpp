// `envd push` to a real `envd builder serve` child on loopback: skopeo pulls the image; a push
// with no change uploads nothing; one added package uploads about its bytes and changes one layer
// plus the metadata layer; a push killed mid-upload resumes with only what is missing; config
// errors, an unreachable builder and refused tokens exit 1 saying what to fix.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>

#include "support/builder_serve.hpp"
#include "support/python_prefix.hpp"
#include "support/run_command.hpp"
#include "support/scratch_dir.hpp"

namespace {

namespace fs = std::filesystem;
using envd::test::last_json_line;
using envd::test::run_command;
using envd::test::ScratchDir;
using envd::test::write_file;
using json = nlohmann::json;
using Env = std::map<std::string, std::string>;

// `envd builder serve --listen 127.0.0.1:0 ARGS` as a child, stopped by the destructor.
class Serve : public envd::test::Serve {
 public:
  Serve(std::vector<std::string> args, const fs::path& log)
      : envd::test::Serve(with_free_port(std::move(args)), {}, log) {}

 private:
  static std::vector<std::string> with_free_port(std::vector<std::string> args) {
    args.insert(args.begin(), {"--listen", "127.0.0.1:0"});
    return args;
  }
};

// A small Python prefix as pip lays it out: interpreter stub, stdlib file, packages p0..p4.
void make_prefix(const fs::path& prefix) {
  write_file(prefix / "bin/python3", "#!/bin/sh\necho python\n");
  fs::permissions(prefix / "bin/python3", fs::perms(0755));
  write_file(prefix / "lib/python3.11/os.py", "# os\n");
  envd::test::write_pip_packages(prefix, "p", 5);
}

std::string random_bytes(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string out(n, '\0');
  for (std::size_t i = 0; i < n; i += 8) {
    std::uint64_t v = rng();
    for (std::size_t k = 0; k < 8 && i + k < n; ++k) out[i + k] = static_cast<char>(v >> (8 * k));
  }
  return out;
}

// Adds pip package NAME 1.0 with `files` module files of `bytes` random bytes each, RECORD
// naming them all. Returns the package's total size (every file of it).
std::uint64_t add_package(const fs::path& prefix, const std::string& name, int files,
                          std::size_t bytes, std::uint64_t seed) {
  const fs::path site = prefix / "lib/python3.11/site-packages";
  const std::string info = name + "-1.0.dist-info";
  std::string record;
  std::uint64_t total = 0;
  auto put = [&](const std::string& rel, const std::string& content) {
    write_file(site / rel, content);
    total += content.size();
    record += rel + ",,\n";
  };
  for (int i = 0; i < files; ++i)
    put(name + "/data" + std::to_string(i) + ".bin", random_bytes(bytes, seed + i));
  put(name + "/__init__.py", "NAME = '" + name + "'\n");
  put(info + "/METADATA", "Metadata-Version: 2.1\nName: " + name + "\nVersion: 1.0\n\n");
  put(info + "/INSTALLER", "pip\n");
  record += info + "/RECORD,,\n";
  write_file(site / info / "RECORD", record);
  return total + record.size();
}

struct Fixture {
  ScratchDir dir;
  Env env;

  Fixture() {
    write_file(dir / "config.yaml", "# empty\n");
    env = {{"ENVD_HOME", (dir / "home").string()}, {"ENVD_CONFIG", (dir / "config.yaml").string()}};
  }
  envd::test::CommandResult push(const std::vector<std::string>& extra, const Env& more = {}) {
    std::vector<std::string> argv = {envd::test::envd_binary(), "push",     "--prefix",
                                     (dir / "env").string(),    "--no-src", "--json"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    Env e = env;
    for (const auto& [k, v] : more) e[k] = v;
    return run_command(argv, e);
  }
  json push_ok(const std::vector<std::string>& extra, const Env& more = {}) {
    auto r = push(extra, more);
    INFO("push stderr: " << r.err << "\nstdout: " << r.out);
    REQUIRE(r.exit_code == 0);
    return last_json_line(r.out);
  }
};

envd::test::CommandResult tool(const std::vector<std::string>& argv) {
  auto r = run_command(argv);
  INFO(argv[0] << " " << argv[1] << ": " << r.err << r.out);
  CHECK(r.exit_code == 0);
  return r;
}

// The layer digests of the manifest a tag names, as skopeo reads it.
std::vector<std::string> layers_of(const Serve& serve, const std::string& ref) {
  auto raw = tool(
      {"skopeo", "inspect", "--raw", "--tls-verify=false", "docker://" + serve.host() + "/" + ref});
  const json manifest = json::parse(raw.out);
  std::vector<std::string> out;
  for (const auto& l : manifest["layers"]) out.push_back(l["digest"]);
  REQUIRE(!out.empty());
  return out;
}

std::size_t count_files(const fs::path& dir) {
  std::error_code ec;
  std::size_t n = 0;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator();
       it.increment(ec))
    ++n;
  return n;
}

}  // namespace

TEST_CASE("push to a builder: skopeo pulls it; again with no change uploads nothing") {
  Fixture f;
  make_prefix(f.dir / "env");
  Serve serve({"--data", (f.dir / "builder").string()}, f.dir / "serve.log");

  auto first = f.push_ok({"--name", "team/env:v1", "--builder", serve.url()});
  const std::string digest = first["manifest_digest"];
  CHECK(first["image"] == serve.host() + "/team/env@" + digest);
  CHECK(first["tag"] == "v1");
  CHECK(first["builder"] == serve.url());
  CHECK(first["layers"].get<int>() >= 2);
  CHECK(first["bytes_uploaded"].get<std::uint64_t>() > 0);
  CHECK(first["blobs_uploaded"].get<int>() > 0);
  CHECK(first["unchanged"] == false);
  for (const char* key : {"seconds", "snapshot_seconds", "upload_seconds", "build_seconds"})
    CHECK(first[key].is_number());

  const std::string ref = "docker://" + serve.host() + "/team/env:v1";
  auto inspected = json::parse(tool({"skopeo", "inspect", "--tls-verify=false", ref}).out);
  CHECK(inspected["Digest"] == digest);
  CHECK(inspected["Labels"]["dev.envd.snapshot.digest"] == first["snapshot_digest"]);
  tool(
      {"skopeo", "copy", "--src-tls-verify=false", ref, "oci:" + (f.dir / "oci").string() + ":v1"});
  auto index = json::parse(envd::test::read_file(f.dir / "oci/index.json"));
  CHECK(index["manifests"][0]["digest"] == digest);
  for (const auto& layer : layers_of(serve, "team/env:v1"))
    CHECK(fs::exists(f.dir / "oci/blobs/sha256" / layer.substr(7)));

  // No change: nothing sent at all, the same image; also with the builder from ENVD_BUILDER.
  auto again = f.push_ok({"--name", "team/env:v1"}, {{"ENVD_BUILDER", serve.url()}});
  CHECK(again["bytes_uploaded"] == 0);
  CHECK(again["blobs_uploaded"] == 0);
  CHECK(again["manifest_digest"] == digest);
  CHECK(again["unchanged"] == true);
  CHECK(again["layers"] == first["layers"]);

  // The push was recorded for `envd diff`.
  const fs::path record_dir = f.dir / "home/pushed/team+env";
  auto record = json::parse(envd::test::read_file(record_dir / "push.json"));
  CHECK(record["manifest_digest"] == digest);
  CHECK(record["builder"] == serve.url());
  const std::string hex = first["snapshot_digest"].get<std::string>().substr(7);
  CHECK(json::parse(envd::test::read_file(record_dir / (hex + ".json")))["media_type"] ==
        "application/vnd.envd.snapshot.v1+json");
  CHECK(fs::exists(record_dir / (hex + ".blobs")));

  // Human output on a non-terminal: step lines on stderr, a summary on stdout.
  auto human = run_command({envd::test::envd_binary(), "push", "--prefix", (f.dir / "env").string(),
                            "--no-src", "--name", "team/env:v1", "--builder", serve.url()},
                           f.env);
  CHECK(human.exit_code == 0);
  CHECK(human.err.find("envd push: snapshot: ") != std::string::npos);
  CHECK(human.out.find("pushed team/env:v1\n  image " + serve.host() + "/team/env@" + digest) == 0);
  CHECK(human.out.find("nothing uploaded or built") != std::string::npos);
}

TEST_CASE("one added package: uploads about its bytes; one layer plus the metadata layer change") {
  Fixture f;
  make_prefix(f.dir / "env");
  for (int i = 0; i < 3; ++i)
    add_package(f.dir / "env", "lib" + std::to_string(i), 4, 50000, i * 100);
  Serve serve({"--data", (f.dir / "builder").string()}, f.dir / "serve.log");
  auto before = f.push_ok({"--name", "team/env", "--builder", serve.url()});
  auto old_layers = layers_of(serve, "team/env:latest");

  std::uint64_t package = add_package(f.dir / "env", "newpkg", 4, 25000, 999);
  auto after = f.push_ok({"--name", "team/env", "--builder", serve.url()});
  CHECK(after["manifest_digest"] != before["manifest_digest"]);
  auto uploaded = after["bytes_uploaded"].get<std::uint64_t>();
  auto document = after["snapshot_bytes"].get<std::uint64_t>();
  INFO("package " << package << " B, uploaded " << uploaded << " B, snapshot " << document);
  CHECK(document > 0);
  // The snapshot went as a patch against the last push: the added package's entries, not the
  // whole document.
  const std::string hex = after["snapshot_digest"].get<std::string>().substr(7);
  CHECK(document < fs::file_size(f.dir / "home/pushed/team+env" / (hex + ".json")) / 2);
  CHECK(uploaded >= package);
  CHECK(static_cast<double>(uploaded) <= 1.5 * static_cast<double>(package) + document);
  // 4 data files, __init__.py, METADATA, RECORD; INSTALLER ("pip") is on the builder already.
  CHECK(after["blobs_uploaded"] == 7);

  auto new_layers = layers_of(serve, "team/env:latest");
  std::set<std::string> old_set(old_layers.begin(), old_layers.end());
  std::set<std::string> new_set(new_layers.begin(), new_layers.end());
  std::vector<std::string> added, removed;
  for (const auto& l : new_set)
    if (!old_set.count(l)) added.push_back(l);
  for (const auto& l : old_set)
    if (!new_set.count(l)) removed.push_back(l);
  INFO("old layers: " << json(old_layers).dump() << "\nnew layers: " << json(new_layers).dump());
  // The package's layer (its group's, new or changed) and the snapshot document's layer (last).
  CHECK(added.size() == 2);
  CHECK(std::find(added.begin(), added.end(), new_layers.back()) != added.end());
  CHECK(removed.size() <= 2);
  CHECK(removed.size() + (new_layers.size() - old_layers.size()) == 2);
  CHECK(std::find(removed.begin(), removed.end(), old_layers.back()) != removed.end());
}

TEST_CASE("a builder that lost blobs the last push left there: they are sent again") {
  Fixture f;
  make_prefix(f.dir / "env");
  auto serve = std::make_unique<Serve>(
      std::vector<std::string>{"--data", (f.dir / "builder").string()}, f.dir / "serve.log");
  f.push_ok({"--name", "team/env", "--builder", serve->url()});
  // The record says the builder holds os.py's content; it lost it while it was down.
  auto sum = tool({"sha256sum", (f.dir / "env/lib/python3.11/os.py").string()});
  const fs::path lost = f.dir / "builder/blobs/sha256" / sum.out.substr(0, 64);
  REQUIRE(fs::exists(lost));
  const int port = serve->port();
  serve.reset();
  fs::remove(lost);
  // The same URL, so that the push record counts it as the same builder.
  envd::test::Serve again(
      {"--data", (f.dir / "builder").string(), "--listen", "127.0.0.1:" + std::to_string(port)}, {},
      f.dir / "serve2.log");
  envd::test::write_pip_packages(f.dir / "env", "q", 1);  // a change: no shortcut
  auto after = f.push_ok({"--name", "team/env", "--builder", again.url()});
  CHECK(fs::exists(lost));
  // q0's METADATA and RECORD (its __init__.py is p0's), then os.py after the builder's 409.
  CHECK(after["blobs_uploaded"] == 3);
  // Sent as a patch twice (before and after the 409), each far smaller than the document.
  const std::string hex = after["snapshot_digest"].get<std::string>().substr(7);
  auto document = fs::file_size(f.dir / "home/pushed/team+env" / (hex + ".json"));
  auto sent = after["snapshot_bytes"].get<std::uint64_t>();
  CHECK(sent % 2 == 0);
  CHECK(sent / 2 < document / 2);
}

TEST_CASE("kill -9 mid-upload: the rerun completes and sends only what the builder lacks") {
  Fixture f;
  make_prefix(f.dir / "env");
  constexpr int k_files = 300;
  constexpr std::size_t k_size = 128 * 1024;
  for (int i = 0; i < k_files; ++i)
    write_file(f.dir / "env/share/data" / ("d" + std::to_string(i) + ".bin"),
               random_bytes(k_size, 7000 + i));
  Serve serve({"--data", (f.dir / "builder").string()}, f.dir / "serve.log");
  const fs::path blobs = f.dir / "builder/blobs/sha256";

  pid_t push = ::fork();
  REQUIRE(push >= 0);
  if (push == 0) {
    int fd = ::open((f.dir / "push1.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    for (const auto& [k, v] : f.env) ::setenv(k.c_str(), v.c_str(), 1);
    std::vector<std::string> argv = {envd::test::envd_binary(),
                                     "push",
                                     "--prefix",
                                     (f.dir / "env").string(),
                                     "--no-src",
                                     "--name",
                                     "team/big",
                                     "--builder",
                                     serve.url(),
                                     "--json"};
    std::vector<char*> raw;
    for (auto& a : argv) raw.push_back(a.data());
    raw.push_back(nullptr);
    ::execv(raw[0], raw.data());
    _exit(127);
  }
  // Poll (bounded) until the builder has committed some blobs, then freeze it so that the count
  // holds still, and kill the push.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (count_files(blobs) < 10 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ::kill(serve.pid(), SIGSTOP);
  std::size_t stored = count_files(blobs);
  ::kill(push, SIGKILL);
  int status = 0;
  ::waitpid(push, &status, 0);
  ::kill(serve.pid(), SIGCONT);
  INFO("push log: " << envd::test::read_file(f.dir / "push1.log"));
  REQUIRE(WIFSIGNALED(status));
  INFO("blobs stored when killed: " << stored);
  REQUIRE(stored > 0);
  REQUIRE(stored < k_files);
  CHECK_FALSE(fs::exists(f.dir / "home/pushed/team+big"));  // not recorded as pushed

  auto rerun = f.push_ok({"--name", "team/big", "--builder", serve.url()});
  auto blobs_sent = rerun["blobs_uploaded"].get<std::size_t>();
  auto bytes_sent = rerun["bytes_uploaded"].get<std::uint64_t>();
  const std::size_t all_blobs = k_files + 5 * 3 + 2;  // data, 5 packages of 3 files, python, os
  INFO("stored at kill " << stored << "; rerun sent " << blobs_sent << " blobs, " << bytes_sent
                         << " bytes");
  CHECK(blobs_sent + stored <= all_blobs);  // nothing the builder had was sent again
  CHECK(bytes_sent < k_files * k_size);
  // The image is whole.
  auto inspected = json::parse(
      tool({"skopeo", "inspect", "--tls-verify=false", "docker://" + serve.host() + "/team/big"})
          .out);
  CHECK(inspected["Digest"] == rerun["manifest_digest"]);
}

TEST_CASE("config errors name the file, line and key, and exit 1 before anything is written") {
  Fixture f;
  make_prefix(f.dir / "env");
  struct Case {
    std::string yaml;
    std::string message;
  };
  const std::string file = (f.dir / "config.yaml").string();
  for (const auto& c : std::vector<Case>{
           {"builder: http://127.0.0.1:1\nbuildr: x\n", file + ":2: buildr: unknown key"},
           {"ignore: data/\n", file + ":1: ignore: must be a list of strings"},
           {"name: team/env\ncompression: [zstd]\n", file + ":2: compression: must be a"},
           {"builder: http://x\nignore: [a\n", file + ":"}}) {
    CAPTURE(c.yaml);
    write_file(f.dir / "config.yaml", c.yaml);
    auto r = f.push({});
    CHECK(r.exit_code == 1);
    CHECK(r.err.find("envd push: " + c.message) == 0);
    CHECK_FALSE(fs::exists(f.dir / "home"));
  }
  write_file(f.dir / "config.yaml", "builder: http://x\nignore: [a\n");
  CHECK(f.push({}).err.find("not valid YAML") != std::string::npos);
  Env missing = {{"ENVD_CONFIG", (f.dir / "nope.yaml").string()}};
  auto r = f.push({}, missing);
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("nope.yaml") != std::string::npos);
  auto bad_url = f.push({"--builder", "localhost:5000"}, {{"ENVD_CONFIG", "/dev/null"}});
  CHECK(bad_url.exit_code == 1);
  CHECK(bad_url.err.find("envd push: --builder: \"localhost:5000\" is not a builder URL") == 0);
}

TEST_CASE("an unreachable builder: a clear message and exit 1") {
  Fixture f;
  make_prefix(f.dir / "env");
  int port = 0;
  {
    Serve gone({"--data", (f.dir / "builder").string()}, f.dir / "serve.log");
    port = gone.port();
  }
  const std::string url = "http://127.0.0.1:" + std::to_string(port);
  write_file(f.dir / "config.yaml", "builder: " + url + "\n");  // from the config this time
  auto r = f.push({"--name", "team/env"});
  CHECK(r.exit_code == 1);
  CHECK(r.out.empty());
  const std::string expected = "envd push: cannot reach builder " + url +
                               ": connection refused; is `envd builder serve` running there? "
                               "(set the builder with --builder, ENVD_BUILDER or the config)\n";
  INFO(r.err);
  REQUIRE(r.err.size() >= expected.size());
  CHECK(r.err.substr(r.err.size() - expected.size()) == expected);
}

TEST_CASE("tokens: the right one pushes (ENVD_TOKEN or token_file), a wrong one is refused") {
  Fixture f;
  make_prefix(f.dir / "env");
  write_file(f.dir / "builder.yaml",
             "tokens:\n  - name: ada\n    token_file: ada.token\n    namespaces: [team]\n"
             "    access: push\n");
  write_file(f.dir / "ada.token", "ada-s3cret\n");
  Serve serve(
      {"--data", (f.dir / "builder").string(), "--config", (f.dir / "builder.yaml").string()},
      f.dir / "serve.log");

  auto none = f.push({"--name", "team/env", "--builder", serve.url()});
  CHECK(none.exit_code == 1);
  CHECK(none.err.find("401") != std::string::npos);
  CHECK(none.err.find("refused the token") != std::string::npos);
  auto wrong = f.push({"--name", "team/env", "--builder", serve.url()}, {{"ENVD_TOKEN", "guess"}});
  CHECK(wrong.exit_code == 1);
  CHECK(wrong.err.find("refused the token") != std::string::npos);
  auto other =
      f.push({"--name", "other/env", "--builder", serve.url()}, {{"ENVD_TOKEN", "ada-s3cret"}});
  CHECK(other.exit_code == 1);
  CHECK(other.err.find("may not use other/env") != std::string::npos);

  auto ok =
      f.push_ok({"--name", "team/env", "--builder", serve.url()}, {{"ENVD_TOKEN", "ada-s3cret"}});
  CHECK(ok["image"].get<std::string>().find(serve.host() + "/team/env@sha256:") == 0);
  // The token from the config's token_file, the builder from the config.
  write_file(f.dir / "my.token", "ada-s3cret\n");
  write_file(f.dir / "config.yaml", "builder: " + serve.url() + "\ntoken_file: my.token\n");
  auto from_config = f.push_ok({"--name", "team/env"});
  CHECK(from_config["manifest_digest"] == ok["manifest_digest"]);
  // ENVD_TOKEN overrides the config's token.
  auto overridden = f.push({"--name", "team/env"}, {{"ENVD_TOKEN", "guess"}});
  CHECK(overridden.exit_code == 1);
}

TEST_CASE("without a builder the embedded one builds; the record notes it") {
  Fixture f;
  make_prefix(f.dir / "env");
  auto first = f.push_ok({"--name", "team/env"});
  CHECK(first["builder"] == "embedded");
  CHECK(first["image"].get<std::string>().find("team/env@sha256:") == 0);
  CHECK(first["bytes_uploaded"] == 0);
  auto again = f.push_ok({"--name", "team/env"});
  CHECK(again["unchanged"] == true);
  CHECK(again["manifest_digest"] == first["manifest_digest"]);
  envd::test::write_pip_packages(f.dir / "env", "q", 1);
  auto changed = f.push_ok({"--name", "team/env", "--compression", "gzip"});
  CHECK(changed["unchanged"] == false);
  CHECK(changed["manifest_digest"] != first["manifest_digest"]);
  CHECK(json::parse(envd::test::read_file(f.dir / "home/pushed/team+env/push.json"))["builder"] ==
        "");
}
