// MemoryBlobStore passes the BlobStore conformance suite.
#include "envd/store/memory_blob_store.hpp"

#include <doctest/doctest.h>

#include "blob_store_conformance.hpp"

namespace envd::store {

TEST_CASE("MemoryBlobStore conformance") {
  test::check_blob_store_conformance([] { return std::make_unique<MemoryBlobStore>(); });
}

TEST_CASE("MemoryBlobStore has no path on disk") {
  MemoryBlobStore store;
  auto d = store.put("x");
  REQUIRE(d.has_value());
  CHECK_FALSE(store.path_of(*d).has_value());
}

}  // namespace envd::store
