// Tests of ChangeWatcher with real inotify on scratch directories: package metadata appearing and
// disappearing, conda-meta, source edits, ignore rules, new directories, the debounce (a burst
// is one batch; a fake clock holds and releases it; max_delay), stop, the polling fallback at the
// watch limit, and bad roots. Every wait is bounded; nothing sleeps.
#include "agent/change_watcher.hpp"

#include <doctest/doctest.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "support/run_command.hpp"
#include "support/scratch_dir.hpp"

template <>
struct doctest::StringMaker<std::vector<std::string>> {
  static doctest::String convert(const std::vector<std::string>& paths) {
    std::string out = "{";
    for (const std::string& p : paths) out += "\"" + p + "\" ";
    out += "}";
    return out.c_str();
  }
};

namespace envd::agent {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using envd::test::ScratchDir;
using envd::test::write_file;
using Paths = std::vector<std::string>;
using SteadyClock = std::chrono::steady_clock;

const std::string k_site = "lib/python3.11/site-packages/";

// Bounded waits: long enough for a loaded machine, short enough to fail fast.
constexpr auto k_patience = 10s;
// For "nothing happens" checks: several debounce periods.
constexpr auto k_quiet_check = 400ms;

WatchOptions fast_options() {
  WatchOptions o;
  o.debounce = 50ms;
  o.scan_interval = 50ms;
  return o;
}

std::unique_ptr<ChangeWatcher> watcher(const WatchSet& set, const WatchOptions& options) {
  auto w = ChangeWatcher::create(set, options);
  INFO((w ? "" : w.error().message()));
  REQUIRE(w);
  return std::move(*w);
}

ChangeSet next_change(ChangeWatcher& w) {
  auto r = w.wait(SteadyClock::now() + k_patience);
  REQUIRE(r);
  REQUIRE(r->status == WaitStatus::changed);
  return r->changes;
}

void expect_quiet(ChangeWatcher& w) {
  auto r = w.wait(SteadyClock::now() + k_quiet_check);
  REQUIRE(r);
  CHECK(r->status == WaitStatus::timeout);
  if (r->status == WaitStatus::changed) CHECK(r->changes.paths == Paths{});
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
  auto r = envd::test::run_command(
      argv, {{"GIT_CONFIG_NOSYSTEM", "1"}, {"GIT_CONFIG_GLOBAL", "/dev/null"}}, dir);
  INFO("git " << args.front() << ": " << r.err);
  REQUIRE(r.exit_code == 0);
}

// A pip-style prefix with one installed package.
fs::path make_prefix(const ScratchDir& dir) {
  const fs::path prefix = dir / "env";
  write_file(prefix / (k_site + "six.py"), "# six\n");
  write_file(prefix / (k_site + "six-1.16.0.dist-info/METADATA"), "Name: six\nVersion: 1.16.0\n");
  write_file(prefix / (k_site + "six-1.16.0.dist-info/RECORD"), "six.py,,\n");
  write_file(prefix / "bin/python3", "#!/bin/sh\n");
  return prefix;
}

// A git work tree with a .gitignore, a tracked file the rules match, and an .envdignore.
fs::path make_repo(const ScratchDir& dir) {
  const fs::path repo = dir / "proj";
  write_file(repo / "src/model.py", "v = 1\n");
  write_file(repo / "README.md", "readme\n");
  write_file(repo / ".gitignore", "*.log\nbuild/\n");
  write_file(repo / ".envdignore", "data/\n");
  write_file(repo / "keep.log", "tracked although ignored\n");
  write_file(repo / "build/old.o", "o");
  write_file(repo / "data/big.bin", "d");
  git(repo, {"init", "-q"});
  git(repo, {"add", "-A"});
  git(repo, {"add", "-f", "keep.log"});
  git(repo, {"commit", "-q", "-m", "init"});
  return repo;
}

TEST_CASE("a new dist-info directory, a removed package and a changed RECORD are reported") {
  ScratchDir dir;
  const fs::path prefix = make_prefix(dir);
  auto w = watcher({{prefix}, {}, {}, {}}, fast_options());
  CHECK(w->mode() == WatchMode::inotify);

  // pip install: module files, then the dist-info directory.
  write_file(prefix / (k_site + "rich/__init__.py"), "# rich\n");
  write_file(prefix / (k_site + "rich-13.7.0.dist-info/RECORD"), "rich/__init__.py,,\n");
  auto c = next_change(*w);
  CHECK(c.environment);
  CHECK_FALSE(c.source);
  CHECK(c.paths == Paths{(prefix / (k_site + "rich-13.7.0.dist-info")).string()});

  // The new metadata directory is watched: a rewritten RECORD is a change.
  write_file(prefix / (k_site + "rich-13.7.0.dist-info/RECORD"), "rich/__init__.py,,\nx,,\n");
  c = next_change(*w);
  CHECK(c.paths == Paths{(prefix / (k_site + "rich-13.7.0.dist-info/RECORD")).string()});

  // pip uninstall six.
  fs::remove_all(prefix / (k_site + "six-1.16.0.dist-info"));
  fs::remove(prefix / (k_site + "six.py"));
  c = next_change(*w);
  CHECK(c.environment);
  // The RECORD and METADATA deletions come from the dist-info's own watch.
  CHECK(std::find(c.paths.begin(), c.paths.end(),
                  (prefix / (k_site + "six-1.16.0.dist-info")).string()) != c.paths.end());

  // A .pth file (an editable install) counts; a module edit inside a package does not.
  write_file(prefix / (k_site + "__editable__.mypkg-0.1.pth"), "/home/u/mypkg/src\n");
  c = next_change(*w);
  CHECK(c.paths == Paths{(prefix / (k_site + "__editable__.mypkg-0.1.pth")).string()});
  write_file(prefix / (k_site + "rich/__init__.py"), "# edited\n");
  expect_quiet(*w);
}

TEST_CASE("conda-meta records appearing and disappearing are reported") {
  ScratchDir dir;
  const fs::path prefix = make_prefix(dir);
  write_file(prefix / "conda-meta/history", "");
  auto w = watcher({{prefix}, {}, {}, {}}, fast_options());
  write_file(prefix / "conda-meta/numpy-1.26.4-py311h_0.json", "{}");
  auto c = next_change(*w);
  CHECK(c.environment);
  CHECK(c.paths == Paths{(prefix / "conda-meta/numpy-1.26.4-py311h_0.json").string()});
  fs::remove(prefix / "conda-meta/numpy-1.26.4-py311h_0.json");
  c = next_change(*w);
  CHECK(c.paths == Paths{(prefix / "conda-meta/numpy-1.26.4-py311h_0.json").string()});
}

TEST_CASE("a source edit is reported; ignored files are not, tracked ones matching a rule are") {
  ScratchDir dir;
  const fs::path repo = make_repo(dir);
  WatchSet set;
  set.sources = {repo};
  set.extra_ignores = {"*.tmp"};
  auto w = watcher(set, fast_options());
  // proj, src: ignored build/ and data/ are not watched, nor .git.
  CHECK(w->watch_count() == 2);

  write_file(repo / "src/model.py", "v = 2\n");
  write_file(repo / "debug.log", "ignored by .gitignore\n");
  write_file(repo / "build/new.o", "ignored directory\n");
  write_file(repo / "data/more.bin", "ignored by .envdignore\n");
  write_file(repo / "src/scratch.tmp", "ignored by config\n");
  write_file(repo / "keep.log", "tracked, edited\n");
  fs::create_directory(repo / "build2");  // an empty new directory: nothing to capture
  auto c = next_change(*w);
  CHECK(c.source);
  CHECK_FALSE(c.environment);
  CHECK(c.paths == Paths{(repo / "keep.log").string(), (repo / "src/model.py").string()});

  // Only ignored activity: no batch at all.
  write_file(repo / "other.log", "x");
  write_file(repo / "build/sub/deep.o", "x");
  git(repo, {"status", "--short"});  // writes .git/index: never watched
  expect_quiet(*w);
}

TEST_CASE("an excluded directory inside a source tree (envd's state) is never a change") {
  ScratchDir dir;
  const fs::path repo = make_repo(dir);
  write_file(repo / "state/cache.db", "0");
  WatchSet set;
  set.sources = {repo};
  set.excluded = {repo / "state/"};
  auto w = watcher(set, fast_options());
  CHECK(w->watch_count() == 2);  // proj, src
  write_file(repo / "state/cache.db", "1");
  write_file(repo / "state/pushed/record.json", "{}");
  fs::remove_all(repo / "state");
  expect_quiet(*w);
  write_file(repo / "src/model.py", "v = 3\n");
  CHECK(next_change(*w).paths == Paths{(repo / "src/model.py").string()});
}

TEST_CASE("a new subdirectory is watched: its files, and files written into it later") {
  ScratchDir dir;
  const fs::path repo = make_repo(dir);
  auto w = watcher({{}, {repo}, {}, {}}, fast_options());
  const std::size_t before = w->watch_count();

  fs::create_directories(repo / "pkg/sub/deeper");
  write_file(repo / "pkg/sub/deeper/first.py", "1\n");
  auto c = next_change(*w);
  CHECK(c.source);
  // Whether inotify saw the file or the walk of the new directory found it, it is reported.
  CHECK(!c.paths.empty());
  CHECK(w->watch_count() == before + 3);

  write_file(repo / "pkg/sub/deeper/second.py", "2\n");
  c = next_change(*w);
  CHECK(c.paths == Paths{(repo / "pkg/sub/deeper/second.py").string()});

  // A directory moved in from outside the tree, and one removed.
  write_file(dir / "outside/mod.py", "m\n");
  fs::rename(dir / "outside", repo / "moved");
  c = next_change(*w);
  CHECK(c.paths == Paths{(repo / "moved").string()});
  write_file(repo / "moved/mod.py", "m2\n");
  c = next_change(*w);
  CHECK(c.paths == Paths{(repo / "moved/mod.py").string()});
  fs::remove_all(repo / "pkg");
  c = next_change(*w);
  CHECK(std::find(c.paths.begin(), c.paths.end(), (repo / "pkg").string()) != c.paths.end());
  CHECK(w->watch_count() == before + 1);  // pkg's three gone, moved/ added
}

TEST_CASE("editing .gitignore to un-ignore a directory starts watching it") {
  ScratchDir dir;
  const fs::path repo = make_repo(dir);
  auto w = watcher({{}, {repo}, {}, {}}, fast_options());
  write_file(repo / ".gitignore", "*.log\n");
  auto c = next_change(*w);
  CHECK(c.paths == Paths{(repo / ".gitignore").string()});
  write_file(repo / "build/now_included.o", "x");
  c = next_change(*w);
  CHECK(c.paths == Paths{(repo / "build/now_included.o").string()});
}

TEST_CASE("a burst of changes is one batch") {
  ScratchDir dir;
  const fs::path repo = make_repo(dir);
  auto w = watcher({{}, {repo}, {}, {}}, fast_options());
  Paths expected;
  for (int i = 0; i < 50; ++i) {
    const fs::path f = repo / ("src/gen_" + std::to_string(100 + i) + ".py");
    write_file(f, "x = " + std::to_string(i) + "\n");
    write_file(f, "x = " + std::to_string(i) + "  # again\n");
    expected.push_back(f.string());
  }
  auto c = next_change(*w);
  CHECK(c.paths == expected);
  CHECK(c.paths_dropped == 0);
  expect_quiet(*w);
}

// A clock the test moves by hand.
struct FakeClock {
  std::shared_ptr<std::atomic<std::int64_t>> ms = std::make_shared<std::atomic<std::int64_t>>(0);
  std::function<SteadyClock::time_point()> fn() const {
    return [ms = ms] { return SteadyClock::time_point(std::chrono::milliseconds(ms->load())); };
  }
  void advance(std::chrono::milliseconds d) { *ms += d.count(); }
};

TEST_CASE("the debounce holds a batch until the clock says it has been quiet long enough") {
  ScratchDir dir;
  const fs::path repo = make_repo(dir);
  FakeClock clock;
  WatchOptions options;
  options.debounce = 1000ms;
  options.max_delay = 1500ms;
  options.clock = clock.fn();
  auto w = watcher({{}, {repo}, {}, {}}, options);

  write_file(repo / "src/a.py", "a\n");
  auto r = w->wait(SteadyClock::now() + 200ms);
  REQUIRE(r);
  CHECK(r->status == WaitStatus::timeout);
  CHECK(w->pending());

  clock.advance(999ms);
  r = w->wait(SteadyClock::now() + 100ms);
  REQUIRE(r);
  CHECK(r->status == WaitStatus::timeout);

  // Another change restarts the quiet period...
  write_file(repo / "src/b.py", "b\n");
  r = w->wait(SteadyClock::now() + 100ms);
  REQUIRE(r);
  CHECK(r->status == WaitStatus::timeout);
  clock.advance(400ms);  // 400 ms quiet, but the first change is 1399 ms old
  r = w->wait(SteadyClock::now() + 100ms);
  REQUIRE(r);
  CHECK(r->status == WaitStatus::timeout);
  // ...up to max_delay after the first change.
  clock.advance(101ms);
  r = w->wait(SteadyClock::now() + k_patience);
  REQUIRE(r);
  REQUIRE(r->status == WaitStatus::changed);
  CHECK(r->changes.paths == Paths{(repo / "src/a.py").string(), (repo / "src/b.py").string()});
  CHECK_FALSE(w->pending());
}

TEST_CASE("stop() from another thread ends a wait without deadline, and every later wait") {
  ScratchDir dir;
  const fs::path repo = make_repo(dir);
  auto w = watcher({{}, {repo}, {}, {}}, fast_options());
  std::atomic<int> status{-1};
  std::thread waiter([&] {
    auto r = w->wait(std::nullopt);
    status = r ? static_cast<int>(r->status) : -2;
  });
  w->stop();
  waiter.join();
  CHECK(status == static_cast<int>(WaitStatus::stopped));
  write_file(repo / "src/model.py", "after stop\n");
  auto r = w->wait(SteadyClock::now() + k_patience);
  REQUIRE(r);
  CHECK(r->status == WaitStatus::stopped);
}

TEST_CASE("a readable stop_fd (as a signalfd would be) stops the watcher") {
  ScratchDir dir;
  const fs::path repo = make_repo(dir);
  const int efd = ::eventfd(0, EFD_CLOEXEC);
  REQUIRE(efd >= 0);
  WatchOptions options = fast_options();
  options.stop_fd = efd;
  auto w = watcher({{}, {repo}, {}, {}}, options);
  const std::uint64_t one = 1;
  REQUIRE(::write(efd, &one, sizeof one) == sizeof one);
  auto r = w->wait(SteadyClock::now() + k_patience);
  REQUIRE(r);
  CHECK(r->status == WaitStatus::stopped);
  ::close(efd);
}

TEST_CASE("at the watch limit the watcher polls instead, and still sees every kind of change") {
  ScratchDir dir;
  const fs::path repo = make_repo(dir);
  const fs::path prefix = make_prefix(dir);
  write_file(repo / "src/pkg/deep/x.py", "x\n");
  WatchOptions options = fast_options();
  options.max_watches = 2;
  auto w = watcher({{prefix}, {repo}, {}, {}}, options);
  CHECK(w->mode() == WatchMode::polling);
  CHECK(w->watch_count() == 0);

  write_file(repo / "src/pkg/deep/x.py", "edited, and longer\n");
  write_file(repo / "build/ignored.o", "x");
  auto c = next_change(*w);
  CHECK(c.paths == Paths{(repo / "src/pkg/deep/x.py").string()});
  CHECK(c.source);

  fs::remove_all(prefix / (k_site + "six-1.16.0.dist-info"));
  c = next_change(*w);
  CHECK(c.environment);
  CHECK(c.paths == Paths{(prefix / (k_site + "six-1.16.0.dist-info")).string(),
                         (prefix / (k_site + "six-1.16.0.dist-info/METADATA")).string(),
                         (prefix / (k_site + "six-1.16.0.dist-info/RECORD")).string()});
}

TEST_CASE("reaching the watch limit while running switches to polling and reports a rescan") {
  ScratchDir dir;
  const fs::path repo = make_repo(dir);
  WatchOptions options = fast_options();
  options.max_watches = 3;  // proj and src, plus one
  auto w = watcher({{}, {repo}, {}, {}}, options);
  REQUIRE(w->mode() == WatchMode::inotify);
  fs::create_directories(repo / "a/b/c");
  write_file(repo / "a/b/c/f.py", "f\n");
  auto c = next_change(*w);
  CHECK(w->mode() == WatchMode::polling);
  CHECK(c.rescan);
  write_file(repo / "a/b/c/f.py", "changed while polling\n");
  c = next_change(*w);
  CHECK(c.paths == Paths{(repo / "a/b/c/f.py").string()});
}

TEST_CASE("a watched root that is removed is reported as a rescan") {
  ScratchDir dir;
  const fs::path prefix = make_prefix(dir);
  auto w = watcher({{prefix}, {}, {}, {}}, fast_options());
  fs::remove_all(prefix / "lib");  // site-packages and the dist-info in it
  auto c = next_change(*w);
  CHECK(c.rescan);
  CHECK(c.environment);
  CHECK(w->watch_count() == 0);
}

TEST_CASE("missing or non-directory roots are errors naming them; nothing is written") {
  ScratchDir dir;
  write_file(dir / "file", "x");
  const auto before = envd::test::tree_listing(dir.path());
  auto missing = ChangeWatcher::create({{dir / "no-such-prefix"}, {}, {}, {}}, fast_options());
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code() == ErrorCode::not_found);
  CHECK(missing.error().message().find("no-such-prefix") != std::string::npos);
  auto not_dir = ChangeWatcher::create({{}, {dir / "file"}, {}, {}}, fast_options());
  REQUIRE_FALSE(not_dir);
  CHECK(not_dir.error().code() == ErrorCode::invalid_argument);
  CHECK(not_dir.error().message().find("not a directory") != std::string::npos);
  CHECK(envd::test::tree_listing(dir.path()) == before);
}

TEST_CASE("a kernel queue overflow is reported as a rescan") {
  ScratchDir dir;
  const fs::path repo = make_repo(dir);
  auto w = watcher({{}, {repo}, {}, {}}, fast_options());
  // More events than the kernel queues (fs.inotify.max_queued_events, 16384 by default) while
  // nobody reads them.
  const std::string limit_text = envd::test::read_file("/proc/sys/fs/inotify/max_queued_events");
  const int limit = std::stoi(limit_text);
  if (limit > 100000) return;  // would take too long here
  for (int i = 0; i < limit; ++i) write_file(repo / "src" / ("f" + std::to_string(i)), "x");
  auto c = next_change(*w);
  CHECK(c.rescan);
  CHECK(c.environment);
  CHECK(c.source);
}

}  // namespace
}  // namespace envd::agent
