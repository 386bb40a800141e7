// The one behaviour suite every BlobStore passes (after containerd's content testsuite): call
// check_blob_store_conformance(factory) from a TEST_CASE; each SUBCASE gets a fresh store.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <functional>
#include <latch>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "envd/store/blob_store.hpp"

namespace envd::store::test {

using StoreFactory = std::function<std::unique_ptr<BlobStore>()>;

// Deterministic bytes that differ from blob to blob and from position to position.
inline std::string pattern_bytes(std::size_t size, std::uint32_t seed) {
  std::string out(size, '\0');
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& c : out) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    c = static_cast<char>(x & 0xff);
  }
  return out;
}

inline std::vector<oci::Digest> sorted_list(const BlobStore& store) {
  auto listed = store.list();
  REQUIRE(listed.has_value());
  std::vector<oci::Digest> out = *listed;
  std::sort(out.begin(), out.end());
  return out;
}

// Writes `data` through a fresh writer and commits it as `digest`.
inline Result<void> write_and_commit(BlobStore& store, std::string_view data,
                                     const oci::Digest& digest) {
  auto writer = store.begin_write();
  if (!writer) return writer.error();
  ENVD_TRY_VOID((*writer)->write(data));
  return (*writer)->commit(digest, data.size());
}

// Adds `data` to `group` through a fresh writer of `store`, as `digest` with data's size.
inline Result<void> write_and_add(BlobStore& store, BlobCommitGroup& group, std::string_view data,
                                  const oci::Digest& digest) {
  auto writer = store.begin_write();
  if (!writer) return writer.error();
  ENVD_TRY_VOID((*writer)->write(data));
  return group.add(std::move(*writer), digest, data.size());
}

inline void check_blob_store_conformance(const StoreFactory& make_store) {
  std::unique_ptr<BlobStore> store = make_store();
  REQUIRE(store != nullptr);
  const std::string hello = "hello, blob";
  const oci::Digest hello_digest = oci::sha256_of(hello);

  SUBCASE("put then read_all returns the bytes under their sha256") {
    auto d = store->put(hello);
    REQUIRE(d.has_value());
    CHECK(*d == hello_digest);
    auto back = store->read_all(hello_digest);
    REQUIRE(back.has_value());
    CHECK(*back == hello);
  }

  SUBCASE("contains and size reflect presence") {
    CHECK_FALSE(store->contains(hello_digest));
    auto missing = store->size(hello_digest);
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().code() == ErrorCode::not_found);
    REQUIRE(store->put(hello_digest, hello).has_value());
    CHECK(store->contains(hello_digest));
    auto size = store->size(hello_digest);
    REQUIRE(size.has_value());
    CHECK(*size == hello.size());
  }

  SUBCASE("commit under a wrong digest fails with digest_mismatch and shows nothing") {
    const oci::Digest wrong = oci::sha256_of("something else");
    auto writer = store->begin_write();
    REQUIRE(writer.has_value());
    REQUIRE((*writer)->write(hello).has_value());
    auto r = (*writer)->commit(wrong);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == ErrorCode::digest_mismatch);
    CHECK_FALSE(store->contains(wrong));
    CHECK_FALSE(store->contains(hello_digest));
    CHECK(sorted_list(*store).empty());
    // The writer is finished: it cannot be retried into committing.
    auto again = (*writer)->commit(hello_digest);
    REQUIRE_FALSE(again.has_value());
    CHECK(again.error().code() == ErrorCode::failed_precondition);
    CHECK_FALSE(store->contains(hello_digest));
  }

  SUBCASE("commit with a wrong size fails and shows nothing") {
    auto writer = store->begin_write();
    REQUIRE(writer.has_value());
    REQUIRE((*writer)->write(hello).has_value());
    CHECK((*writer)->written() == hello.size());
    auto r = (*writer)->commit(hello_digest, hello.size() + 1);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == ErrorCode::invalid_argument);
    CHECK_FALSE(store->contains(hello_digest));
    CHECK(sorted_list(*store).empty());
  }

  SUBCASE("committing content already present succeeds and keeps one copy") {
    REQUIRE(store->put(hello_digest, hello).has_value());
    auto second = write_and_commit(*store, hello, hello_digest);
    CHECK(second.has_value());
    CHECK(sorted_list(*store) == std::vector<oci::Digest>{hello_digest});
    CHECK(store->read_all(hello_digest).value_or("") == hello);
  }

  SUBCASE("the empty blob is stored") {
    auto d = store->put("");
    REQUIRE(d.has_value());
    CHECK(d->str() == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    CHECK(store->contains(*d));
    CHECK(store->size(*d).value_or(99) == 0);
    auto back = store->read_all(*d);
    REQUIRE(back.has_value());
    CHECK(back->empty());
  }

  SUBCASE("a 5 MiB blob written in uneven chunks reads back exactly") {
    const std::string big = pattern_bytes(5 * 1024 * 1024, 7);
    const oci::Digest digest = oci::sha256_of(big);
    auto writer = store->begin_write();
    REQUIRE(writer.has_value());
    constexpr std::size_t k_chunk = 65536 + 7;
    for (std::size_t off = 0; off < big.size(); off += k_chunk) {
      REQUIRE((*writer)->write(std::string_view(big).substr(off, k_chunk)).has_value());
    }
    CHECK((*writer)->written() == big.size());
    REQUIRE((*writer)->commit(digest, big.size()).has_value());

    auto reader = store->open(digest);
    REQUIRE(reader.has_value());
    CHECK((*reader)->size() == big.size());
    std::string back;
    std::vector<char> buf(4093);  // not a divisor of anything the store might buffer by
    for (;;) {
      auto n = (*reader)->read(buf.data(), buf.size());
      REQUIRE(n.has_value());
      if (*n == 0) break;
      back.append(buf.data(), *n);
    }
    CHECK(back.size() == big.size());
    CHECK(back == big);
  }

  SUBCASE("concurrent writers of one digest all succeed") {
    const std::string data = pattern_bytes(256 * 1024, 3);
    const oci::Digest digest = oci::sha256_of(data);
    constexpr int k_writers = 8;
    std::vector<std::unique_ptr<BlobWriter>> writers;
    for (int i = 0; i < k_writers; ++i) {
      auto w = store->begin_write();
      REQUIRE(w.has_value());
      REQUIRE((*w)->write(data).has_value());
      writers.push_back(std::move(*w));
    }
    // Every writer has its bytes in; the latch releases all commits at once.
    std::latch start(k_writers);
    std::vector<Result<void>> results(k_writers, Result<void>());
    std::vector<std::thread> threads;
    for (int i = 0; i < k_writers; ++i) {
      threads.emplace_back([&, i] {
        start.arrive_and_wait();
        results[i] = writers[i]->commit(digest, data.size());
      });
    }
    for (auto& t : threads) t.join();
    for (int i = 0; i < k_writers; ++i) {
      INFO("writer " << i << ": " << (results[i] ? "" : results[i].error().message()));
      CHECK(results[i].has_value());
    }
    CHECK(store->read_all(digest).value_or("") == data);
    CHECK(sorted_list(*store) == std::vector<oci::Digest>{digest});
  }

  SUBCASE("many threads writing different blobs") {
    constexpr int k_threads = 8;
    constexpr int k_per_thread = 16;
    std::latch start(k_threads);
    std::vector<std::string> failures(k_threads);
    std::vector<std::thread> threads;
    for (int t = 0; t < k_threads; ++t) {
      threads.emplace_back([&, t] {
        start.arrive_and_wait();
        for (int i = 0; i < k_per_thread; ++i) {
          auto data = pattern_bytes(1000 + 37 * static_cast<std::size_t>(i), t * 1000 + i);
          auto r = store->put(data);
          if (!r) failures[t] = r.error().message();
        }
      });
    }
    for (auto& t : threads) t.join();
    for (const auto& f : failures) CHECK(f == "");
    std::vector<oci::Digest> expected;
    for (int t = 0; t < k_threads; ++t) {
      for (int i = 0; i < k_per_thread; ++i) {
        auto data = pattern_bytes(1000 + 37 * static_cast<std::size_t>(i), t * 1000 + i);
        expected.push_back(oci::sha256_of(data));
        CHECK(store->read_all(expected.back()).value_or("") == data);
      }
    }
    std::sort(expected.begin(), expected.end());
    CHECK(sorted_list(*store) == expected);
  }

  SUBCASE("remove makes a blob absent and leaves others") {
    const std::string other = "other blob";
    REQUIRE(store->put(hello_digest, hello).has_value());
    auto other_digest = store->put(other);
    REQUIRE(other_digest.has_value());
    REQUIRE(store->remove(hello_digest).has_value());
    CHECK_FALSE(store->contains(hello_digest));
    auto opened = store->open(hello_digest);
    REQUIRE_FALSE(opened.has_value());
    CHECK(opened.error().code() == ErrorCode::not_found);
    CHECK(store->remove(hello_digest).has_value());  // absent: still succeeds
    CHECK(sorted_list(*store) == std::vector<oci::Digest>{*other_digest});
    CHECK(store->read_all(*other_digest).value_or("") == other);
  }

  SUBCASE("list returns every committed digest") {
    CHECK(sorted_list(*store).empty());
    std::vector<oci::Digest> expected;
    for (std::string data : {"one", "two", "three"}) {
      auto d = store->put(data);
      REQUIRE(d.has_value());
      expected.push_back(*d);
    }
    std::sort(expected.begin(), expected.end());
    CHECK(sorted_list(*store) == expected);
  }

  SUBCASE("open and read_all of a missing digest give not_found") {
    auto opened = store->open(hello_digest);
    REQUIRE_FALSE(opened.has_value());
    CHECK(opened.error().code() == ErrorCode::not_found);
    auto read = store->read_all(hello_digest);
    REQUIRE_FALSE(read.has_value());
    CHECK(read.error().code() == ErrorCode::not_found);
  }

  SUBCASE("writes of any sizes, small and large, mixed, read back in order") {
    const std::string data = pattern_bytes(600 * 1024, 11);
    // Around 64 KiB in both directions, plus tiny ones: whatever a store buffers by.
    const std::size_t sizes[] = {1, 4096, 65535, 2, 65536, 65537, 3, 131072 + 5, 7, 100000};
    auto writer = store->begin_write();
    REQUIRE(writer.has_value());
    std::size_t off = 0;
    for (std::size_t i = 0; off < data.size(); ++i) {
      std::size_t n = std::min(sizes[i % std::size(sizes)], data.size() - off);
      REQUIRE((*writer)->write(std::string_view(data).substr(off, n)).has_value());
      off += n;
      CHECK((*writer)->written() == off);
    }
    REQUIRE((*writer)->commit(oci::sha256_of(data), data.size()).has_value());
    CHECK(store->read_all(oci::sha256_of(data)).value_or("") == data);
  }

  SUBCASE("a group commits every blob added, including the empty one and ones already present") {
    REQUIRE(store->put(hello_digest, hello).has_value());
    auto group = store->begin_group();
    REQUIRE(group != nullptr);
    std::vector<oci::Digest> expected{hello_digest};
    for (std::uint32_t i = 0; i < 40; ++i) {
      auto data = pattern_bytes(i * 997, 100 + i);
      expected.push_back(oci::sha256_of(data));
      REQUIRE(write_and_add(*store, *group, data, expected.back()).has_value());
    }
    // Already in the store, and twice in the same group.
    REQUIRE(write_and_add(*store, *group, hello, hello_digest).has_value());
    REQUIRE(write_and_add(*store, *group, pattern_bytes(997, 101), expected[2]).has_value());
    REQUIRE(group->commit().has_value());
    std::sort(expected.begin(), expected.end());
    expected.erase(std::unique(expected.begin(), expected.end()), expected.end());
    CHECK(sorted_list(*store) == expected);
    for (std::uint32_t i = 0; i < 40; ++i) {
      auto data = pattern_bytes(i * 997, 100 + i);
      CHECK(store->read_all(oci::sha256_of(data)).value_or("?") == data);
    }
    CHECK(store->read_all(hello_digest).value_or("") == hello);
  }

  SUBCASE("a corrupt blob in a group fails alone: the verified blobs around it commit") {
    auto group = store->begin_group();
    const std::string before = "verified before";
    const std::string after = "verified after";
    REQUIRE(write_and_add(*store, *group, before, oci::sha256_of(before)).has_value());
    const oci::Digest claimed = oci::sha256_of("what the sender claimed");
    auto bad = write_and_add(*store, *group, "other bytes", claimed);
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().code() == ErrorCode::digest_mismatch);
    auto writer = store->begin_write();
    REQUIRE(writer.has_value());
    REQUIRE((*writer)->write(hello).has_value());
    auto short_one = group->add(std::move(*writer), hello_digest, hello.size() + 1);
    REQUIRE_FALSE(short_one.has_value());
    CHECK(short_one.error().code() == ErrorCode::invalid_argument);
    REQUIRE(write_and_add(*store, *group, after, oci::sha256_of(after)).has_value());
    REQUIRE(group->commit().has_value());
    std::vector<oci::Digest> expected{oci::sha256_of(before), oci::sha256_of(after)};
    std::sort(expected.begin(), expected.end());
    CHECK(sorted_list(*store) == expected);
    CHECK_FALSE(store->contains(claimed));
    CHECK_FALSE(store->contains(oci::sha256_of("other bytes")));
    CHECK_FALSE(store->contains(hello_digest));
    CHECK(store->read_all(oci::sha256_of(before)).value_or("") == before);
  }

  SUBCASE("a group commits again after a commit, and an empty commit succeeds") {
    auto group = store->begin_group();
    REQUIRE(group->commit().has_value());
    REQUIRE(write_and_add(*store, *group, "first", oci::sha256_of("first")).has_value());
    REQUIRE(group->commit().has_value());
    CHECK(store->contains(oci::sha256_of("first")));
    REQUIRE(write_and_add(*store, *group, "second", oci::sha256_of("second")).has_value());
    REQUIRE(group->commit().has_value());
    CHECK(store->read_all(oci::sha256_of("second")).value_or("") == "second");
    CHECK(sorted_list(*store).size() == 2);
  }

  SUBCASE("concurrent groups of the same blobs all commit") {
    constexpr int k_groups = 6;
    constexpr std::uint32_t k_blobs = 12;
    std::vector<std::unique_ptr<BlobCommitGroup>> groups;
    for (int g = 0; g < k_groups; ++g) {
      groups.push_back(store->begin_group());
      for (std::uint32_t i = 0; i < k_blobs; ++i) {
        auto data = pattern_bytes(5000 + i, 200 + i);
        REQUIRE(write_and_add(*store, *groups.back(), data, oci::sha256_of(data)).has_value());
      }
    }
    std::latch start(k_groups);
    std::vector<Result<void>> results(k_groups, Result<void>());
    std::vector<std::thread> threads;
    for (int g = 0; g < k_groups; ++g) {
      threads.emplace_back([&, g] {
        start.arrive_and_wait();
        results[g] = groups[g]->commit();
      });
    }
    for (auto& t : threads) t.join();
    for (int g = 0; g < k_groups; ++g) {
      INFO("group " << g << ": " << (results[g] ? "" : results[g].error().message()));
      CHECK(results[g].has_value());
    }
    CHECK(sorted_list(*store).size() == k_blobs);
    for (std::uint32_t i = 0; i < k_blobs; ++i) {
      auto data = pattern_bytes(5000 + i, 200 + i);
      CHECK(store->read_all(oci::sha256_of(data)).value_or("") == data);
    }
  }

  SUBCASE("a writer destroyed before commit leaves nothing visible") {
    {
      auto writer = store->begin_write();
      REQUIRE(writer.has_value());
      REQUIRE((*writer)->write(hello).has_value());
    }
    CHECK_FALSE(store->contains(hello_digest));
    CHECK(sorted_list(*store).empty());
    // The store still works afterwards.
    CHECK(store->put(hello_digest, hello).has_value());
    CHECK(store->contains(hello_digest));
  }
}

}  // namespace envd::store::test
