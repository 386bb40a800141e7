// `envd snapshot` end to end: the real pyenv prefix against pip's own listing, venvs made by
// Python's venv module, a git repo made by git, and bad input (exit codes, messages naming the
// file, nothing written into the scanned trees).
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>
#include <set>

#include "support/run_command.hpp"
#include "support/scratch_dir.hpp"

using envd::test::envd_binary;
using envd::test::run_command;
using envd::test::ScratchDir;
using envd::test::tree_listing;
using envd::test::write_file;
using nlohmann::json;

namespace {

std::string pyenv_prefix() {
  auto r = run_command({"pyenv", "root"});
  std::string root = r.exit_code == 0 ? r.out.substr(0, r.out.find('\n')) : "/root/.pyenv";
  return root + "/versions/3.11.7";
}

// PEP 503 normalisation, so "typing_extensions" and "typing-extensions" compare equal.
std::string normalise(std::string name) {
  std::string out;
  for (char c : name) {
    char l = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (l == '_' || l == '.') l = '-';
    if (l == '-' && !out.empty() && out.back() == '-') continue;
    out += l;
  }
  return out;
}

struct Snapshot {
  envd::test::CommandResult run;
  json doc;
  json summary;
};

Snapshot snapshot(const ScratchDir& dir, std::vector<std::string> args,
                  std::map<std::string, std::string> env = {}) {
  std::vector<std::string> argv = {envd_binary(), "snapshot", "-o", (dir / "out.json").string(),
                                   "--json"};
  argv.insert(argv.end(), args.begin(), args.end());
  env.emplace("ENVD_HOME", (dir / "home").string());
  Snapshot s;
  s.run = run_command(argv, env);
  if (s.run.exit_code == 0) {
    s.doc = json::parse(envd::test::read_file(dir / "out.json"));
    // --json: the last line of stdout is the summary object.
    auto body = s.run.out.substr(0, s.run.out.find_last_not_of('\n') + 1);
    s.summary = json::parse(body.substr(body.rfind('\n') + 1));
  }
  return s;
}

std::set<std::string> all_paths(const json& env) {
  std::set<std::string> out;
  for (const auto& p : env["packages"])
    for (const auto& f : p["files"]) out.insert(f["path"].get<std::string>());
  for (const auto& f : env["unowned"]) out.insert(f["path"].get<std::string>());
  return out;
}

}  // namespace

TEST_CASE("the real pyenv prefix: exactly pip's packages, and every file owned or unowned") {
  const std::string prefix = pyenv_prefix();
  if (!std::filesystem::exists(prefix + "/bin/python3.11")) {
    WARN_MESSAGE(false, "no pyenv 3.11.7 prefix on this machine; skipped");
    return;
  }
  ScratchDir dir;
  auto s = snapshot(dir, {"--prefix", prefix, "--no-src"});
  INFO(s.run.err);
  REQUIRE(s.run.exit_code == 0);
  REQUIRE(s.doc["environments"].size() == 1);
  const auto& env = s.doc["environments"][0];
  CHECK(env["kind"] == "prefix");
  CHECK(env["python_version"] == "3.11.7");

  auto pip = run_command({prefix + "/bin/python3.11", "-m", "pip", "list", "--format=json",
                          "--disable-pip-version-check"});
  REQUIRE(pip.exit_code == 0);
  std::set<std::string> expected, got;
  for (const auto& p : json::parse(pip.out))
    expected.insert(normalise(p["name"].get<std::string>()) +
                    "==" + p["version"].get<std::string>());
  for (const auto& p : env["packages"])
    got.insert(normalise(p["name"].get<std::string>()) + "==" + p["version"].get<std::string>());
  CHECK(expected.size() > 50);
  CHECK(got == expected);

  // Every regular file and symlink under the prefix appears exactly once.
  auto find =
      run_command({"find", prefix, "(", "-type", "f", "-o", "-type", "l", ")", "-printf", "%P\\n"});
  REQUIRE(find.exit_code == 0);
  std::set<std::string> on_disk;
  size_t start = 0;
  while (start < find.out.size()) {
    size_t end = find.out.find('\n', start);
    on_disk.insert(find.out.substr(start, end - start));
    start = end + 1;
  }
  auto listed = all_paths(env);
  CHECK(listed.size() == on_disk.size());
  CHECK(listed == on_disk);
  CHECK(s.summary["files"].get<size_t>() == on_disk.size());
  CHECK(s.summary["snapshot_digest"].get<std::string>().rfind("sha256:", 0) == 0);

  // A second run hits the stat cache and gives the same digest.
  auto again = snapshot(dir, {"--prefix", prefix, "--no-src"});
  REQUIRE(again.run.exit_code == 0);
  CHECK(again.summary["snapshot_digest"] == s.summary["snapshot_digest"]);
}

TEST_CASE(
    "a venv with system site-packages: the venv, and its base interpreter as a partial "
    "environment") {
  ScratchDir dir;
  auto venv = dir / "venv";
  auto mk = run_command(
      {"/usr/bin/python3", "-m", "venv", "--without-pip", "--system-site-packages", venv.string()});
  REQUIRE(mk.exit_code == 0);
  auto before = tree_listing(venv);
  auto s = snapshot(dir, {"--prefix", venv.string(), "--no-src"});
  INFO(s.run.err);
  REQUIRE(s.run.exit_code == 0);
  REQUIRE(s.doc["environments"].size() == 2);
  const auto& v = s.doc["environments"][0];
  const auto& base = s.doc["environments"][1];
  CHECK(v["kind"] == "venv");
  CHECK(v["base_prefix"] == "/usr");
  CHECK(v["system_site_packages"] == true);
  CHECK(base["prefix"] == "/usr");
  CHECK(base["partial"] == true);
  auto base_paths = all_paths(base);
  CHECK(base_paths.count("bin/python3.11") == 1);
  CHECK(base_paths.count("lib/python3.11/os.py") == 1);
  // Debian's python3-distributed lives in the system site-packages the venv includes.
  bool has_distributed = std::any_of(base["packages"].begin(), base["packages"].end(),
                                     [](const json& p) { return p["name"] == "distributed"; });
  CHECK(has_distributed);
  CHECK(tree_listing(venv) == before);
}

TEST_CASE(
    "a git source tree: tracked and untracked files, ignores, symlinks not followed, secrets "
    "blocked") {
  ScratchDir dir;
  auto repo = dir / "repo";
  write_file(repo / "src/app.py", "print('hi')\n");
  write_file(repo / ".gitignore", "*.log\nbuild/\n");
  write_file(repo / "debug.log", "noise\n");
  write_file(repo / "build/out.bin", "bin\n");
  write_file(dir / "outside/data.txt", "outside\n");
  std::filesystem::create_directory_symlink(dir / "outside", repo / "data");
  auto git = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = {"git",         "-C", repo.string(),   "-c",
                                     "user.name=t", "-c", "user.email=t@e"};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = run_command(argv);
    REQUIRE(r.exit_code == 0);
    return r.out;
  };
  git({"init", "-q"});
  git({"add", "src/app.py", ".gitignore"});
  git({"commit", "-q", "-m", "init"});
  std::string head = git({"rev-parse", "HEAD"});
  head.pop_back();
  write_file(repo / "notes.md", "untracked\n");
  write_file(repo / "keys/id_rsa", "-----BEGIN OPENSSH PRIVATE KEY-----\n");
  auto prefix = pyenv_prefix();
  std::string py = std::filesystem::exists(prefix) ? prefix : "/usr";
  auto before = tree_listing(repo);

  auto blocked = snapshot(dir, {"--prefix", py, "--src", repo.string()});
  CHECK(blocked.run.exit_code == 1);
  CHECK(blocked.run.err.find((repo / "keys/id_rsa").string()) != std::string::npos);

  auto s = snapshot(dir, {"--prefix", py, "--src", repo.string(), "--allow-secret", "keys/id_rsa"});
  INFO(s.run.err);
  REQUIRE(s.run.exit_code == 0);
  REQUIRE(s.doc["sources"].size() == 1);
  const auto& src = s.doc["sources"][0];
  CHECK(src["root"] == repo.string());
  CHECK(src["git_commit"] == head);
  CHECK(src["dirty"] == true);
  std::vector<std::string> paths;
  for (const auto& f : src["files"]) paths.push_back(f["path"]);
  CHECK(paths ==
        std::vector<std::string>{".gitignore", "data", "keys/id_rsa", "notes.md", "src/app.py"});
  const auto& link = src["files"][1];
  CHECK(link["type"] == "symlink");
  CHECK(link["target"] == (dir / "outside").string());
  CHECK(tree_listing(repo) == before);
}

TEST_CASE("bad input: exit codes and messages that name the input") {
  ScratchDir dir;
  write_file(dir / "notenv/file.txt", "x");
  auto not_env = snapshot(dir, {"--prefix", (dir / "notenv").string(), "--no-src"});
  CHECK(not_env.run.exit_code == 1);
  CHECK(not_env.run.err.find((dir / "notenv").string()) != std::string::npos);
  CHECK(not_env.run.err.find("not a Python environment") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir / "out.json"));

  auto missing = snapshot(dir, {"--prefix", (dir / "missing").string(), "--no-src"});
  CHECK(missing.run.exit_code == 1);
  CHECK(missing.run.err.find((dir / "missing").string()) != std::string::npos);

  auto usage = run_command({envd_binary(), "snapshot", "--no-such-flag"});
  CHECK(usage.exit_code == 2);
  auto no_command = run_command({envd_binary()});
  CHECK(no_command.exit_code == 2);
  auto help = run_command({envd_binary(), "snapshot", "--help"});
  CHECK(help.exit_code == 0);
  CHECK(help.out.find("--prefix") != std::string::npos);
  auto version = run_command({envd_binary(), "version"});
  CHECK(version.exit_code == 0);
  CHECK(version.out.rfind("envd ", 0) == 0);
}

TEST_CASE("broken metadata gives warnings naming the file; the snapshot still completes") {
  ScratchDir dir;
  auto prefix = dir / "conda";
  write_file(prefix / "conda-meta/history", "");
  write_file(prefix / "conda-meta/broken-1.0-0.json", "{ not json");
  write_file(prefix / "lib/python3.11/site-packages/ghost-1.0.dist-info/METADATA",
             "Name: ghost\nVersion: 1.0\n\n");
  write_file(prefix / "lib/python3.11/site-packages/ghost-1.0.dist-info/RECORD",
             "ghost/__init__.py,,\nghost-1.0.dist-info/METADATA,,\n");
  std::filesystem::create_symlink("nowhere", prefix / "dangling");
  write_file(prefix / "weird\xfe.txt", "x");
  auto before = tree_listing(prefix);
  auto s = snapshot(dir, {"--prefix", prefix.string(), "--no-src"});
  INFO(s.run.err);
  REQUIRE(s.run.exit_code == 0);
  CHECK(s.run.err.find("broken-1.0-0.json") != std::string::npos);
  CHECK(s.run.err.find("ghost-1.0.dist-info") != std::string::npos);
  CHECK(s.run.err.find("weird\\\\xfe.txt") != std::string::npos);
  auto paths = all_paths(s.doc["environments"][0]);
  CHECK(paths.count("dangling") == 1);
  CHECK(tree_listing(prefix) == before);
}

TEST_CASE("an unreadable file fails the snapshot naming it (run as an unprivileged user)") {
  ScratchDir dir;
  auto prefix = dir / "py";
  write_file(prefix / "bin/python3", "#!/bin/sh\n");
  write_file(prefix / "lib/python3.11/os.py", "");
  write_file(prefix / "lib/python3.11/secret.py", "hidden");
  ::chmod((prefix / "lib/python3.11/secret.py").c_str(), 0);
  std::filesystem::create_directories(dir / "home");
  for (auto p : {dir.path(), dir / "home"}) ::chmod(p.c_str(), 0777);
  for (const auto& e : std::filesystem::recursive_directory_iterator(prefix))
    if (e.is_directory()) ::chmod(e.path().c_str(), 0755);
  ::chmod(prefix.c_str(), 0755);
  auto before = tree_listing(prefix);
  auto r = run_command({"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        envd_binary(), "snapshot", "--prefix", prefix.string(), "--no-src"},
                       {{"ENVD_HOME", (dir / "home").string()}});
  CHECK(r.exit_code == 1);
  CHECK(r.err.find((prefix / "lib/python3.11/secret.py").string()) != std::string::npos);
  CHECK(r.err.find("Permission denied") != std::string::npos);
  CHECK(tree_listing(prefix) == before);
}

TEST_CASE("the envd executable allocates with jemalloc configured for huge pages and one arena") {
  // jemalloc prints its options at exit when asked to; losing the link or the compiled-in
  // configuration (envd/cli/malloc_conf.cpp) would bring back the page-fault cost it removes.
  auto r = run_command({envd_binary(), "--version"}, {{"MALLOC_CONF", "stats_print:true"}});
  REQUIRE(r.exit_code == 0);
  const std::string all = r.out + r.err;
  CHECK(all.find("opt.thp: \"always\"") != std::string::npos);
  CHECK(all.find("opt.narenas: 1\n") != std::string::npos);
}

TEST_CASE("the envd executable loads libgit2 and libarchive only when a command uses them") {
  // envd/util/lazy_library.hpp: linked directly again, every command would pay ~10 ms at start
  // to load and relocate them and the libraries they bring in.
  auto r = run_command({"readelf", "-d", envd_binary()});
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("(NEEDED)") != std::string::npos);
  CHECK(r.out.find("libgit2") == std::string::npos);
  CHECK(r.out.find("libarchive") == std::string::npos);
  // A command that needs neither starts without them (the dynamic loader lists what it loads).
  auto loaded = run_command({envd_binary(), "version"}, {{"LD_DEBUG", "libs"}});
  REQUIRE(loaded.exit_code == 0);
  CHECK(loaded.err.find("libjemalloc") != std::string::npos);
  CHECK(loaded.err.find("libgit2") == std::string::npos);
  CHECK(loaded.err.find("libarchive") == std::string::npos);
}
