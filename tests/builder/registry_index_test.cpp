// RegistryIndex: repository and tag grammar, blob links per repository, manifests, tags moving,
// and persistence across reopening.
#include "builder/registry_index.hpp"

#include <doctest/doctest.h>

#include "envd/oci/image.hpp"
#include "support/scratch_dir.hpp"

namespace envd::builder {

using test::ScratchDir;

TEST_CASE("repository names and tags follow the distribution spec grammar") {
  for (std::string_view good : {"a", "team/env", "a0/b-c/d.e", "a__b", "a_b", "a---b", "x/y/z"})
    CHECK_MESSAGE(is_valid_repository(good), good);
  for (std::string_view bad : {"", "A", "team/Env", "-a", "a-", "a//b", "/a", "a/", "a..b", "a___b",
                               "a._b", "../x", "a b", "a:b"})
    CHECK_MESSAGE(!is_valid_repository(bad), bad);
  CHECK(is_valid_repository(std::string(255, 'a')));
  CHECK(!is_valid_repository(std::string(256, 'a')));
  for (std::string_view good : {"latest", "v1.2.3", "_x", "A-b_c.d", "a1234567"})
    CHECK_MESSAGE(is_valid_tag(good), good);
  for (std::string_view bad : {"", ".x", "-x", "a/b", "a:b", "a b"})
    CHECK_MESSAGE(!is_valid_tag(bad), bad);
  CHECK(is_valid_tag(std::string(128, 'a')));
  CHECK(!is_valid_tag(std::string(129, 'a')));
}

TEST_CASE("RegistryIndex links blobs per repository, resolves tags and digests, and persists") {
  ScratchDir dir;
  auto d1 = oci::sha256_of("one");
  auto d2 = oci::sha256_of("two");
  {
    auto index = RegistryIndex::open(dir / "db" / "registry.sqlite");
    REQUIRE(index.has_value());
    auto& ix = **index;
    REQUIRE(ix.link_blob("team/a", d1).has_value());
    CHECK(*ix.has_blob("team/a", d1));
    CHECK_FALSE(*ix.has_blob("team/b", d1));
    REQUIRE(
        ix.put_manifest("team/a", d2, std::string(oci::media_type::k_manifest), "v1").has_value());
    REQUIRE(ix.put_manifest("team/a", d1, std::string(oci::media_type::k_index), "v2").has_value());
    REQUIRE(ix.put_manifest("team/a", d1, std::string(oci::media_type::k_index), "v1").has_value());
    CHECK(ix.link_blob("Team/a", d1).error().code() == ErrorCode::invalid_argument);
    CHECK(ix.put_manifest("team/a", d1, "x", ".bad").error().code() == ErrorCode::invalid_argument);
    CHECK(ix.resolve("team/a", "sha256:zz").error().code() == ErrorCode::invalid_argument);
  }
  auto index = RegistryIndex::open(dir / "db" / "registry.sqlite");
  REQUIRE(index.has_value());
  auto& ix = **index;
  auto v1 = ix.resolve("team/a", "v1");
  REQUIRE(v1.has_value());
  REQUIRE(v1->has_value());
  CHECK((*v1)->digest == d1);  // the tag moved
  CHECK((*v1)->media_type == oci::media_type::k_index);
  auto by_digest = ix.resolve("team/a", d2.str());
  REQUIRE(by_digest.has_value());
  REQUIRE(by_digest->has_value());
  CHECK((*by_digest)->media_type == oci::media_type::k_manifest);
  CHECK_FALSE(ix.resolve("team/a", "nope")->has_value());
  CHECK_FALSE(ix.resolve("team/b", d2.str())->has_value());
  CHECK(*ix.tags("team/a") == std::vector<std::string>{"v1", "v2"});
  CHECK(ix.tags("team/none")->empty());
  CHECK(*ix.has_blob("team/a", d1));
}
}  // namespace envd::builder
