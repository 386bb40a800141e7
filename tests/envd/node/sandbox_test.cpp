// Tests for the sandbox (plan_launch) and the process starters, with the real bubblewrap: fake
// image roots built in scratch directories (busybox-static for a foreign image; envd images with a
// snapshot and prefixes at paths that do not exist on the host).
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <thread>

#include "envd/node/image_roots.hpp"
#include "envd/node/process.hpp"
#include "envd/node/sandbox.hpp"
#include "support/scratch_dir.hpp"

namespace fs = std::filesystem;
using envd::ErrorCode;
using envd::node::Isolation;
using envd::node::LaunchPlan;
using envd::node::RunSpec;
using envd::test::read_file;
using envd::test::ScratchDir;
using envd::test::tree_listing;
using envd::test::write_file;

namespace {

std::string random_hex() {
  std::random_device rd;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%08x%08x", rd(), rd());
  return buf;
}

void write_exec(const fs::path& path, std::string_view content) {
  write_file(path, content);
  fs::permissions(path, fs::perms(0755));
}

bool exists_on_host(const fs::path& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0;
}

// A busybox root: bin/busybox and applet links, /etc/greeting, /work; with or without the
// /proc, /dev and /tmp directories bwrap mounts on.
fs::path make_foreign_image(const ScratchDir& dir, bool with_mount_points) {
  fs::path root = dir / "foreign";
  fs::create_directories(root / "bin");
  fs::copy_file("/bin/busybox", root / "bin/busybox");
  for (const char* applet : {"sh", "echo", "cat", "ls", "pwd", "env", "sleep", "touch"})
    fs::create_symlink("busybox", root / "bin" / applet);
  write_file(root / "etc/greeting", "hello from the image\n");
  fs::create_directories(root / "work");
  if (with_mount_points)
    for (const char* d : {"proc", "dev", "tmp"}) fs::create_directories(root / d);
  return root;
}

struct EnvSpec {
  std::string prefix;
  std::string kind = "venv";
  bool partial = false;
};

// rootfs/.envd/snapshot.json naming the environments and sources (file lists carry one entry each,
// with characters that a careless scan of the document would trip on).
void write_snapshot(const fs::path& rootfs, const std::vector<EnvSpec>& envs,
                    const std::vector<std::string>& sources) {
  const std::string file = R"({"digest":"sha256:)" + std::string(64, 'a') +
                           R"(","mode":420,"path":"odd]\"name[\\","size":1,"type":"file"})";
  std::string doc = R"({"created":"","envd_version":"","environments":[)";
  for (std::size_t i = 0; i < envs.size(); ++i) {
    if (i != 0) doc += ",";
    doc += R"({"kind":")" + envs[i].kind + R"(","name":"e","packages":[{"files":[)" + file +
           R"(],"installer":"pip","manager":"pip","modified":[],"name":"p","requested":false,)"
           R"("version":"1"}],"partial":)" +
           (envs[i].partial ? "true" : "false") + R"(,"prefix":")" + envs[i].prefix +
           R"(","python_version":"","system_site_packages":false,"unowned":[)" + file + "]}";
  }
  doc += R"(],"host":"","media_type":"application/vnd.envd.snapshot.v1+json",)"
         R"("platform":{"arch":"amd64","libc":"","os":"linux"},"sources":[)";
  for (std::size_t i = 0; i < sources.size(); ++i) {
    if (i != 0) doc += ",";
    doc += R"({"dirty":false,"files":[)" + file + R"(],"ignored":{},"role":"src","root":")" +
           sources[i] + R"("})";
  }
  doc += "]}";
  write_file(rootfs / ".envd/snapshot.json", doc);
}

// Waits (bounded) for a background child and returns its exit code (128+N for signal N).
int wait_for(pid_t pid) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    if (::waitpid(pid, &status, WNOHANG) == pid)
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &status, 0);
  FAIL("child did not exit in 30 s");
  return -1;
}

bool wait_for_file(const fs::path& p) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    if (exists_on_host(p)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

struct Ran {
  int code = -1;
  std::string out;
};

// Runs a plan in the background (optionally as nobody through setpriv) and returns its output.
Ran run(LaunchPlan plan, const ScratchDir& dir, bool as_nobody = false) {
  if (as_nobody)
    plan.argv.insert(plan.argv.begin(),
                     {"/usr/bin/setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"});
  const fs::path log = dir / ("run-" + random_hex() + ".log");
  auto pid = envd::node::spawn_background(plan, log);
  REQUIRE_MESSAGE(pid, (pid ? "" : pid.error().message()));
  Ran r;
  r.code = wait_for(*pid);
  r.out = read_file(log);
  return r;
}

// The command line after bwrap's "--".
std::vector<std::string> command_of(const LaunchPlan& plan) {
  auto it = std::find(plan.argv.begin(), plan.argv.end(), "--");
  return it == plan.argv.end() ? plan.argv : std::vector<std::string>(it + 1, plan.argv.end());
}

// A shell loop that waits for a signal, giving up after about 30 s so that a test cannot hang.
const std::string k_bounded_wait =
    "i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; exit 9";

// The names in a directory (not below it): "/" is too big for tree_listing.
std::vector<std::string> tree_listing_top(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// Whether `args` appear one after the other in the plan's command line.
bool has_args(const LaunchPlan& plan, const std::vector<std::string>& args) {
  return std::search(plan.argv.begin(), plan.argv.end(), args.begin(), args.end()) !=
         plan.argv.end();
}

bool argv_mentions(const LaunchPlan& plan, std::string_view text) {
  return std::any_of(plan.argv.begin(), plan.argv.end(),
                     [&](const std::string& a) { return a.find(text) != std::string::npos; });
}

}  // namespace

TEST_CASE("parse_isolation accepts auto, bwrap and none and names bad text") {
  CHECK(*envd::node::parse_isolation("auto") == Isolation::automatic);
  CHECK(*envd::node::parse_isolation("bwrap") == Isolation::bwrap);
  CHECK(*envd::node::parse_isolation("none") == Isolation::none);
  for (const char* bad : {"", "Bwrap", "docker", "auto "}) {
    auto r = envd::node::parse_isolation(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == ErrorCode::invalid_argument);
    CHECK(r.error().message().find("\"" + std::string(bad) + "\"") != std::string::npos);
  }
}

TEST_CASE("a foreign image runs with its root as /, its Env, WorkingDir and PATH") {
  for (bool mount_points : {true, false}) {
    CAPTURE(mount_points);
    ScratchDir dir;
    RunSpec spec;
    spec.rootfs = make_foreign_image(dir, mount_points);
    spec.command = {"sh", "-c",
                    "echo $FOO $BAR $LD_X; pwd; cat /etc/greeting; ls /proc/self >/dev/null"
                    " && echo proc; touch /tmp/x && echo tmp; touch /etc/x 2>/dev/null || echo ro"};
    spec.image_env = {"PATH=/bin", "FOO=foo", "BAR=image"};
    spec.extra_env = {"BAR=extra", "LD_X=ld"};
    spec.working_dir = "/work";
    spec.isolation = Isolation::bwrap;
    auto plan = envd::node::plan_launch(spec);
    REQUIRE_MESSAGE(plan, (plan ? "" : plan.error().message()));
    CHECK(plan->isolation == Isolation::bwrap);
    CHECK(command_of(*plan).front() == "/bin/sh");
    // The loader's variables reach the command, not bwrap itself.
    CHECK(std::count(plan->env.begin(), plan->env.end(), "LD_X=ld") == 0);
    CHECK(argv_mentions(*plan, "LD_X"));
    auto r = run(*plan, dir);
    CHECK(r.code == 0);
    CHECK(r.out == "foo extra ld\n/work\nhello from the image\nproc\ntmp\nro\n");
    CHECK_FALSE(exists_on_host(spec.rootfs / "etc/x"));
    CHECK_FALSE(exists_on_host(spec.rootfs / "tmp/x"));

    spec.command = {"sh", "-c", "exit 7"};
    auto exit7 = envd::node::plan_launch(spec);
    REQUIRE(exit7);
    CHECK(*envd::node::run_foreground(*exit7) == 7);
  }
}

TEST_CASE("a foreign image: missing command, missing WorkingDir, bad Env, no bwrap") {
  ScratchDir dir;
  RunSpec spec;
  spec.rootfs = make_foreign_image(dir, true);
  spec.image_env = {"PATH=/bin:/usr/bin"};
  spec.command = {"python3"};
  auto missing = envd::node::plan_launch(spec);
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code() == ErrorCode::not_found);
  CHECK(missing.error().message().find("python3") != std::string::npos);
  CHECK(missing.error().message().find("/bin:/usr/bin") != std::string::npos);

  spec.command = {"sh"};
  spec.working_dir = "/nowhere";
  auto no_dir = envd::node::plan_launch(spec);
  REQUIRE_FALSE(no_dir);
  CHECK(no_dir.error().code() == ErrorCode::not_found);
  CHECK(no_dir.error().message().find("/nowhere") != std::string::npos);

  spec.working_dir = "";
  spec.extra_env = {"NOEQUALS"};
  auto bad_env = envd::node::plan_launch(spec);
  REQUIRE_FALSE(bad_env);
  CHECK(bad_env.error().code() == ErrorCode::invalid_argument);
  CHECK(bad_env.error().message().find("NOEQUALS") != std::string::npos);

  spec.extra_env = {};
  spec.command = {};
  CHECK(envd::node::plan_launch(spec).error().code() == ErrorCode::invalid_argument);

  spec.command = {"sh"};
  spec.isolation = Isolation::none;
  auto none = envd::node::plan_launch(spec);
  REQUIRE_FALSE(none);
  CHECK(none.error().code() == ErrorCode::failed_precondition);
  CHECK(none.error().message().find("snapshot.json") != std::string::npos);
  CHECK(tree_listing(dir.path()).size() > 0);
}

namespace {

// An envd image with a venv at /opt/envd-test-<hex>/env (absent on the host) and a source tree.
struct EnvdImage {
  std::string top;  // /opt/envd-test-<hex>
  std::string prefix;
  std::string src;
  fs::path rootfs;
};

EnvdImage make_envd_image(const ScratchDir& dir, const std::string& tail = "env") {
  EnvdImage img;
  img.top = "/opt/envd-test-" + random_hex();
  img.prefix = img.top + "/" + tail;
  img.src = img.top + "/src";
  img.rootfs = dir / "rootfs";
  write_exec(img.rootfs / (img.prefix.substr(1) + "/bin/hello"),
             "#!/bin/sh\necho \"hello $GREETING\"\ncat " + img.prefix + "/share/data.txt\n");
  write_file(img.rootfs / (img.prefix.substr(1) + "/share/data.txt"), "image data\n");
  write_file(img.rootfs / (img.src.substr(1) + "/main.py"), "print('main')\n");
  write_snapshot(img.rootfs, {{img.prefix, "venv", false}}, {img.src});
  return img;
}

}  // namespace

TEST_CASE("an envd image: image paths at their absolute paths, host root kept, host untouched") {
  ScratchDir dir;
  EnvdImage img = make_envd_image(dir);
  REQUIRE_FALSE(exists_on_host(img.top));
  const auto opt_before = tree_listing("/opt");
  RunSpec spec;
  spec.rootfs = img.rootfs;
  spec.command = {"sh", "-c", "hello; pwd; head -1 /etc/os-release; cat main.py; ls " + img.top};
  spec.image_env = {"PATH=" + img.prefix + "/bin:/usr/bin:/bin", "VIRTUAL_ENV=" + img.prefix};
  spec.extra_env = {"GREETING=world"};
  spec.working_dir = img.src;
  spec.isolation = Isolation::bwrap;
  auto plan = envd::node::plan_launch(spec);
  REQUIRE_MESSAGE(plan, (plan ? "" : plan.error().message()));
  CHECK(command_of(*plan).front() == "/usr/bin/sh");
  // Nothing new at the top level: the host's root is one bind, /dev bound again with devices.
  CHECK(has_args(*plan, {"--bind", "/", "/", "--dev-bind", "/dev", "/dev"}));
  CHECK_FALSE(has_args(*plan, {"--bind", "/etc", "/etc"}));
  std::string os_release = read_file("/etc/os-release");
  auto r = run(*plan, dir);
  CHECK(r.code == 0);
  CHECK(r.out == "hello world\nimage data\n" + img.src + "\n" +
                     os_release.substr(0, os_release.find('\n') + 1) + "print('main')\nenv\nsrc\n");
  CHECK_FALSE(exists_on_host(img.top));
  CHECK(tree_listing("/opt") == opt_before);

  spec.command = {"hello"};
  auto direct = envd::node::plan_launch(spec);
  REQUIRE(direct);
  CHECK(command_of(*direct).front() == img.prefix + "/bin/hello");
  spec.command = {"sh", "-c", "exit 42"};
  auto exit42 = envd::node::plan_launch(spec);
  REQUIRE(exit42);
  CHECK(*envd::node::run_foreground(*exit42) == 42);
  CHECK_FALSE(exists_on_host(img.top));
}

TEST_CASE("an image path missing at the host's top level: / is rebuilt, the host's entries kept") {
  ScratchDir dir;
  const std::string top = "/envd-test-" + random_hex();
  const std::string prefix = top + "/env";
  const fs::path rootfs = dir / "rootfs";
  write_exec(rootfs / (prefix.substr(1) + "/bin/hello"), "#!/bin/sh\necho hello from the top\n");
  write_snapshot(rootfs, {{prefix, "venv", false}}, {});
  const auto root_before = tree_listing_top("/");
  RunSpec spec;
  spec.rootfs = rootfs;
  spec.command = {"sh", "-c",
                  "hello; head -1 /etc/os-release; ls " + dir.path().string() +
                      " >/dev/null && echo tmp; echo x > /dev/null && echo dev"};
  spec.image_env = {"PATH=" + prefix + "/bin:/usr/bin:/bin"};
  spec.isolation = Isolation::bwrap;
  auto plan = envd::node::plan_launch(spec);
  REQUIRE_MESSAGE(plan, (plan ? "" : plan.error().message()));
  CHECK_FALSE(has_args(*plan, {"--bind", "/", "/"}));  // bwrap's tmpfs root, entries bound on it
  CHECK(has_args(*plan, {"--bind", "/etc", "/etc"}));
  auto r = run(*plan, dir);
  const std::string os_release = read_file("/etc/os-release");
  CHECK(r.code == 0);
  CHECK(r.out ==
        "hello from the top\n" + os_release.substr(0, os_release.find('\n') + 1) + "tmp\ndev\n");
  CHECK_FALSE(exists_on_host(top));
  CHECK(tree_listing_top("/") == root_before);
}

TEST_CASE("a source tree missing beside host entries: their directory is grafted, nothing hidden") {
  // /tmp/envd-test-* exists (the scratch dir); a source root beside it does not: /tmp is grafted.
  ScratchDir dir;
  ScratchDir host_neighbour;
  write_file(host_neighbour / "host.txt", "host file\n");
  for (int i = 0; i < 60; ++i) write_file(host_neighbour / ("many/f" + std::to_string(i)), "x");
  const std::string src = host_neighbour.path().string() + "-src-" + random_hex();
  const fs::path rootfs = dir / "rootfs";
  write_file(rootfs / (src.substr(1) + "/main.py"), "print('main')\n");
  write_snapshot(rootfs, {}, {src});
  const auto before = tree_listing(host_neighbour.path());
  RunSpec spec;
  spec.rootfs = rootfs;
  spec.command = {"sh", "-c",
                  "cat main.py " + (host_neighbour / "host.txt").string() + "; ls " +
                      (host_neighbour / "many").string() +
                      " | wc -l; touch main.py 2>/dev/null || echo read-only"};
  spec.working_dir = src;
  auto plan = envd::node::plan_launch(spec);
  REQUIRE_MESSAGE(plan, (plan ? "" : plan.error().message()));
  auto r = run(*plan, dir);
  CHECK(r.code == 0);
  CHECK(r.out == "print('main')\nhost file\n60\nread-only\n");
  CHECK_FALSE(exists_on_host(src));
  CHECK(tree_listing(host_neighbour.path()) == before);
}

TEST_CASE("a partial environment shows only what the host lacks or has otherwise") {
  ScratchDir dir;
  // A host directory standing in for a base interpreter prefix, and the image's partial copy.
  const fs::path base = dir / "host-base";
  write_exec(base / "bin/tool", "#!/bin/sh\necho v1\n");
  write_file(base / "lib/same.txt", "same\n");
  write_file(base / "lib/host-only.txt", "host only\n");
  const fs::path rootfs = dir / "rootfs";
  const fs::path image_base = rootfs / base.relative_path();
  write_exec(image_base / "bin/tool", "#!/bin/sh\necho v2\n");  // same size, other bytes
  write_file(image_base / "lib/same.txt", "same\n");
  write_file(image_base / "lib/new.txt", "new in image\n");
  // And part of /usr: an image-only program beside the host's.
  const std::string only = "envd-test-" + random_hex();
  write_exec(rootfs / "usr/bin" / only, "#!/bin/sh\necho image-only\n");
  fs::copy_file("/usr/bin/env", rootfs / "usr/bin/env");
  write_snapshot(rootfs, {{base.string(), "prefix", true}, {"/usr", "prefix", true}}, {});
  const auto base_before = tree_listing(base);

  RunSpec spec;
  spec.rootfs = rootfs;
  const std::string b = base.string();
  spec.command = {"sh", "-c",
                  b + "/bin/tool; cat " + b + "/lib/same.txt " + b + "/lib/new.txt " + b +
                      "/lib/host-only.txt; /usr/bin/env " + only +
                      "; /usr/bin/env true && echo env-ok"};
  auto plan = envd::node::plan_launch(spec);
  REQUIRE_MESSAGE(plan, (plan ? "" : plan.error().message()));
  CHECK_FALSE(argv_mentions(*plan, image_base.string() + "/lib/same.txt"));  // the host's is used
  CHECK(std::count(plan->argv.begin(), plan->argv.end(), rootfs.string() + "/usr/bin/env") == 0);
  auto r = run(*plan, dir);
  CHECK(r.code == 0);
  CHECK(r.out == "v2\nsame\nnew in image\nhost only\nimage-only\nenv-ok\n");
  CHECK(tree_listing(base) == base_before);
  CHECK_FALSE(exists_on_host("/usr/bin/" + only));
}

TEST_CASE("an envd image runs rootless (setpriv to nobody) when its files are readable") {
  ScratchDir dir;
  fs::permissions(dir.path(), fs::perms(0755));
  EnvdImage img = make_envd_image(dir);
  RunSpec spec;
  spec.rootfs = img.rootfs;
  spec.command = {"sh", "-c", "hello; id -u; cat /etc/hostname >/dev/null && echo etc"};
  spec.image_env = {"PATH=" + img.prefix + "/bin:/usr/bin:/bin"};
  spec.working_dir = img.src;
  auto plan = envd::node::plan_launch(spec);
  REQUIRE_MESSAGE(plan, (plan ? "" : plan.error().message()));
  auto r = run(*plan, dir, true);
  CHECK(r.code == 0);
  CHECK(r.out == "hello \nimage data\n65534\netc\n");
  CHECK_FALSE(exists_on_host(img.top));

  spec.rootfs = make_foreign_image(dir, false);
  spec.command = {"sh", "-c", "cat /etc/greeting"};
  spec.image_env = {};
  spec.working_dir = "/";
  auto foreign = envd::node::plan_launch(spec);
  REQUIRE(foreign);
  auto f = run(*foreign, dir, true);
  CHECK(f.code == 0);
  CHECK(f.out == "hello from the image\n");
}

TEST_CASE("bwrap unusable: isolation bwrap fails clearly, auto falls back to none") {
  ScratchDir dir;
  write_exec(dir / "fakebin/bwrap", "#!/bin/sh\necho 'no user namespaces here' >&2\nexit 1\n");
  const std::string saved = std::getenv("PATH");
  ::setenv("PATH", (dir / "fakebin").c_str(), 1);
  EnvdImage img = make_envd_image(dir);
  RunSpec spec;
  spec.rootfs = img.rootfs;
  spec.command = {"/bin/true"};
  spec.isolation = Isolation::bwrap;
  auto r = envd::node::plan_launch(spec);
  spec.isolation = Isolation::automatic;
  spec.relocation_dir = dir / "reloc";
  auto fallback = envd::node::plan_launch(spec);
  ::setenv("PATH", saved.c_str(), 1);
  REQUIRE_FALSE(r);
  CHECK(r.error().code() == ErrorCode::failed_precondition);
  CHECK(r.error().message().find("no user namespaces here") != std::string::npos);
  REQUIRE_MESSAGE(fallback, (fallback ? "" : fallback.error().message()));
  CHECK(fallback->isolation == Isolation::none);
  CHECK(fallback->notes.front().find("no user namespaces here") != std::string::npos);
}

TEST_CASE("isolation none relocates text, shebangs and padded binaries, and reuses the copy") {
  ScratchDir dir;
  // A long prefix, so that the short relocation dir fits in the binary's string.
  EnvdImage img = make_envd_image(dir, "environments/with-a-rather-long-name-for-room/env");
  const fs::path env_root = img.rootfs / img.prefix.substr(1);
  fs::copy_file("/bin/busybox", env_root / "bin/busybox");
  write_exec(env_root / "bin/show", "#!" + img.prefix + "/bin/busybox sh\necho \"$0\"; cat " +
                                        img.prefix +
                                        "/share/data.txt; pwd; echo \"$VIRTUAL_ENV\"\n");
  const std::string blob = std::string(
                               "\x7f"
                               "ELF\0",
                               5) +
                           img.prefix + std::string("/lib\0tail\0", 10);
  write_file(env_root / "lib/blob.bin", blob);
  fs::create_symlink(img.prefix + "/bin/show", env_root / "bin/show-link");
  const fs::path reloc = dir / "r";
  RunSpec spec;
  spec.rootfs = img.rootfs;
  spec.command = {"show"};
  spec.image_env = {"PATH=" + img.prefix + "/bin:/usr/bin:/bin", "VIRTUAL_ENV=" + img.prefix};
  spec.working_dir = img.src;
  spec.isolation = Isolation::none;
  spec.relocation_dir = reloc;
  auto plan = envd::node::plan_launch(spec);
  REQUIRE_MESSAGE(plan, (plan ? "" : plan.error().message()));
  CHECK(plan->isolation == Isolation::none);
  const std::string e0 = reloc.string() + "/e0";
  CHECK(plan->argv.front() == e0 + "/bin/show");
  CHECK(plan->cwd == reloc / "s0");
  CHECK(std::any_of(plan->notes.begin(), plan->notes.end(), [&](const std::string& n) {
    return n.find("relocated " + img.prefix + " to " + e0) != std::string::npos;
  }));
  auto r = run(*plan, dir);
  CHECK(r.code == 0);
  CHECK(r.out == e0 + "/bin/show\nimage data\n" + reloc.string() + "/s0\n" + e0 + "\n");
  const std::string moved = read_file(e0 + "/lib/blob.bin");
  CHECK(moved.size() == blob.size());
  CHECK(moved.substr(0, 5 + e0.size() + 5) == std::string("\x7f"
                                                          "ELF\0",
                                                          5) +
                                                  e0 + std::string("/lib\0", 5));
  CHECK(moved.substr(moved.size() - 5) == std::string("tail\0", 5));
  CHECK(fs::read_symlink(e0 + "/bin/show-link") == e0 + "/bin/show");
  CHECK(read_file(reloc / "s0/main.py") == "print('main')\n");

  struct stat first {
  }, second{};
  ::stat((e0 + "/bin/show").c_str(), &first);
  auto again = envd::node::plan_launch(spec);
  REQUIRE(again);
  ::stat((e0 + "/bin/show").c_str(), &second);
  CHECK(first.st_ino == second.st_ino);  // reused, not copied again
}

TEST_CASE("isolation none refuses a binary whose new prefix is longer, leaving nothing behind") {
  ScratchDir dir;
  EnvdImage img = make_envd_image(dir);
  write_file(img.rootfs / (img.prefix.substr(1) + "/lib/lib.so"),
             std::string("\0", 1) + img.prefix + std::string("/lib\0", 5));
  const fs::path reloc = dir / std::string(40, 'r');
  RunSpec spec;
  spec.rootfs = img.rootfs;
  spec.command = {"hello"};
  spec.image_env = {"PATH=" + img.prefix + "/bin:/usr/bin:/bin"};
  spec.isolation = Isolation::none;
  spec.relocation_dir = reloc;
  const auto before = tree_listing(dir.path());
  auto r = envd::node::plan_launch(spec);
  REQUIRE_FALSE(r);
  CHECK(r.error().code() == ErrorCode::failed_precondition);
  const std::string& msg = r.error().message();
  CHECK(msg.find(img.prefix + "/lib/lib.so") != std::string::npos);
  CHECK(msg.find(img.prefix) != std::string::npos);
  CHECK(msg.find(reloc.string() + "/e0") != std::string::npos);
  CHECK(tree_listing(dir.path()) == before);
}

TEST_CASE("isolation none: a partial base present on the host is used, a foreign dir refused") {
  ScratchDir dir;
  EnvdImage img = make_envd_image(dir);
  const fs::path base = dir / "host-base";
  write_file(base / "lib/a.txt", "host\n");
  write_file(img.rootfs / base.relative_path() / "lib/a.txt", "image\n");
  write_snapshot(img.rootfs, {{img.prefix, "venv", false}, {base.string(), "prefix", true}},
                 {img.src});
  RunSpec spec;
  spec.rootfs = img.rootfs;
  spec.command = {"hello"};
  spec.image_env = {"PATH=" + img.prefix + "/bin:/usr/bin:/bin"};
  spec.isolation = Isolation::none;
  spec.relocation_dir = dir / "reloc";
  auto plan = envd::node::plan_launch(spec);
  REQUIRE_MESSAGE(plan, (plan ? "" : plan.error().message()));
  CHECK(std::any_of(plan->notes.begin(), plan->notes.end(), [&](const std::string& n) {
    return n.find(base.string() + " taken from the host (1 entries differ") != std::string::npos;
  }));
  CHECK_FALSE(exists_on_host(dir / "reloc/e1"));

  write_file(dir / "other/keep.txt", "user data\n");
  spec.relocation_dir = dir / "other";
  auto refused = envd::node::plan_launch(spec);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code() == ErrorCode::failed_precondition);
  CHECK(refused.error().message().find((dir / "other").string()) != std::string::npos);
  CHECK(read_file(dir / "other/keep.txt") == "user data\n");
}

TEST_CASE("a snapshot with a prefix that is not a normalised absolute path is refused") {
  ScratchDir dir;
  const fs::path rootfs = dir / "rootfs";
  write_snapshot(rootfs, {{"/opt/../etc", "venv", false}}, {});
  RunSpec spec;
  spec.rootfs = rootfs;
  spec.command = {"true"};
  auto r = envd::node::plan_launch(spec);
  REQUIRE_FALSE(r);
  CHECK(r.error().code() == ErrorCode::invalid_argument);
  CHECK(r.error().message().find("/opt/../etc") != std::string::npos);
  write_file(rootfs / ".envd/snapshot.json", "{\"environments\": [");
  CHECK(envd::node::plan_launch(spec).error().code() == ErrorCode::invalid_argument);
}

TEST_CASE("the launch reads the roots record, else (none, or damaged) the snapshot") {
  ScratchDir dir;
  EnvdImage img = make_envd_image(dir);
  RunSpec spec;
  spec.rootfs = img.rootfs;
  spec.command = {"sh", "-c",
                  "test -e " + img.prefix + "/bin/hello && echo present || echo absent"};
  spec.isolation = Isolation::bwrap;
  // No record: the snapshot's roots are mounted.
  auto from_snapshot = envd::node::plan_launch(spec);
  REQUIRE_MESSAGE(from_snapshot, (from_snapshot ? "" : from_snapshot.error().message()));
  CHECK(argv_mentions(*from_snapshot, img.rootfs.string()));
  CHECK(run(*from_snapshot, dir).out == "present\n");

  // A record naming no roots at all: what is mounted follows it, not the snapshot.
  const fs::path record = envd::node::detail::roots_record_path(img.rootfs);
  CHECK(record == dir / "rootfs.roots.json");
  write_file(record, envd::node::detail::roots_record_text({}));
  auto from_record = envd::node::plan_launch(spec);
  REQUIRE_MESSAGE(from_record, (from_record ? "" : from_record.error().message()));
  CHECK_FALSE(argv_mentions(*from_record, img.rootfs.string()));
  auto r = run(*from_record, dir);
  CHECK(r.code == 0);
  CHECK(r.out == "absent\n");

  // A damaged record is ignored: the snapshot again.
  write_file(record, "{\"media_type\": \"application/vnd.envd.image-roots.v1+json\"");
  auto damaged = envd::node::plan_launch(spec);
  REQUIRE_MESSAGE(damaged, (damaged ? "" : damaged.error().message()));
  CHECK(argv_mentions(*damaged, img.rootfs.string()));
  CHECK(run(*damaged, dir).out == "present\n");
}

TEST_CASE("run_foreground passes exit codes and signals, and forwards SIGTERM to the command") {
  ScratchDir dir;
  LaunchPlan plan;
  plan.isolation = Isolation::none;
  plan.argv = {"/bin/sh", "-c", "exit 3"};
  plan.cwd = "/";
  CHECK(*envd::node::run_foreground(plan) == 3);
  plan.argv = {"/bin/sh", "-c", "kill -KILL $$"};
  CHECK(*envd::node::run_foreground(plan) == 128 + SIGKILL);
  plan.argv = {"/nonexistent/program"};
  auto missing = envd::node::run_foreground(plan);
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code() == ErrorCode::not_found);

  // Through bwrap: SIGTERM to this process reaches the command, which exits 5 from its trap.
  for (Isolation isolation : {Isolation::bwrap, Isolation::none}) {
    EnvdImage img = make_envd_image(dir);
    const fs::path ready = dir / ("ready-" + random_hex());
    RunSpec spec;
    spec.rootfs = img.rootfs;
    spec.command = {"sh", "-c",
                    "trap 'exit 5' TERM; touch " + ready.string() + "; " + k_bounded_wait};
    spec.isolation = isolation;
    spec.relocation_dir = dir / ("reloc-" + random_hex());
    auto launch = envd::node::plan_launch(spec);
    REQUIRE(launch);
    std::thread killer([&] {
      if (wait_for_file(ready)) ::kill(::getpid(), SIGTERM);
    });
    auto code = envd::node::run_foreground(*launch);
    killer.join();
    REQUIRE(code);
    CHECK(*code == 5);
  }
}

TEST_CASE("run_foreground through bwrap: no process between the caller and bwrap; exit codes") {
  ScratchDir dir;
  EnvdImage img = make_envd_image(dir);
  RunSpec spec;
  spec.rootfs = img.rootfs;
  spec.isolation = Isolation::bwrap;
  const fs::path out = dir / "parents";
  // The command's parent is bwrap (no pid namespace: host pids); bwrap's parent is this process.
  spec.command = {"sh", "-c", "awk '{print $4}' /proc/$PPID/stat > " + out.string() + "; exit 6"};
  auto parents = envd::node::plan_launch(spec);
  REQUIRE(parents);
  CHECK(*envd::node::run_foreground(*parents) == 6);
  CHECK(std::stoi(read_file(out)) == ::getpid());

  spec.command = {"sh", "-c", "kill -KILL $$"};
  auto killed = envd::node::plan_launch(spec);
  REQUIRE(killed);
  CHECK(*envd::node::run_foreground(*killed) == 128 + SIGKILL);

  // A descriptor the caller left inheritable reaches neither bwrap's command nor a plain one.
  const int opened = ::open("/dev/null", O_RDONLY);
  const int leaky = ::fcntl(opened, F_DUPFD, 20);  // inheritable, above bwrap's --info-fd (3)
  ::close(opened);
  REQUIRE(leaky >= 20);
  for (Isolation isolation : {Isolation::bwrap, Isolation::none}) {
    CAPTURE(isolation == Isolation::bwrap);
    spec.isolation = isolation;
    spec.relocation_dir = dir / ("reloc-" + random_hex());
    spec.command = {"sh", "-c",
                    "test -e /proc/self/fd/" + std::to_string(leaky) + " && exit 1; exit 0"};
    auto fd_plan = envd::node::plan_launch(spec);
    REQUIRE(fd_plan);
    CHECK(*envd::node::run_foreground(*fd_plan) == 0);
  }
  ::close(leaky);
}

TEST_CASE("run_foreground forwards SIGHUP too, but not a signal the caller ignores") {
  ScratchDir dir;
  EnvdImage img = make_envd_image(dir);
  for (bool ignore_hup : {false, true}) {
    CAPTURE(ignore_hup);
    const fs::path ready = dir / ("ready-" + random_hex());
    const fs::path events = dir / ("events-" + random_hex());
    RunSpec spec;
    spec.rootfs = img.rootfs;
    spec.isolation = Isolation::bwrap;
    // dash runs pending traps in signal number order: a forwarded HUP (1) is recorded before the
    // TERM (15) that follows it ends the command.
    spec.command = {"sh", "-c",
                    "trap 'echo hup >> " + events.string() + "' HUP; trap 'exit 5' TERM; touch " +
                        ready.string() + "; " + k_bounded_wait};
    auto launch = envd::node::plan_launch(spec);
    REQUIRE(launch);
    struct sigaction ignore = {}, previous = {};
    ignore.sa_handler = SIG_IGN;
    if (ignore_hup) ::sigaction(SIGHUP, &ignore, &previous);
    std::thread killer([&] {
      if (!wait_for_file(ready)) return;
      ::kill(::getpid(), SIGHUP);
      ::kill(::getpid(), SIGTERM);
    });
    auto code = envd::node::run_foreground(*launch);
    killer.join();
    struct sigaction after = {};
    ::sigaction(SIGHUP, nullptr, &after);
    if (ignore_hup) ::sigaction(SIGHUP, &previous, nullptr);
    REQUIRE(code);
    CHECK(*code == 5);
    CHECK(exists_on_host(events) == !ignore_hup);
    CHECK((after.sa_handler == SIG_IGN) == ignore_hup);  // the caller's disposition is restored
  }
}

TEST_CASE("spawn_background appends to the log, reads /dev/null, stops gracefully on SIGTERM") {
  ScratchDir dir;
  EnvdImage img = make_envd_image(dir);
  const fs::path log = dir / "worker.log";
  write_file(log, "earlier\n");
  const fs::path ready = dir / "ready";
  RunSpec spec;
  spec.rootfs = img.rootfs;
  spec.command = {"sh", "-c",
                  "cat; echo out; echo err >&2; trap 'echo stopping; exit 0' TERM; "
                  "touch " +
                      ready.string() + "; " + k_bounded_wait};
  auto plan = envd::node::plan_launch(spec);
  REQUIRE(plan);
  auto pid = envd::node::spawn_background(*plan, log);
  REQUIRE(pid);
  REQUIRE(wait_for_file(ready));
  ::kill(*pid, SIGTERM);
  CHECK(wait_for(*pid) == 0);
  // The signal goes to the command's process group (as a terminal's would): the shell's sleep
  // may die of it too, which dash reports with "Terminated".
  const std::string text = read_file(log);
  CHECK(text.starts_with("earlier\nout\nerr\n"));
  CHECK(text.ends_with("stopping\n"));

  // A descriptor the caller left inheritable does not reach the command.
  const int leaky = ::open("/dev/null", O_RDONLY);
  spec.command = {
      "sh", "-c",
      "test -e /proc/self/fd/" + std::to_string(leaky) + " && echo leaked || echo closed"};
  auto fd_plan = envd::node::plan_launch(spec);
  REQUIRE(fd_plan);
  auto fd_run = run(*fd_plan, dir);
  ::close(leaky);
  CHECK(fd_run.out == "closed\n");

  auto bad_log = envd::node::spawn_background(*plan, dir / "no/such/dir/log");
  REQUIRE_FALSE(bad_log);
  CHECK(bad_log.error().message().find("no/such/dir/log") != std::string::npos);
}
