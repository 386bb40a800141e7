// `envd diff` and `envd watch` end to end with the envd binary: diff after an upgrade, a removal
// and a source edit reports exactly those (embedded builder); watch pushes each change to a real
// `envd builder serve` child, survives the builder being down at start and while a change
// happens (restarted on the same port and data dir), and stops with exit 0 on SIGTERM.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <httplib.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "envd/registry/distribution_fixture.hpp"
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
using SteadyClock = std::chrono::steady_clock;
using namespace std::chrono_literals;

const std::string k_site = "lib/python3.11/site-packages/";

// A small pip prefix: an interpreter stand-in and packages p0..p2 at 1.0.
void make_prefix(const fs::path& prefix) {
  write_file(prefix / "bin/python3", "#!/bin/sh\necho python\n");
  fs::permissions(prefix / "bin/python3", fs::perms(0755));
  write_file(prefix / "lib/python3.11/os.py", "# os\n");
  envd::test::write_pip_packages(prefix, "p", 3);
}

void git(const fs::path& dir, std::vector<std::string> args) {
  std::vector<std::string> argv = {"git",
                                   "-c",
                                   "init.defaultBranch=main",
                                   "-c",
                                   "user.name=envd test",
                                   "-c",
                                   "user.email=t@example.invalid"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r =
      run_command(argv, {{"GIT_CONFIG_NOSYSTEM", "1"}, {"GIT_CONFIG_GLOBAL", "/dev/null"}}, dir);
  INFO("git " << args.front() << ": " << r.err);
  REQUIRE(r.exit_code == 0);
}

void make_repo(const fs::path& repo) {
  write_file(repo / "src/model.py", "v = 1\n");
  write_file(repo / "src/util.py", "u = 1\n");
  write_file(repo / "README.md", "readme\n");
  write_file(repo / ".gitignore", "*.log\n");
  git(repo, {"init", "-q"});
  git(repo, {"add", "-A"});
  git(repo, {"commit", "-q", "-m", "init"});
}

// One pip package `name` at `version`, as pip lays it out.
void write_package(const fs::path& prefix, const std::string& name, const std::string& version,
                   const std::string& code) {
  const std::string info = name + "-" + version + ".dist-info";
  write_file(prefix / (k_site + name + "/__init__.py"), code);
  write_file(prefix / (k_site + info + "/METADATA"),
             "Name: " + name + "\nVersion: " + version + "\n\n");
  write_file(prefix / (k_site + info + "/RECORD"),
             name + "/__init__.py,,\n" + info + "/METADATA,,\n" + info + "/RECORD,,\n");
}

struct Setup {
  ScratchDir dir;
  fs::path prefix = dir / "env";
  fs::path repo = dir / "proj";
  Env env;
  Setup() {
    make_prefix(prefix);
    make_repo(repo);
    env = {{"ENVD_HOME", (dir / "home").string()},
           {"XDG_CONFIG_HOME", (dir / "config").string()},
           {"ENVD_BUILDER", ""},
           {"ENVD_LOG_LEVEL", "info"}};
  }
  std::vector<std::string> cmd(const std::string& sub, std::vector<std::string> extra = {}) const {
    std::vector<std::string> argv = {envd::test::envd_binary(), sub,     "--prefix",
                                     prefix.string(),           "--src", repo.string()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
  }
};

TEST_CASE("envd diff with nothing pushed yet says so and exits 1") {
  Setup s;
  auto r = run_command(s.cmd("diff", {"--name", "team/nothing"}), s.env);
  INFO(r.err);
  CHECK(r.exit_code == 1);
  CHECK(r.out.empty());
  CHECK(r.err.find("team/nothing was never pushed") != std::string::npos);
  CHECK(r.err.find("envd push --name team/nothing") != std::string::npos);
  CHECK_FALSE(fs::exists(s.dir / "home/pushed"));

  auto bad = run_command(s.cmd("diff", {"--name", "Bad Name"}), s.env);
  CHECK(bad.exit_code == 1);
  CHECK(bad.err.find("Bad Name") != std::string::npos);
}

TEST_CASE("envd diff after an upgrade, a removal and a source edit reports exactly those") {
  Setup s;
  auto push = run_command(s.cmd("push", {"--name", "team/diff", "--json"}), s.env);
  INFO(push.err);
  REQUIRE(push.exit_code == 0);

  auto same = run_command(s.cmd("diff", {"--name", "team/diff", "--json"}), s.env);
  INFO(same.err);
  REQUIRE(same.exit_code == 0);
  auto j = last_json_line(same.out);
  CHECK(j["changed"] == false);
  CHECK(j["environments"].empty());
  CHECK(j["sources"].empty());
  CHECK(j["summary"] == "no changes");
  auto human = run_command(s.cmd("diff", {"--name", "team/diff"}), s.env);
  CHECK(human.out.find("No changes since the last push of team/diff") != std::string::npos);

  // Upgrade p1 1.0 -> 2.0, remove p2, edit a source file.
  fs::remove_all(s.prefix / (k_site + "p1-1.0.dist-info"));
  write_package(s.prefix, "p1", "2.0", "X = 'two'\n");
  fs::remove_all(s.prefix / (k_site + "p2"));
  fs::remove_all(s.prefix / (k_site + "p2-1.0.dist-info"));
  write_file(s.repo / "src/model.py", "v = 2\n");

  const auto pushed_before = envd::test::tree_listing(s.dir / "home/pushed");
  const auto prefix_before = envd::test::tree_listing(s.prefix);
  const auto repo_before = envd::test::tree_listing(s.repo);
  auto r = run_command(s.cmd("diff", {"--name", "team/diff", "--json"}), s.env);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  j = last_json_line(r.out);
  CHECK(j["changed"] == true);
  CHECK(j["repository"] == "team/diff");
  CHECK(j["previous_snapshot_digest"] != j["snapshot_digest"]);
  REQUIRE(j["environments"].size() == 1);
  const json& e = j["environments"][0];
  CHECK(e["prefix"] == s.prefix.string());
  CHECK(e["status"] == "changed");
  CHECK(e["added"] == json::array());
  CHECK(e["removed"] == json::parse(R"([{"name":"p2","manager":"pip","version":"1.0"}])"));
  CHECK(e["upgraded"] == json::parse(R"([{"name":"p1","manager":"pip","old":"1.0","new":"2.0"}])"));
  CHECK(e["downgraded"] == json::array());
  CHECK(e["files_changed"] == json::array());
  CHECK(e["unowned"] == json::parse(R"({"added":[],"removed":[],"modified":[]})"));
  CHECK(e["other"] == json::array());
  REQUIRE(j["sources"].size() == 1);
  const json& src = j["sources"][0];
  CHECK(src["root"] == s.repo.string());
  CHECK(src["files"] == json::parse(R"({"added":[],"removed":[],"modified":["src/model.py"]})"));
  CHECK(src["other"] == json::parse(R"(["dirty false -> true"])"));
  CHECK(j["other"] == json::array());
  CHECK(j["summary"] == "-p2 1.0, p1 1.0 -> 2.0, src: 1 file, src dirty false -> true");

  // The table says the same.
  auto t = run_command(s.cmd("diff", {"--name", "team/diff"}), s.env);
  REQUIRE(t.exit_code == 0);
  CHECK(t.out.find("Changes since the last push of team/diff") != std::string::npos);
  CHECK(t.out.find("CHANGE") != std::string::npos);
  CHECK(t.out.find("removed   p2") != std::string::npos);
  CHECK(t.out.find("upgraded  p1") != std::string::npos);
  CHECK(t.out.find("M src/model.py") != std::string::npos);
  CHECK(t.out.find("added ") == std::string::npos);

  // diff only reads: the trees and the push record are as they were.
  CHECK(envd::test::tree_listing(s.dir / "home/pushed") == pushed_before);
  CHECK(envd::test::tree_listing(s.prefix) == prefix_before);
  CHECK(envd::test::tree_listing(s.repo) == repo_before);
}

// `envd builder serve --listen 127.0.0.1:PORT --data DIR` as a child; SIGTERMed by stop().
class Builder {
 public:
  Builder(int port, const fs::path& data, const fs::path& log) {
    m_pid = ::fork();
    REQUIRE(m_pid >= 0);
    if (m_pid == 0) {
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      std::vector<std::string> argv = {
          envd::test::envd_binary(),           "builder", "serve",      "--listen",
          "127.0.0.1:" + std::to_string(port), "--data",  data.string()};
      std::vector<char*> raw;
      for (auto& a : argv) raw.push_back(a.data());
      raw.push_back(nullptr);
      ::execv(raw[0], raw.data());
      _exit(127);
    }
    // Bounded: up once /v2/ answers.
    const auto deadline = SteadyClock::now() + 30s;
    while (envd::registry::test_support::probe_v2(port) == 0 && SteadyClock::now() < deadline) {
      REQUIRE(::waitpid(m_pid, nullptr, WNOHANG) == 0);  // still running
      ::poll(nullptr, 0, 20);
    }
    INFO(envd::test::read_file(log));
    REQUIRE(envd::registry::test_support::probe_v2(port) != 0);
  }
  ~Builder() { stop(); }
  Builder(const Builder&) = delete;
  Builder& operator=(const Builder&) = delete;
  int stop() {
    if (m_pid <= 0) return m_exit;
    ::kill(m_pid, SIGTERM);
    int status = 0;
    ::waitpid(m_pid, &status, 0);
    m_pid = -1;
    m_exit = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return m_exit;
  }

 private:
  pid_t m_pid = -1;
  int m_exit = -1;
};

// `envd watch ...` as a child whose stderr (the log) the test reads as it comes.
class Watcher {
 public:
  Watcher(const std::vector<std::string>& argv, const Env& env) {
    int err[2];
    REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
    m_pid = ::fork();
    REQUIRE(m_pid >= 0);
    if (m_pid == 0) {
      ::dup2(err[1], 2);
      int null = ::open("/dev/null", O_RDWR);
      ::dup2(null, 0);
      ::dup2(null, 1);
      for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
      std::vector<char*> raw;
      for (const auto& a : argv) raw.push_back(const_cast<char*>(a.c_str()));
      raw.push_back(nullptr);
      ::execv(raw[0], raw.data());
      _exit(127);
    }
    ::close(err[1]);
    m_err = err[0];
  }
  ~Watcher() {
    if (m_pid > 0) {
      ::kill(m_pid, SIGKILL);
      ::waitpid(m_pid, nullptr, 0);
    }
    ::close(m_err);
  }
  Watcher(const Watcher&) = delete;
  Watcher& operator=(const Watcher&) = delete;

  // The first log line from `from` on containing every one of `needles`; "" at the deadline.
  std::string wait_line(const std::vector<std::string>& needles, std::size_t from,
                        std::chrono::seconds patience = 60s) {
    const auto deadline = SteadyClock::now() + patience;
    for (;;) {
      std::size_t start = from;
      for (std::size_t end; (end = m_log.find('\n', start)) != std::string::npos; start = end + 1) {
        const std::string line = m_log.substr(start, end - start);
        bool all = true;
        for (const auto& n : needles) all = all && line.find(n) != std::string::npos;
        if (all) return line;
      }
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now());
      if (left.count() <= 0 || !read_some(static_cast<int>(left.count()))) return "";
    }
  }
  std::size_t log_size() {
    while (read_some(0)) {
    }
    return m_log.size();
  }
  const std::string& log() const { return m_log; }

  // SIGTERM, then the exit code within `patience` (-1 if it did not exit).
  int terminate(std::chrono::seconds patience) {
    ::kill(m_pid, SIGTERM);
    const auto deadline = SteadyClock::now() + patience;
    while (SteadyClock::now() < deadline) {
      int status = 0;
      if (::waitpid(m_pid, &status, WNOHANG) == m_pid) {
        m_pid = -1;
        while (read_some(0)) {
        }
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      read_some(20);
    }
    return -1;
  }

 private:
  // Reads what the child wrote within `timeout_ms`; false when nothing came (or EOF).
  bool read_some(int timeout_ms) {
    pollfd p{m_err, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0) return false;
    char buf[4096];
    const ssize_t n = ::read(m_err, buf, sizeof buf);
    if (n <= 0) {
      if (timeout_ms > 0) ::poll(nullptr, 0, std::min(timeout_ms, 20));  // EOF: the child left
      return false;
    }
    m_log.append(buf, static_cast<std::size_t>(n));
    return true;
  }

  pid_t m_pid = -1;
  int m_err = -1;
  std::string m_log;
};

// Waits (tag watch long poll, bounded) until team/watch:latest names a manifest other than
// `known`; returns it, or "" at the deadline. While the builder is down, tries again shortly.
std::string next_digest(int port, const std::string& known, std::chrono::seconds patience = 60s) {
  const auto deadline = SteadyClock::now() + patience;
  while (SteadyClock::now() < deadline) {
    const auto left =
        std::chrono::duration_cast<std::chrono::seconds>(deadline - SteadyClock::now()).count();
    const long wait = std::max<long>(1, std::min<long>(10, static_cast<long>(left)));
    httplib::Client client("127.0.0.1", port);
    client.set_connection_timeout(2);
    client.set_read_timeout(wait + 5);
    auto res =
        client.Get("/envd/v1/team/watch/tags/latest/watch?wait_seconds=" + std::to_string(wait) +
                   (known.empty() ? "" : "&digest=" + known));
    if (res && res->status == 200) {
      auto j = json::parse(res->body);
      if (j["digest"].is_string() && j["digest"] != known) return j["digest"];
      continue;
    }
    ::poll(nullptr, 0, 100);  // builder down: ask again shortly
  }
  return "";
}

TEST_CASE("envd watch pushes each change, survives a builder that is down, stops on SIGTERM") {
  Setup s;
  const int port = envd::registry::test_support::free_port();
  const fs::path data = s.dir / "builder-data";
  const fs::path builder_log = s.dir / "builder.log";
  const std::string url = "http://127.0.0.1:" + std::to_string(port);
  Watcher watch(s.cmd("watch", {"--name", "team/watch", "--builder", url, "--debounce", "0.2",
                                "--retry-max", "1"}),
                s.env);
  INFO("watch log:\n" << watch.log());

  // The builder is not up yet: the first push fails and is retried.
  CHECK(watch.wait_line({"push failed; retrying"}, 0) != "");
  auto builder = std::make_unique<Builder>(port, data, builder_log);
  const std::string d1 = next_digest(port, "");
  REQUIRE(d1 != "");
  CHECK(watch.wait_line({"msg=pushed", d1, "first push of team/watch"}, 0) != "");

  // A source edit: a new digest, logged with what changed.
  std::size_t mark = watch.log_size();
  write_file(s.repo / "src/model.py", "v = 2\n");
  const std::string d2 = next_digest(port, d1);
  REQUIRE(d2 != "");
  CHECK(watch.wait_line({"msg=pushed", d2, "src: 1 file"}, mark) != "");

  // A new package.
  mark = watch.log_size();
  write_package(s.prefix, "q0", "1.0", "Q = 0\n");
  const std::string d3 = next_digest(port, d2);
  REQUIRE(d3 != "");
  CHECK(watch.wait_line({"msg=pushed", d3, "+q0 1.0"}, mark) != "");

  // The builder goes down; a change happens; it is pushed once the builder is back (same port,
  // same data).
  CHECK(builder->stop() == 0);
  mark = watch.log_size();
  write_file(s.repo / "src/util.py", "u = 2\n");
  CHECK(watch.wait_line({"push failed; retrying"}, mark) != "");
  builder = std::make_unique<Builder>(port, data, builder_log);
  const std::string d4 = next_digest(port, d3);
  REQUIRE(d4 != "");
  CHECK(watch.wait_line({"msg=pushed", d4, "src: 1 file"}, mark) != "");

  // Nothing was lost: the last push recorded is the tree as it is now.
  auto diff = run_command(s.cmd("diff", {"--name", "team/watch", "--json"}), s.env);
  INFO(diff.err);
  REQUIRE(diff.exit_code == 0);
  CHECK(last_json_line(diff.out)["changed"] == false);

  // An ignored file is no change: no push.
  mark = watch.log_size();
  write_file(s.repo / "debug.log", "ignored\n");
  CHECK(next_digest(port, d4, 2s) == "");

  CHECK(watch.terminate(30s) == 0);
  CHECK(watch.log().find("msg=stopped") != std::string::npos);
  CHECK(watch.log().find("msg=pushed", mark) == std::string::npos);
}

TEST_CASE("envd watch: bad flags are usage errors; a missing prefix fails naming it") {
  Setup s;
  auto r = run_command(s.cmd("watch", {"--debounce", "0"}), s.env);
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("--debounce") != std::string::npos);
  r = run_command({envd::test::envd_binary(), "watch", "--prefix", (s.dir / "nope").string(),
                   "--src", s.repo.string()},
                  s.env);
  CHECK(r.exit_code == 1);
  CHECK(r.err.find((s.dir / "nope").string()) != std::string::npos);
  CHECK_FALSE(fs::exists(s.dir / "nope"));
}

}  // namespace
