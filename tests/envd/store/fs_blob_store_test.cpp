// FsBlobStore passes the BlobStore conformance suite, plus what only a disk store can get wrong:
// crash leftovers, file modes, writes outside its root, persistence across reopening.
#include "envd/store/fs_blob_store.hpp"

#include <doctest/doctest.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <map>
#include <string>

#include "blob_store_conformance.hpp"
#include "support/scratch_dir.hpp"

namespace envd::store {
namespace {

namespace fs = std::filesystem;
using envd::test::ScratchDir;
using envd::test::tree_listing;

std::unique_ptr<FsBlobStore> open_store(const fs::path& root) {
  auto store = FsBlobStore::create(root);
  REQUIRE_MESSAGE(store.has_value(), store.error().message());
  return std::move(*store);
}

std::vector<std::string> names_in(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// The listing of `parent` without the store root's own subtree.
std::map<std::string, std::string> listing_outside(const fs::path& parent,
                                                   const std::string& root) {
  auto all = tree_listing(parent);
  std::erase_if(
      all, [&](const auto& kv) { return kv.first == root || kv.first.starts_with(root + "/"); });
  return all;
}

}  // namespace

TEST_CASE("FsBlobStore conformance") {
  ScratchDir scratch;
  std::atomic<int> n{0};
  test::check_blob_store_conformance([&]() -> std::unique_ptr<BlobStore> {
    return open_store(scratch / ("store" + std::to_string(n++)));
  });
}

TEST_CASE("FsBlobStore lays blobs out as blobs/sha256/<hex>, read-only") {
  ScratchDir scratch;
  auto store = open_store(scratch / "store");
  auto d = store->put("layout");
  REQUIRE(d.has_value());
  auto path = store->path_of(*d);
  REQUIRE(path.has_value());
  CHECK(*path == scratch.path() / "store" / "blobs" / "sha256" / std::string(d->hex()));
  CHECK(envd::test::read_file(*path) == "layout");
  struct stat st {};
  REQUIRE(::lstat(path->c_str(), &st) == 0);
  CHECK(S_ISREG(st.st_mode));
  CHECK((st.st_mode & 07777) == 0444);
}

TEST_CASE("FsBlobStore leaves no ingest files after commits, failures and abandoned writers") {
  ScratchDir scratch;
  auto store = open_store(scratch / "store");
  REQUIRE(store->put("committed").has_value());
  REQUIRE(store->put("committed").has_value());  // already present: ingest discarded
  {
    auto w = store->begin_write();
    REQUIRE(w.has_value());
    REQUIRE((*w)->write("bad").has_value());
    CHECK_FALSE((*w)->commit(oci::sha256_of("not bad")).has_value());
  }
  {
    auto w = store->begin_write();
    REQUIRE(w.has_value());
    REQUIRE((*w)->write("abandoned").has_value());
    CHECK(names_in(scratch / "store" / "ingest").size() == 1);  // the writer's file exists
  }
  CHECK(names_in(scratch / "store" / "ingest").empty());
}

TEST_CASE("FsBlobStore::create removes stale ingest files but not a live writer's") {
  ScratchDir scratch;
  const fs::path root = scratch / "store";
  auto first = open_store(root);
  auto live = first->begin_write();
  REQUIRE(live.has_value());
  REQUIRE((*live)->write("in progress").has_value());
  // What a crashed writer leaves: an unlocked file with partial content.
  envd::test::write_file(root / "ingest" / "0123456789abcdef", "partial");
  REQUIRE(names_in(root / "ingest").size() == 2);

  auto second = open_store(root);
  auto left = names_in(root / "ingest");
  REQUIRE(left.size() == 1);
  CHECK(left[0] != "0123456789abcdef");
  // The live writer in the other store instance is unaffected and commits.
  auto digest = oci::sha256_of("in progress");
  REQUIRE((*live)->commit(digest).has_value());
  CHECK(second->read_all(digest).value_or("") == "in progress");
  CHECK(names_in(root / "ingest").empty());
}

TEST_CASE("FsBlobStore writes nothing outside its root") {
  ScratchDir scratch;
  envd::test::write_file(scratch / "neighbour" / "file", "untouched");
  envd::test::write_file(scratch / "top", "also untouched");
  const auto before = listing_outside(scratch.path(), "store");

  auto store = open_store(scratch / "store");
  auto d = store->put("inside");
  REQUIRE(d.has_value());
  auto w = store->begin_write();
  REQUIRE(w.has_value());
  REQUIRE((*w)->write("mismatch").has_value());
  CHECK_FALSE((*w)->commit(*d).has_value());
  REQUIRE(store->remove(*d).has_value());
  store.reset();
  store = open_store(scratch / "store");

  CHECK(listing_outside(scratch.path(), "store") == before);
  CHECK(tree_listing(scratch.path()).size() > before.size());  // the store itself did appear
}

TEST_CASE("FsBlobStore blobs survive reopening the store") {
  ScratchDir scratch;
  std::vector<oci::Digest> digests;
  {
    auto store = open_store(scratch / "store");
    for (std::string data : {"a", "bb", ""}) digests.push_back(store->put(data).value());
  }
  auto store = open_store(scratch / "store");
  CHECK(store->read_all(digests[0]).value_or("?") == "a");
  CHECK(store->read_all(digests[1]).value_or("?") == "bb");
  CHECK(store->read_all(digests[2]).value_or("?") == "");
  auto listed = store->list();
  REQUIRE(listed.has_value());
  std::sort(listed->begin(), listed->end());
  std::sort(digests.begin(), digests.end());
  CHECK(*listed == digests);
}

TEST_CASE("FsBlobStore::list ignores names that are not digests") {
  ScratchDir scratch;
  auto store = open_store(scratch / "store");
  auto d = store->put("real");
  REQUIRE(d.has_value());
  const fs::path blobs = scratch / "store" / "blobs" / "sha256";
  std::string upper(d->hex());
  std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
  envd::test::write_file(blobs / upper, "real");
  envd::test::write_file(blobs / "README", "not a blob");
  envd::test::write_file(blobs / (std::string(d->hex()).substr(1) + ".tmp"), "x");
  auto listed = store->list();
  REQUIRE(listed.has_value());
  CHECK(*listed == std::vector<oci::Digest>{*d});
}

TEST_CASE("FsBlobStore group: nothing visible before commit(), then read-only blobs, no ingest") {
  ScratchDir scratch;
  auto store = open_store(scratch / "store");
  const fs::path ingest = scratch / "store" / "ingest";
  auto group = store->begin_group();
  std::vector<oci::Digest> digests;
  for (std::string data : {"one", "two", "three"}) {
    digests.push_back(oci::sha256_of(data));
    REQUIRE(test::write_and_add(*store, *group, data, digests.back()).has_value());
  }
  CHECK_FALSE(test::write_and_add(*store, *group, "bad", oci::sha256_of("good")).has_value());
  for (const auto& d : digests) CHECK_FALSE(store->contains(d));
  CHECK(names_in(ingest).size() == 3);  // the verified ones wait; the bad one is gone
  REQUIRE(group->commit().has_value());
  for (const auto& d : digests) {
    CHECK(store->contains(d));
    struct stat st {};
    REQUIRE(::lstat(store->path_of(d)->c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0444);
  }
  CHECK(store->read_all(digests[2]).value_or("") == "three");
  CHECK(names_in(ingest).empty());
}

TEST_CASE("FsBlobStore group destroyed before commit() shows nothing and leaves no ingest file") {
  ScratchDir scratch;
  auto store = open_store(scratch / "store");
  {
    auto group = store->begin_group();
    REQUIRE(test::write_and_add(*store, *group, "pending", oci::sha256_of("pending")).has_value());
    CHECK(names_in(scratch / "store" / "ingest").size() == 1);
  }
  CHECK_FALSE(store->contains(oci::sha256_of("pending")));
  CHECK(test::sorted_list(*store).empty());
  CHECK(names_in(scratch / "store" / "ingest").empty());
}

TEST_CASE("FsBlobStore resumable writer destroyed uncommitted keeps every byte written") {
  ScratchDir scratch;
  auto store = open_store(scratch / "store");
  const std::string data = test::pattern_bytes(200 * 1024, 5);
  const oci::Digest digest = oci::sha256_of(data);
  const std::size_t half = 70000;
  {
    auto w = store->resume_write(digest);
    REQUIRE(w.has_value());
    // Small pieces, as a download delivers them.
    for (std::size_t off = 0; off < half; off += 1000)
      REQUIRE(
          (*w)->write(std::string_view(data).substr(off, std::min<std::size_t>(1000, half - off)))
              .has_value());
    CHECK((*w)->written() == half);
  }
  std::string replayed;
  auto w = store->resume_write(digest, [&](std::string_view d) -> Result<void> {
    replayed.append(d);
    return {};
  });
  REQUIRE(w.has_value());
  CHECK((*w)->written() == half);
  CHECK(replayed == data.substr(0, half));
  REQUIRE((*w)->write(std::string_view(data).substr(half)).has_value());
  REQUIRE((*w)->commit(digest, data.size()).has_value());
  CHECK(store->read_all(digest).value_or("") == data);
}

TEST_CASE("FsBlobStore::create fails when the root is a file") {
  ScratchDir scratch;
  envd::test::write_file(scratch / "file", "x");
  const auto before = tree_listing(scratch.path());
  auto store = FsBlobStore::create(scratch / "file");
  CHECK_FALSE(store.has_value());
  CHECK(tree_listing(scratch.path()) == before);
}

}  // namespace envd::store
