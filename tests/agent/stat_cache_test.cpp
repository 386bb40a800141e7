// Stat cache persistence and the hasher's use of it: cached files are not read again, changed
// files are, racy files are never cached, and digests always match the file, whether files are
// hashed after the walk (hash_files) or during it (walk_and_hash).
#include <doctest/doctest.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <limits>
#include <map>
#include <mutex>
#include <tuple>

#include "agent/file_hasher.hpp"
#include "agent/file_walker.hpp"
#include "agent/stat_cache.hpp"
#include "support/scratch_dir.hpp"

using namespace envd;
using namespace envd::agent;
using envd::test::ScratchDir;
using envd::test::write_file;

namespace {

struct Hashed {
  std::vector<WalkedFile> files;
  std::uint64_t read = 0;
};

Hashed hash_tree(const std::filesystem::path& root, StatCache& cache,
                 std::int64_t racy_after = std::numeric_limits<std::int64_t>::max()) {
  Diagnostics diag;
  Hashed h;
  h.files = *walk_tree(root, {}, diag);
  HashProgress progress;
  HashOptions options;
  options.racy_after_ns = racy_after;
  auto r = hash_files(root, h.files, cache, options, progress);
  REQUIRE(r);
  h.read = progress.files_hashed.load();
  return h;
}

}  // namespace

TEST_CASE("packed entries survive reopening and only match an identical stat key") {
  ScratchDir dir;
  auto db = dir / "state/stat-cache.sqlite";
  StatKey key{1, 2, 3, 4, 5};
  auto digest = oci::sha256_of("abc");
  {
    auto cache = StatCache::open(db);
    REQUIRE(cache);
    (*cache)->replace("/x", {{"a", key, digest}, {"b/c", key, oci::sha256_of("c")}});
    REQUIRE((*cache)->save());
  }
  auto cache = StatCache::open(db);
  REQUIRE(cache);
  auto root = (*cache)->root("/x");
  REQUIRE(root);
  CHECK((*root)->size() == 2);
  REQUIRE((*root)->lookup("a", key));
  CHECK(*(*root)->lookup("a", key) == digest);
  CHECK(*(*root)->lookup("b/c", key) == oci::sha256_of("c"));
  StatKey newer = key;
  newer.mtime_ns += 1;
  CHECK_FALSE((*root)->lookup("a", newer));
  StatKey other_inode = key;
  other_inode.ino = 9;
  CHECK_FALSE((*root)->lookup("a", other_inode));
  CHECK_FALSE((*root)->lookup("b", key));
  CHECK((*(*cache)->root("/elsewhere"))->size() == 0);
}

TEST_CASE("a damaged packed row is an empty cache, not an error") {
  auto damaged = StatCacheRoot::unpack("envdsc1");
  CHECK(damaged.size() == 0);
  auto packed = StatCacheRoot::pack({{"a", StatKey{1, 2, 3, 4, 5}, oci::sha256_of("x")}});
  auto truncated = StatCacheRoot::unpack(packed.substr(0, packed.size() - 1));
  CHECK(truncated.size() == 0);
  CHECK(StatCacheRoot::unpack(packed).size() == 1);
}

TEST_CASE("a re-hash reads only the file that changed, and digests match the content") {
  ScratchDir dir;
  for (int i = 0; i < 20; ++i)
    write_file(dir / ("tree/d" + std::to_string(i % 4) + "/f" + std::to_string(i)),
               "content " + std::to_string(i));
  auto cache = *StatCache::open(dir / "state/cache.sqlite");
  auto first = hash_tree(dir / "tree", *cache);
  CHECK(first.read == 20);
  REQUIRE(cache->save());

  auto reopened = *StatCache::open(dir / "state/cache.sqlite");
  auto second = hash_tree(dir / "tree", *reopened);
  CHECK(second.read == 0);

  write_file(dir / "tree/d1/f5", "changed");
  auto third = hash_tree(dir / "tree", *reopened);
  CHECK(third.read == 1);
  for (const auto& f : third.files) {
    CHECK(*f.digest == oci::sha256_file(dir / "tree" / f.path)->digest);
  }
}

TEST_CASE("files changed within the timestamp granularity of the scan are not cached") {
  ScratchDir dir;
  write_file(dir / "tree/a", "a");
  write_file(dir / "tree/b", "b");
  auto cache = StatCache::in_memory();
  // Everything is "racy" when the scan started before the files' timestamps.
  auto first = hash_tree(dir / "tree", *cache, /*racy_after=*/0);
  CHECK(first.read == 2);
  auto second = hash_tree(dir / "tree", *cache);
  CHECK(second.read == 2);  // nothing was cached
  auto third = hash_tree(dir / "tree", *cache);
  CHECK(third.read == 0);
}

TEST_CASE("hashing a file that became a symlink fails naming the file") {
  ScratchDir dir;
  write_file(dir / "tree/a", "a");
  Diagnostics diag;
  auto files = *walk_tree(dir / "tree", {}, diag);
  std::filesystem::remove(dir / "tree/a");
  std::filesystem::create_symlink("/etc/passwd", dir / "tree/a");
  auto cache = StatCache::in_memory();
  HashProgress progress;
  auto r = hash_files(dir / "tree", files, *cache, {}, progress);
  REQUIRE_FALSE(r);
  CHECK(r.error().message().find((dir / "tree/a").string()) != std::string::npos);
}

TEST_CASE("the walker records symlinks without following them and skips FIFOs with a warning") {
  ScratchDir dir;
  write_file(dir / "outside/secret", "s");
  write_file(dir / "tree/a", "a");
  std::filesystem::create_directory_symlink(dir / "outside", dir / "tree/link");
  std::filesystem::create_symlink("missing-target", dir / "tree/dangling");
  REQUIRE(::mkfifo((dir / "tree/fifo").c_str(), 0644) == 0);
  Diagnostics diag;
  auto files = walk_tree(dir / "tree", {}, diag);
  REQUIRE(files);
  REQUIRE(files->size() == 3);
  CHECK((*files)[0].path == "a");
  CHECK((*files)[1].path == "dangling");
  CHECK((*files)[1].type == snapshot::FileType::symlink);
  CHECK((*files)[1].target == "missing-target");
  CHECK((*files)[2].path == "link");
  CHECK((*files)[2].target == (dir / "outside").string());
  REQUIRE(diag.size() == 1);
  CHECK(diag.list()[0].path == (dir / "tree/fifo").string());
}

TEST_CASE("the walker skips non-UTF-8 names with a warning naming the escaped path") {
  ScratchDir dir;
  write_file(dir / "tree/ok", "a");
  write_file(dir / "tree/bad\xff.txt", "b");
  Diagnostics diag;
  auto files = walk_tree(dir / "tree", {}, diag);
  REQUIRE(files);
  CHECK(files->size() == 1);
  REQUIRE(diag.size() == 1);
  CHECK(diag.list()[0].path.find("bad\\xff.txt") != std::string::npos);
}

TEST_CASE("utf-8 validation") {
  CHECK(is_valid_utf8("plain"));
  CHECK(is_valid_utf8("caf\xc3\xa9"));
  CHECK_FALSE(is_valid_utf8("\xff"));
  CHECK_FALSE(is_valid_utf8("\xc3"));
  CHECK_FALSE(is_valid_utf8("\xc0\xaf"));  // overlong '/'
  CHECK(escape_path("a\xff"
                    "b") == "a\\xffb");
}

TEST_CASE("a file changed between the walk and the hash gets the digest of what was read") {
  ScratchDir dir;
  write_file(dir / "tree/a", "before");
  Diagnostics diag;
  auto files = *walk_tree(dir / "tree", {}, diag);
  const StatKey walked = files[0].key;
  write_file(dir / "tree/a", "after!");  // same size, new content, new ctime
  auto cache = StatCache::in_memory();
  HashProgress progress;
  REQUIRE(hash_files(dir / "tree", files, *cache, {}, progress));
  CHECK(*files[0].digest == oci::sha256_of("after!"));
  // (Within one timestamp tick the new stat can equal the walked one; the racy rule keeps such
  // entries out of the cache, so only the digest is asserted here.)
  (void)walked;
}

// --- The packer and lookups by path alone (used by the one-pass walk) ---

TEST_CASE("the packer builds the same buffer as pack(), and find() ignores the stat key") {
  std::vector<StatCacheRoot::Entry> entries{{"a", StatKey{1, 2, 3, 4, 5}, oci::sha256_of("a")},
                                            {"b/c", StatKey{6, 7, 8, 9, 10}, oci::sha256_of("c")}};
  StatCacheRoot::Packer packer(1, 0);  // hints too small on purpose: the buffer just grows
  for (const auto& e : entries) packer.add(e.path, e.key, e.digest);
  auto packed = std::move(packer).finish();
  CHECK(packed == StatCacheRoot::pack(entries));
  auto root = StatCacheRoot::unpack(packed);
  REQUIRE(root.size() == 2);
  auto found = root.find("b/c");
  REQUIRE(found);
  CHECK(found->key == entries[1].key);
  CHECK(found->digest == entries[1].digest);
  CHECK_FALSE(root.find("b"));
  CHECK_FALSE(root.find("z"));
}

TEST_CASE("a replaced root is seen before it is saved, and an in-memory cache keeps it on save") {
  auto cache = StatCache::in_memory();
  const StatKey key{1, 2, 3, 4, 5};
  cache->replace("/x", {{"a", key, oci::sha256_of("a")}});
  CHECK((*cache->root("/x"))->lookup("a", key) == oci::sha256_of("a"));
  cache->replace("/x", {{"b", key, oci::sha256_of("b")}});
  REQUIRE(cache->save());
  const auto* root = *cache->root("/x");
  CHECK(root->size() == 1);
  CHECK(root->lookup("b", key) == oci::sha256_of("b"));
}

// --- walk_and_hash: reading during the walk ---

namespace {

struct OnePass {
  std::vector<WalkedFile> files;
  std::uint64_t read = 0;
};

OnePass walk_and_hash_tree(const std::filesystem::path& root, StatCache& cache,
                           HashOptions options = {}) {
  Diagnostics diag;
  HashProgress progress;
  auto files = walk_and_hash(root, cache, {}, options, progress, diag);
  REQUIRE(files);
  CHECK(progress.files_done.load() == progress.files_total.load());
  return {std::move(*files), progress.files_hashed.load()};
}

// A tree with nested directories, a symlink, an empty file and files around the read size.
void make_mixed_tree(const std::filesystem::path& root) {
  for (int i = 0; i < 30; ++i)
    write_file(root / ("d" + std::to_string(i % 3) + "/e" + std::to_string(i % 2) + "/f" +
                       std::to_string(i)),
               "content " + std::to_string(i));
  write_file(root / "empty", "");
  write_file(root / "big/exact", std::string(256 * 1024, 'x'));
  write_file(root / "big/plus_one", std::string(256 * 1024 + 1, 'y'));
  write_file(root / "big/larger", std::string(600 * 1000, 'z'));
  std::filesystem::create_symlink("d0/e0/f0", root / "link");
}

// Waits (bounded) until the coarse clock, which file timestamps follow, is past every timestamp
// in `files`, and returns it: files written before are settled, any write from now on is not.
std::int64_t coarse_clock_past(const std::vector<WalkedFile>& files) {
  std::int64_t newest = 0;
  for (const auto& f : files) newest = std::max({newest, f.key.mtime_ns, f.key.ctime_ns});
  auto now = [] {
    timespec ts{};
    ::clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
  };
  auto deadline = now() + 2'000'000'000;
  while (now() <= newest && now() < deadline) {
  }
  REQUIRE(now() > newest);
  return now();
}

}  // namespace

TEST_CASE("one pass gives the files, keys and digests of a walk followed by hashing") {
  ScratchDir dir;
  make_mixed_tree(dir / "tree");
  auto cache = StatCache::in_memory();
  auto two_pass = hash_tree(dir / "tree", *cache);
  for (std::int64_t settled : {std::numeric_limits<std::int64_t>::max(),     // every file settled
                               std::numeric_limits<std::int64_t>::min()}) {  // none: stat first
    CAPTURE(settled);
    auto fresh = StatCache::in_memory();
    HashOptions options;
    options.settled_before_ns = settled;
    auto one = walk_and_hash_tree(dir / "tree", *fresh, options);
    CHECK(one.read == 34);
    REQUIRE(one.files.size() == two_pass.files.size());
    for (std::size_t i = 0; i < one.files.size(); ++i) {
      const auto& a = one.files[i];
      const auto& b = two_pass.files[i];
      CHECK(a.path == b.path);
      CHECK(a.type == b.type);
      CHECK(a.mode == b.mode);
      CHECK(a.key == b.key);
      CHECK(a.target == b.target);
      CHECK(a.digest == b.digest);
      if (a.type == snapshot::FileType::regular)
        CHECK(*a.digest == oci::sha256_file(dir / "tree" / a.path)->digest);
    }
  }
}

TEST_CASE("one pass uses and refreshes the cache: a re-run reads only the changed file") {
  ScratchDir dir;
  make_mixed_tree(dir / "tree");
  auto cache = *StatCache::open(dir / "state/cache.sqlite");
  HashOptions options;
  options.settled_before_ns = std::numeric_limits<std::int64_t>::max();
  CHECK(walk_and_hash_tree(dir / "tree", *cache, options).read == 34);
  REQUIRE(cache->save());
  auto reopened = *StatCache::open(dir / "state/cache.sqlite");
  CHECK(walk_and_hash_tree(dir / "tree", *reopened, options).read == 0);
  write_file(dir / "tree/d1/e0/f4", "changed");
  auto third = walk_and_hash_tree(dir / "tree", *reopened, options);
  CHECK(third.read == 1);
  for (const auto& f : third.files)
    if (f.type == snapshot::FileType::regular)
      CHECK(*f.digest == oci::sha256_file(dir / "tree" / f.path)->digest);
  // A file hashed by hash_files is found by one pass too: both key the cache alike.
  auto mixed = StatCache::in_memory();
  hash_tree(dir / "tree", *mixed);
  CHECK(walk_and_hash_tree(dir / "tree", *mixed, options).read == 0);
}

TEST_CASE("a file rewritten while one pass reads it is read again under a stat before and after") {
  ScratchDir dir;
  write_file(dir / "tree/a", "before");
  write_file(dir / "tree/b", "stable");
  Diagnostics diag;
  HashOptions options;
  options.settled_before_ns = coarse_clock_past(*walk_tree(dir / "tree", {}, diag));
  options.racy_after_ns = options.settled_before_ns;
  std::mutex mutex;
  std::map<std::string, int> reads;
  options.after_read = [&](const std::string& path) {
    std::lock_guard lock(mutex);
    if (++reads[path] == 1 && path == "a") write_file(dir / "tree/a", "after!");  // same size
  };
  auto cache = StatCache::in_memory();
  auto one = walk_and_hash_tree(dir / "tree", *cache, options);
  REQUIRE(one.files.size() == 2);
  CHECK(*one.files[0].digest == oci::sha256_of("after!"));
  CHECK(*one.files[1].digest == oci::sha256_of("stable"));
  CHECK(reads["a"] == 2);  // the settled read was refused: its ctime moved
  CHECK(reads["b"] == 1);  // settled: one read, one fstat
  // The rewritten file is racy, so it was not cached; the settled one was.
  REQUIRE(cache->save());
  CHECK_FALSE((*cache->root((dir / "tree").string()))->find("a"));
  CHECK((*cache->root((dir / "tree").string()))->find("b"));
}

TEST_CASE("a file that grows while one pass reads it is read again, whatever the timestamps") {
  ScratchDir dir;
  write_file(dir / "tree/a", "short");
  HashOptions options;
  options.settled_before_ns = std::numeric_limits<std::int64_t>::max();  // all "settled"
  int appended = 0;
  options.after_read = [&](const std::string&) {
    if (appended++ == 0) write_file(dir / "tree/a", "short, then longer");
  };
  auto cache = StatCache::in_memory();
  auto one = walk_and_hash_tree(dir / "tree", *cache, options);
  REQUIRE(one.files.size() == 1);
  CHECK(*one.files[0].digest == oci::sha256_of("short, then longer"));
  CHECK(one.files[0].key.size == 18);
}

TEST_CASE("one pass fails naming a file that kept changing while it was read") {
  ScratchDir dir;
  write_file(dir / "tree/sub/a", "0");
  HashOptions options;
  int n = 0;
  options.after_read = [&](const std::string&) {
    write_file(dir / "tree/sub/a", std::string(static_cast<std::size_t>(++n), 'x'));
  };
  auto cache = StatCache::in_memory();
  Diagnostics diag;
  HashProgress progress;
  auto r = walk_and_hash(dir / "tree", *cache, {}, options, progress, diag);
  REQUIRE_FALSE(r);
  CHECK(r.error().code() == ErrorCode::failed_precondition);
  CHECK(r.error().message().find((dir / "tree/sub/a").string()) != std::string::npos);
}

namespace {

// A reader that fails on one file name and reads nothing else.
class FailingReader final : public ContentReader {
 public:
  explicit FailingReader(std::string bad) : m_bad(std::move(bad)) {}
  Result<bool> read_listed(int, const char* name, WalkedFile&) override {
    if (m_bad == name) return Error(ErrorCode::io, "cannot read " + m_bad);
    return false;
  }
  Result<void> read_statted(int, const char*, WalkedFile&) override { return {}; }

 private:
  std::string m_bad;
};

}  // namespace

TEST_CASE("a reader's error stops the walk and is returned") {
  ScratchDir dir;
  for (int i = 0; i < 50; ++i)
    write_file(dir / ("tree/d" + std::to_string(i % 7) + "/f" + std::to_string(i)), "x");
  write_file(dir / "tree/d3/bad", "x");
  FailingReader reader("bad");
  WalkOptions options;
  options.reader = &reader;
  options.threads = 3;
  Diagnostics diag;
  auto files = walk_tree(dir / "tree", options, diag);
  REQUIRE_FALSE(files);
  CHECK(files.error().code() == ErrorCode::io);
  CHECK(files.error().message() == "cannot read bad");
  // Without the bad file the same reader lets the walker stat everything.
  std::filesystem::remove(dir / "tree/d3/bad");
  auto ok = walk_tree(dir / "tree", options, diag);
  REQUIRE(ok);
  CHECK(ok->size() == 50);
}

TEST_CASE("start_save writes in the background: save() waits for it, and the roots read back") {
  ScratchDir dir;
  const StatKey key{1, 2, 3, 4, 5};
  auto db = dir / "state/stat-cache.sqlite";
  {
    auto cache = *StatCache::open(db);
    cache->replace("/a", {{"f", key, oci::sha256_of("a")}});
    cache->start_save();
    cache->replace("/b", {{"g", key, oci::sha256_of("b")}});  // while /a is being written
    // Reading a root from the database waits for the write, then sees it.
    auto other = *StatCache::open(db);
    CHECK((*cache->root("/a"))->lookup("f", key) == oci::sha256_of("a"));
    REQUIRE(cache->save());
    CHECK((*other->root("/b"))->lookup("g", key) == oci::sha256_of("b"));
  }
  {
    // The destructor waits for a write that nobody waited for.
    auto cache = *StatCache::open(db);
    cache->replace("/c", {{"h", key, oci::sha256_of("c")}});
    cache->start_save();
  }
  auto reopened = *StatCache::open(db);
  for (const auto& [root, path, content] :
       {std::tuple{"/a", "f", "a"}, std::tuple{"/b", "g", "b"}, std::tuple{"/c", "h", "c"}}) {
    CAPTURE(root);
    CHECK((*reopened->root(root))->lookup(path, key) == oci::sha256_of(content));
  }
}

TEST_CASE("a background write that fails is reported by save(), naming the database") {
  ScratchDir dir;
  auto db = dir / "state/stat-cache.sqlite";
  auto cache = *StatCache::open(db);
  // Another process drops the table behind the cache's back: the write cannot succeed.
  sqlite3* other = nullptr;
  REQUIRE(sqlite3_open(db.c_str(), &other) == SQLITE_OK);
  CHECK(sqlite3_exec(other, "DROP TABLE stat_roots", nullptr, nullptr, nullptr) == SQLITE_OK);
  sqlite3_close(other);
  cache->replace("/a", {{"f", StatKey{1, 2, 3, 4, 5}, oci::sha256_of("a")}});
  cache->start_save();
  auto saved = cache->save();
  REQUIRE_FALSE(saved);
  CHECK(saved.error().code() == ErrorCode::io);
  CHECK(saved.error().message().find(db.string()) != std::string::npos);
}
