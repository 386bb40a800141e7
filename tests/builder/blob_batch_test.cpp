// BlobBatchReader over real and fake stores: records split anywhere, blobs committed in groups
// (visible only once their group committed), a bad record keeps the verified blobs before it, and
// a failed group commit is reported without claiming its blobs.
#include "builder/blob_batch.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "envd/store/fs_blob_store.hpp"
#include "envd/store/memory_blob_store.hpp"
#include "support/scratch_dir.hpp"

namespace envd::builder {
namespace {

constexpr std::uint64_t k_no_limit = 1ULL << 40;

std::string record(std::string_view data) {
  return oci::sha256_of(data).str() + " " + std::to_string(data.size()) + "\n" + std::string(data);
}

std::vector<oci::Digest> digests_of(std::initializer_list<std::string_view> blobs) {
  std::vector<oci::Digest> out;
  for (auto b : blobs) out.push_back(oci::sha256_of(b));
  return out;
}

// Feeds `body` in pieces of `piece` bytes; returns what the last feed() said.
bool feed_in_pieces(BlobBatchReader& reader, std::string_view body, std::size_t piece) {
  bool ok = true;
  for (std::size_t off = 0; off < body.size() && ok; off += piece)
    ok = reader.feed(body.substr(off, piece));
  return ok;
}

// A MemoryBlobStore whose groups verify and hold blobs, then fail to commit them (a disk that
// fails its fsync): nothing they held becomes visible.
class FailingGroupStore : public store::MemoryBlobStore {
 public:
  std::unique_ptr<store::BlobCommitGroup> begin_group() override {
    return std::make_unique<Group>();
  }

 private:
  class Group : public store::BlobCommitGroup {
   public:
    Result<void> add(std::unique_ptr<store::BlobWriter> writer, const oci::Digest& /*expected*/,
                     std::optional<std::uint64_t> expected_size) override {
      if (expected_size && *expected_size != writer->written())
        return Error(ErrorCode::invalid_argument, "size mismatch");
      m_held.push_back(std::move(writer));
      return {};
    }
    Result<void> commit() override {
      m_held.clear();
      return Error(ErrorCode::io, "fsync: input/output error");
    }

   private:
    std::vector<std::unique_ptr<store::BlobWriter>> m_held;
  };
};

}  // namespace

TEST_CASE("a batch split anywhere stores every blob in body order") {
  const std::string body = record("alpha") + record("") + record(std::string(70000, 'b')) +
                           record("alpha") + record("gamma");
  const auto expected = digests_of({"alpha", "", std::string(70000, 'b'), "alpha", "gamma"});
  for (std::size_t piece : {std::size_t{1}, std::size_t{7}, std::size_t{4096}, body.size()}) {
    CAPTURE(piece);
    test::ScratchDir scratch;
    auto blobs = store::FsBlobStore::create(scratch / "store");
    REQUIRE(blobs.has_value());
    BlobBatchReader reader(**blobs, k_no_limit, k_no_limit);
    CHECK(feed_in_pieces(reader, body, piece));
    reader.finish();
    CHECK_FALSE(reader.failure().has_value());
    CHECK(reader.stored() == expected);
    for (const auto& d : expected) CHECK((*blobs)->contains(d));
    CHECK((*blobs)->read_all(expected[2]).value_or("") == std::string(70000, 'b'));
  }
}

TEST_CASE("blobs are committed a group at a time, the rest when the body ends") {
  test::ScratchDir scratch;
  auto blobs = store::FsBlobStore::create(scratch / "store");
  REQUIRE(blobs.has_value());
  BlobBatchReader reader(**blobs, k_no_limit, k_no_limit, BatchGrouping{2, k_no_limit});
  CHECK(reader.feed(record("one") + record("two") + record("three")));
  // The first group (two blobs) is committed; the third waits for its group to fill or the end.
  CHECK(reader.stored() == digests_of({"one", "two"}));
  CHECK((*blobs)->contains(oci::sha256_of("two")));
  CHECK_FALSE((*blobs)->contains(oci::sha256_of("three")));
  reader.finish();
  CHECK(reader.stored() == digests_of({"one", "two", "three"}));
  CHECK((*blobs)->contains(oci::sha256_of("three")));

  SUBCASE("a group also closes at its byte bound") {
    BlobBatchReader by_bytes(**blobs, k_no_limit, k_no_limit, BatchGrouping{100, 10});
    CHECK(by_bytes.feed(record("12345") + record("678901") + record("x")));
    CHECK(by_bytes.stored() == digests_of({"12345", "678901"}));
    by_bytes.finish();
    CHECK(by_bytes.stored() == digests_of({"12345", "678901", "x"}));
  }
}

TEST_CASE("a corrupt record stops the batch and keeps every verified blob before it") {
  test::ScratchDir scratch;
  auto blobs = store::FsBlobStore::create(scratch / "store");
  REQUIRE(blobs.has_value());
  // Groups of two: "one" and "two" committed by the bound, "three" still pending at the failure.
  BlobBatchReader reader(**blobs, k_no_limit, k_no_limit, BatchGrouping{2, k_no_limit});
  const oci::Digest claimed = oci::sha256_of("four");
  const std::string body =
      record("one") + record("two") + record("three") + claimed.str() + " 4\nf0ur" + record("five");
  CHECK_FALSE(reader.feed(body));
  reader.finish();  // what the handler does next: nothing changes
  CHECK(reader.stored() == digests_of({"one", "two", "three"}));
  REQUIRE(reader.failure().has_value());
  CHECK(reader.failure()->digest == claimed);
  CHECK(reader.failure()->error.code() == ErrorCode::digest_mismatch);
  CHECK(reader.failure()->error.message().find("record 4") != std::string::npos);
  CHECK((*blobs)->contains(oci::sha256_of("three")));
  CHECK_FALSE((*blobs)->contains(claimed));
  CHECK_FALSE((*blobs)->contains(oci::sha256_of("f0ur")));
  CHECK_FALSE((*blobs)->contains(oci::sha256_of("five")));
}

TEST_CASE("an interrupted body keeps the blobs that arrived whole") {
  store::MemoryBlobStore blobs;
  BlobBatchReader reader(blobs, k_no_limit, k_no_limit);
  const std::string body = record("whole") + record("cut short");
  CHECK(reader.feed(body.substr(0, body.size() - 3)));
  reader.interrupted();
  CHECK(reader.stored() == digests_of({"whole"}));
  REQUIRE(reader.failure().has_value());
  CHECK(reader.failure()->error.code() == ErrorCode::invalid_argument);
  CHECK(blobs.contains(oci::sha256_of("whole")));
  CHECK_FALSE(blobs.contains(oci::sha256_of("cut short")));
}

TEST_CASE("a blob over the limit keeps the pending blobs before it and is over_limit") {
  store::MemoryBlobStore blobs;
  BlobBatchReader reader(blobs, 8, k_no_limit);
  CHECK_FALSE(reader.feed(record("small") + record("123456789")));
  CHECK(reader.stored() == digests_of({"small"}));
  REQUIRE(reader.failure().has_value());
  CHECK(reader.failure()->over_limit);
  CHECK(reader.failure()->digest == oci::sha256_of("123456789"));
}

TEST_CASE("a reader destroyed before the body ended leaves its pending blobs invisible") {
  test::ScratchDir scratch;
  auto blobs = store::FsBlobStore::create(scratch / "store");
  REQUIRE(blobs.has_value());
  {
    BlobBatchReader reader(**blobs, k_no_limit, k_no_limit);
    CHECK(reader.feed(record("pending")));
    CHECK(reader.stored().empty());
  }
  CHECK_FALSE((*blobs)->contains(oci::sha256_of("pending")));
  CHECK(std::filesystem::is_empty(scratch / "store" / "ingest"));
}

TEST_CASE("a failed group commit is the batch's failure and claims none of its blobs") {
  FailingGroupStore blobs;
  SUBCASE("at the end of the body") {
    BlobBatchReader reader(blobs, k_no_limit, k_no_limit);
    CHECK(reader.feed(record("a") + record("b")));
    reader.finish();
    CHECK(reader.stored().empty());
    REQUIRE(reader.failure().has_value());
    CHECK(reader.failure()->error.code() == ErrorCode::io);
    CHECK_FALSE(reader.failure()->digest.has_value());
    CHECK_FALSE(blobs.contains(oci::sha256_of("a")));
  }
  SUBCASE("before a bad record: the commit's io error wins") {
    BlobBatchReader reader(blobs, k_no_limit, k_no_limit);
    CHECK_FALSE(reader.feed(record("a") + "sha256:zz 1\nx"));
    CHECK(reader.stored().empty());
    REQUIRE(reader.failure().has_value());
    CHECK(reader.failure()->error.code() == ErrorCode::io);
  }
  SUBCASE("when a group fills: the batch stops there") {
    BlobBatchReader reader(blobs, k_no_limit, k_no_limit, BatchGrouping{1, k_no_limit});
    CHECK_FALSE(reader.feed(record("a") + record("b")));
    CHECK(reader.stored().empty());
    REQUIRE(reader.failure().has_value());
    CHECK(reader.failure()->error.code() == ErrorCode::io);
  }
}

}  // namespace envd::builder
