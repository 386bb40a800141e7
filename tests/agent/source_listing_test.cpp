// Tests of list_source_tree against real git repositories (built with the git CLI) and plain
// directories: what is listed, what is ignored and counted, git state, warnings, errors.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "agent/source_listing.hpp"
#include "support/run_command.hpp"
#include "support/scratch_dir.hpp"

// Shows path lists in failure messages.
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
using envd::test::ScratchDir;
using envd::test::tree_listing;
using envd::test::write_file;
using Paths = std::vector<std::string>;

// Runs git in `dir` with no user or system configuration, so the host's settings cannot leak in.
std::string git(const fs::path& dir, std::vector<std::string> args) {
  std::vector<std::string> argv = {"git",
                                   "-c",
                                   "init.defaultBranch=main",
                                   "-c",
                                   "user.name=envd test",
                                   "-c",
                                   "user.email=test@example.invalid",
                                   "-c",
                                   "commit.gpgsign=false",
                                   "-c",
                                   "protocol.file.allow=always"};
  argv.insert(argv.end(), args.begin(), args.end());
  const auto result = envd::test::run_command(
      argv, {{"GIT_CONFIG_NOSYSTEM", "1"}, {"GIT_CONFIG_GLOBAL", "/dev/null"}}, dir);
  INFO("git ", args.front(), ": ", result.err);
  REQUIRE(result.exit_code == 0);
  return result.out;
}

std::string head_hex(const fs::path& repo) {
  std::string out = git(repo, {"rev-parse", "HEAD"});
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

void commit_all(const fs::path& repo) {
  git(repo, {"add", "-A"});
  git(repo, {"commit", "-q", "-m", "test"});
}

SourceListing list(const fs::path& root, Diagnostics& diagnostics, SourceOptions options = {}) {
  auto listing = list_source_tree(root, options, diagnostics);
  INFO((listing ? std::string() : listing.error().message()));
  REQUIRE(listing.has_value());
  return std::move(*listing);
}

SourceListing list(const fs::path& root, SourceOptions options = {}) {
  Diagnostics diagnostics;
  auto listing = list(root, diagnostics, std::move(options));
  CHECK(diagnostics.size() == 0);
  return listing;
}

std::uint64_t ignored(const SourceListing& listing, const std::string& origin) {
  const auto it = listing.ignored.find(origin);
  return it == listing.ignored.end() ? 0 : it->second;
}

// A committed repository with .gitignore rules at two levels, plus untracked and ignored files.
void make_repo(const fs::path& repo) {
  fs::create_directories(repo);
  git(repo, {"init", "-q"});
  write_file(repo / ".gitignore", "*.log\nbuild/\n");
  write_file(repo / "README.md", "readme\n");
  write_file(repo / "src/main.py", "print(1)\n");
  write_file(repo / "src/.gitignore", "*.tmp\n");
  commit_all(repo);
  write_file(repo / "notes.txt", "untracked\n");
  write_file(repo / "src/new/module.py", "untracked in an untracked directory\n");
  write_file(repo / "debug.log", "ignored\n");
  write_file(repo / "build/out.o", "ignored directory\n");
  write_file(repo / "build/deep/more.o", "ignored directory\n");
  write_file(repo / "src/scratch.tmp", "ignored by the nested .gitignore\n");
}

}  // namespace

TEST_SUITE("list_source_tree: git") {
  TEST_CASE("lists tracked and untracked files, leaves out what .gitignore files ignore") {
    ScratchDir dir;
    make_repo(dir.path());
    const SourceListing listing = list(dir.path());
    CHECK(listing.paths == Paths{".gitignore", "README.md", "notes.txt", "src/.gitignore",
                                 "src/main.py", "src/new/module.py"});
    // build/ counts once however many files it holds.
    CHECK(listing.ignored == std::map<std::string, std::uint64_t>{{".gitignore", 3}});
    CHECK(listing.root == dir.path());
    CHECK(listing.git_commit == head_hex(dir.path()));
    CHECK(listing.dirty);  // untracked files
  }

  TEST_CASE("dirty is false on a clean repository and true after any change") {
    ScratchDir dir;
    git(dir.path(), {"init", "-q"});
    write_file(dir / "a.py", "a\n");
    write_file(dir / "b.py", "b\n");
    write_file(dir / ".gitignore", "*.pyc\n");
    commit_all(dir.path());
    write_file(dir / "a.pyc", "ignored files do not make a tree dirty\n");
    CHECK_FALSE(list(dir.path()).dirty);
    CHECK(list(dir.path()).git_commit == head_hex(dir.path()));

    SUBCASE("modified") {
      write_file(dir / "a.py", "changed\n");
    }
    SUBCASE("staged") {
      write_file(dir / "a.py", "changed\n");
      git(dir.path(), {"add", "a.py"});
    }
    SUBCASE("untracked") {
      write_file(dir / "c.py", "new\n");
    }
    SUBCASE("deleted") {
      fs::remove(dir / "b.py");
    }
    CHECK(list(dir.path()).dirty);
  }

  TEST_CASE("a tracked file deleted from the work tree is not listed; a modified one is") {
    ScratchDir dir;
    git(dir.path(), {"init", "-q"});
    write_file(dir / "gone.py", "x\n");
    write_file(dir / "kept.py", "x\n");
    commit_all(dir.path());
    fs::remove(dir / "gone.py");
    write_file(dir / "kept.py", "modified\n");
    const SourceListing listing = list(dir.path());
    CHECK(listing.paths == Paths{"kept.py"});
    CHECK(listing.dirty);
  }

  TEST_CASE("tracked files inside an ignored directory are listed, the rest counted ignored") {
    ScratchDir dir;
    git(dir.path(), {"init", "-q"});
    write_file(dir / "build/keep.txt", "force-added\n");
    git(dir.path(), {"add", "build/keep.txt"});
    write_file(dir / ".gitignore", "build/\n");
    commit_all(dir.path());
    write_file(dir / "build/out.o", "ignored\n");
    write_file(dir / "build/sub/deeper/a.o", "ignored, counted with its directory\n");
    write_file(dir / "build/sub/b.o", "ignored, counted with its directory\n");
    SUBCASE("from the work tree root") {
      const SourceListing listing = list(dir.path());
      CHECK(listing.paths == Paths{".gitignore", "build/keep.txt"});
      CHECK(listing.ignored == std::map<std::string, std::uint64_t>{{".gitignore", 2}});
      CHECK_FALSE(listing.dirty);
    }
    SUBCASE("from the ignored directory") {
      const SourceListing listing = list(dir / "build");
      CHECK(listing.paths == Paths{"keep.txt"});
      CHECK(listing.ignored == std::map<std::string, std::uint64_t>{{".gitignore", 2}});
      CHECK(listing.git_commit == head_hex(dir.path()));
    }
  }

  TEST_CASE("a subdirectory root lists only files below it, relative to it") {
    ScratchDir dir;
    make_repo(dir.path());
    write_file(dir / "src/other.log", "ignored by the top .gitignore\n");
    const SourceListing listing = list(dir / "src");
    CHECK(listing.root == dir / "src");
    CHECK(listing.paths == Paths{".gitignore", "main.py", "new/module.py"});
    CHECK(ignored(listing, ".gitignore") == 2);  // scratch.tmp, other.log
    CHECK(listing.git_commit == head_hex(dir.path()));

    // dirty concerns the listed tree only.
    fs::remove_all(dir / "src/new");
    CHECK_FALSE(list(dir / "src").dirty);
    write_file(dir / "src/main.py", "changed\n");
    CHECK(list(dir / "src").dirty);
  }

  TEST_CASE("a root given with a trailing slash or '..' is normalised") {
    ScratchDir dir;
    make_repo(dir.path());
    const SourceListing listing = list(dir.path().string() + "/src/../src/");
    CHECK(listing.root == dir / "src");
    CHECK(listing.paths.size() == 3);
  }

  TEST_CASE("an unborn branch has no commit") {
    ScratchDir dir;
    git(dir.path(), {"init", "-q"});
    SUBCASE("empty") {
      const SourceListing listing = list(dir.path());
      CHECK_FALSE(listing.git_commit.has_value());
      CHECK(listing.paths.empty());
      CHECK_FALSE(listing.dirty);
    }
    SUBCASE("with staged and untracked files") {
      write_file(dir / "staged.py", "x\n");
      git(dir.path(), {"add", "staged.py"});
      write_file(dir / "untracked.py", "y\n");
      const SourceListing listing = list(dir.path());
      CHECK_FALSE(listing.git_commit.has_value());
      CHECK(listing.paths == Paths{"staged.py", "untracked.py"});
      CHECK(listing.dirty);
    }
  }

  TEST_CASE("symlinks are listed, never followed, wherever they point") {
    ScratchDir outside;
    write_file(outside / "secret/data.txt", "outside the tree\n");
    ScratchDir dir;
    git(dir.path(), {"init", "-q"});
    write_file(dir / "a.py", "x\n");
    fs::create_directory_symlink(outside / "secret", dir / "tracked_dir_link");
    fs::create_symlink("a.py", dir / "file_link");
    commit_all(dir.path());
    fs::create_directory_symlink(outside / "secret", dir / "untracked_dir_link");
    fs::create_symlink("/nonexistent/target", dir / "dangling");
    const SourceListing listing = list(dir.path());
    CHECK(listing.paths ==
          Paths{"a.py", "dangling", "file_link", "tracked_dir_link", "untracked_dir_link"});
  }

  TEST_CASE("a repository nested in the work tree is listed with its own ignore rules") {
    ScratchDir dir;
    make_repo(dir.path());
    fs::create_directories(dir / "vendor/lib");
    git(dir / "vendor/lib", {"init", "-q"});
    write_file(dir / "vendor/lib/.gitignore", "*.o\n");
    write_file(dir / "vendor/lib/lib.c", "int x;\n");
    write_file(dir / "vendor/lib/lib.o", "ignored by the nested repository\n");
    const SourceListing listing = list(dir.path());
    CHECK(std::count(listing.paths.begin(), listing.paths.end(), "vendor/lib/lib.c") == 1);
    CHECK(std::count(listing.paths.begin(), listing.paths.end(), "vendor/lib/.gitignore") == 1);
    CHECK(std::none_of(listing.paths.begin(), listing.paths.end(),
                       [](const std::string& p) { return p.starts_with("vendor/lib/.git/"); }));
    CHECK(std::count(listing.paths.begin(), listing.paths.end(), "vendor/lib/lib.o") == 0);
    CHECK(ignored(listing, ".gitignore") == 4);
  }

  TEST_CASE("a submodule's files are listed with the submodule's ignore rules") {
    ScratchDir dir;
    const fs::path lib = dir / "lib";
    const fs::path main = dir / "main";
    fs::create_directories(lib);
    fs::create_directories(main);
    git(lib, {"init", "-q"});
    write_file(lib / "lib.c", "int x;\n");
    write_file(lib / ".gitignore", "*.o\n");
    commit_all(lib);
    git(main, {"init", "-q"});
    write_file(main / "m.py", "m\n");
    git(main, {"submodule", "add", "-q", lib.string(), "vendor/lib"});
    commit_all(main);
    write_file(main / "vendor/lib/lib.o", "ignored by the submodule\n");
    const SourceListing listing = list(main);
    CHECK(listing.paths ==
          Paths{".gitmodules", "m.py", "vendor/lib/.gitignore", "vendor/lib/lib.c"});
    CHECK(ignored(listing, ".gitignore") == 1);
    CHECK(listing.git_commit == head_hex(main));
    CHECK_FALSE(listing.dirty);
  }

  TEST_CASE("a root reached through a symlink keeps its path and still finds the repository") {
    ScratchDir dir;
    make_repo(dir / "repo");
    fs::create_directory_symlink(dir / "repo/src", dir / "link");
    const SourceListing listing = list(dir / "link");
    CHECK(listing.root == dir / "link");
    CHECK(listing.paths == Paths{".gitignore", "main.py", "new/module.py"});
    CHECK(listing.git_commit == head_hex(dir / "repo"));
  }

  TEST_CASE("a root that git ignores is listed as a plain directory, with a warning") {
    ScratchDir dir;
    make_repo(dir.path());
    Diagnostics diagnostics;
    const SourceListing listing = list(dir / "build", diagnostics);
    CHECK(listing.paths == Paths{"deep/more.o", "out.o"});
    CHECK_FALSE(listing.git_commit.has_value());
    REQUIRE(diagnostics.size() == 1);
    CHECK(diagnostics.list()[0].message.find("ignored by git") != std::string::npos);
  }
}

TEST_SUITE("list_source_tree: .envdignore and config patterns") {
  TEST_CASE(".envdignore excludes tracked and untracked files in a git tree, counted apart") {
    ScratchDir dir;
    make_repo(dir.path());
    write_file(dir / ".envdignore", "# large data\ndata/\n*.csv\n");
    write_file(dir / "data/big.parquet", "tracked but excluded\n");
    write_file(dir / "table.csv", "x\n");
    write_file(dir / "src/.envdignore", "!keep.csv\n/local.py\n");
    write_file(dir / "src/keep.csv", "re-included below\n");
    write_file(dir / "src/local.py", "anchored to src/\n");
    write_file(dir / "src/new/local.py", "not anchored here\n");
    write_file(dir / "data.bin", "excluded by config\n");
    commit_all(dir.path());
    SourceOptions options;
    options.extra_ignores = {"*.bin", "!README.md"};
    const SourceListing listing = list(dir.path(), options);
    CHECK(listing.paths == Paths{".envdignore", ".gitignore", "README.md", "notes.txt",
                                 "src/.envdignore", "src/.gitignore", "src/keep.csv", "src/main.py",
                                 "src/new/local.py", "src/new/module.py"});
    CHECK(listing.ignored == std::map<std::string, std::uint64_t>{
                                 {".gitignore", 3}, {".envdignore", 3}, {"config", 1}});
    CHECK_FALSE(listing.dirty);
  }

  TEST_CASE(".envdignore and config patterns apply in a plain directory") {
    ScratchDir dir;
    write_file(dir / ".envdignore", "/top.txt\ncache/\n!important.tmp\n");
    write_file(dir / "top.txt", "anchored: excluded\n");
    write_file(dir / "sub/top.txt", "anchored elsewhere: listed\n");
    write_file(dir / "sub/cache/x", "excluded directory\n");
    write_file(dir / "sub/.envdignore", "*.dat\n");
    write_file(dir / "sub/a.dat", "excluded\n");
    write_file(dir / "b.dat", "sub/.envdignore does not reach up\n");
    write_file(dir / "x.tmp", "excluded by config\n");
    write_file(dir / "important.tmp", "config is overridden by .envdignore\n");
    write_file(dir / ".gitignore", "*\n");  // no repository: only a file
    SourceOptions options;
    options.extra_ignores = {"*.tmp"};
    const SourceListing listing = list(dir.path(), options);
    CHECK(listing.paths == Paths{".envdignore", ".gitignore", "b.dat", "important.tmp",
                                 "sub/.envdignore", "sub/top.txt"});
    CHECK(listing.ignored ==
          std::map<std::string, std::uint64_t>{{".envdignore", 3}, {"config", 1}});
    CHECK_FALSE(listing.git_commit.has_value());
    CHECK_FALSE(listing.dirty);
  }
}

TEST_SUITE("list_source_tree: plain directories") {
  TEST_CASE("lists every regular file and symlink, never .git, never through a symlink") {
    ScratchDir outside;
    write_file(outside / "lib/inside_target.py", "outside\n");
    ScratchDir dir;
    write_file(dir / "a.py", "a\n");
    write_file(dir / "pkg/b.py", "b\n");
    write_file(dir / "pkg/.git", "gitdir: /nonexistent\n");
    fs::create_directory(dir / "empty");
    fs::create_directory_symlink(outside / "lib", dir / "pkg/lib_link");
    const SourceListing listing = list(dir.path());
    CHECK(listing.paths == Paths{"a.py", "pkg/b.py", "pkg/lib_link"});
    CHECK(listing.ignored.empty());
  }

  TEST_CASE("FIFOs are skipped with a warning naming them, in plain and git trees") {
    for (const bool in_git : {false, true}) {
      CAPTURE(in_git);
      ScratchDir dir;
      if (in_git) git(dir.path(), {"init", "-q"});
      write_file(dir / "a.py", "a\n");
      REQUIRE(::mkfifo((dir / "pipe").c_str(), 0600) == 0);
      Diagnostics diagnostics;
      const SourceListing listing = list(dir.path(), diagnostics);
      CHECK(listing.paths == Paths{"a.py"});
      CHECK(ignored(listing, "special") == 1);
      REQUIRE(diagnostics.size() == 1);
      CHECK(diagnostics.list()[0].path == (dir / "pipe").string());
      CHECK(diagnostics.list()[0].message.find("FIFO") != std::string::npos);
    }
  }

  TEST_CASE("a FIFO that git ignores is counted as ignored, without a warning") {
    ScratchDir dir;
    git(dir.path(), {"init", "-q"});
    write_file(dir / ".gitignore", "*.pipe\n");
    REQUIRE(::mkfifo((dir / "x.pipe").c_str(), 0600) == 0);
    const SourceListing listing = list(dir.path());
    CHECK(listing.paths == Paths{".gitignore"});
    CHECK(ignored(listing, ".gitignore") == 1);
  }

  TEST_CASE("names that are not UTF-8 are skipped with a warning giving the escaped path") {
    ScratchDir dir;
    write_file(dir / "ok.py", "x\n");
    write_file(dir / "bad\xff.py", "x\n");
    write_file(dir / "bad\xfe" / "inside.py", "x\n");
    Diagnostics diagnostics;
    const SourceListing listing = list(dir.path(), diagnostics);
    CHECK(listing.paths == Paths{"ok.py"});
    CHECK(ignored(listing, "special") == 2);
    REQUIRE(diagnostics.size() == 2);
    CHECK(diagnostics.list()[0].path == dir.path().string() + "/bad\\xFE");
    CHECK(diagnostics.list()[1].path == dir.path().string() + "/bad\\xFF.py");
  }

  TEST_CASE("an unreadable subdirectory is skipped with a warning") {
    if (::geteuid() == 0) {
      MESSAGE("skipped: root reads every directory");
      return;
    }
    ScratchDir dir;
    write_file(dir / "a.py", "a\n");
    write_file(dir / "locked/b.py", "b\n");
    REQUIRE(::chmod((dir / "locked").c_str(), 0) == 0);
    Diagnostics diagnostics;
    const SourceListing listing = list(dir.path(), diagnostics);
    CHECK(listing.paths == Paths{"a.py"});
    REQUIRE(diagnostics.size() == 1);
    CHECK(diagnostics.list()[0].path == (dir / "locked").string());
  }
}

TEST_SUITE("list_source_tree: errors and side effects") {
  TEST_CASE("more files than max_files fails, naming the limit, the root and .envdignore") {
    ScratchDir dir;
    for (int i = 0; i < 5; ++i) write_file(dir / ("f" + std::to_string(i)), "x\n");
    SourceOptions options;
    options.max_files = 4;
    Diagnostics diagnostics;
    const auto listing = list_source_tree(dir.path(), options, diagnostics);
    REQUIRE_FALSE(listing.has_value());
    CHECK(listing.error().code() == ErrorCode::failed_precondition);
    const std::string& message = listing.error().message();
    CHECK(message.find("more than 4 files") != std::string::npos);
    CHECK(message.find(dir.path().string()) != std::string::npos);
    CHECK(message.find(".envdignore") != std::string::npos);
    options.max_files = 5;
    CHECK(list_source_tree(dir.path(), options, diagnostics).has_value());
  }

  TEST_CASE("a missing root is not_found, a file root invalid_argument") {
    ScratchDir dir;
    write_file(dir / "file", "x\n");
    Diagnostics diagnostics;
    const auto missing = list_source_tree(dir / "missing", {}, diagnostics);
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().code() == ErrorCode::not_found);
    CHECK(missing.error().message().find((dir / "missing").string()) != std::string::npos);
    const auto file = list_source_tree(dir / "file", {}, diagnostics);
    REQUIRE_FALSE(file.has_value());
    CHECK(file.error().code() == ErrorCode::invalid_argument);
    CHECK(file.error().message().find((dir / "file").string()) != std::string::npos);
    CHECK(tree_listing(dir.path()).size() == 1);
  }

  TEST_CASE("listing writes nothing, neither in the work tree nor in .git") {
    ScratchDir dir;
    make_repo(dir.path());
    write_file(dir / ".envdignore", "*.csv\n");
    // A tracked file rewritten after the commit has stale stat data in the index: a status that
    // refreshed the index would rewrite .git/index.
    write_file(dir / "README.md", "rewritten\n");
    const auto before = tree_listing(dir.path());
    const SourceListing listing = list(dir.path());
    CHECK(listing.dirty);
    CHECK(tree_listing(dir.path()) == before);
  }
}

}  // namespace envd::agent
