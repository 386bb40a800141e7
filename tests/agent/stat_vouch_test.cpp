// StatVouch: vouches for an absolute path only with the exact stat key and digest the stat cache
// holds for it under the innermost of the given roots.
#include "agent/stat_vouch.hpp"

#include <doctest/doctest.h>

#include "support/scratch_dir.hpp"

using namespace envd;
using namespace envd::agent;
using envd::test::ScratchDir;

TEST_CASE("vouches only for the cached stat key and digest of a path under a root") {
  ScratchDir dir;
  const StatKey key{1, 2, 3, 4, 5};
  const auto digest = oci::sha256_of("abc");
  const auto inner_digest = oci::sha256_of("inner");
  {
    auto cache = StatCache::open(stat_cache_path(dir.path()));
    REQUIRE(cache);
    (*cache)->replace("/env", {{"bin/python", key, digest}, {"src/a.py", key, digest}});
    (*cache)->replace("/env/src", {{"a.py", key, inner_digest}});
    (*cache)->replace("/other", {{"x", key, digest}});
    REQUIRE((*cache)->save());
  }
  auto vouch = StatVouch::load(dir.path(), {"/env", "/env/src"});
  REQUIRE(vouch);
  const StatVouch& v = **vouch;

  CHECK(v.vouches("/env/bin/python", key, digest));
  // Any field of the key, or the digest, differing: no.
  for (StatKey other : {StatKey{9, 2, 3, 4, 5}, StatKey{1, 9, 3, 4, 5}, StatKey{1, 2, 9, 4, 5},
                        StatKey{1, 2, 3, 9, 5}, StatKey{1, 2, 3, 4, 9}})
    CHECK_FALSE(v.vouches("/env/bin/python", other, digest));
  CHECK_FALSE(v.vouches("/env/bin/python", key, inner_digest));
  // Not cached, outside the roots, or a root not asked for.
  CHECK_FALSE(v.vouches("/env/bin/python3", key, digest));
  CHECK_FALSE(v.vouches("/envx/bin/python", key, digest));
  CHECK_FALSE(v.vouches("/env", key, digest));
  CHECK_FALSE(v.vouches("/other/x", key, digest));
  // A nested root names its files: its entry, not the outer root's, decides.
  CHECK(v.vouches("/env/src/a.py", key, inner_digest));
  CHECK_FALSE(v.vouches("/env/src/a.py", key, digest));
}

TEST_CASE("without a cached root nothing is vouched for") {
  ScratchDir dir;
  auto vouch = StatVouch::load(dir / "state", {"/env"});
  REQUIRE(vouch);
  CHECK_FALSE((*vouch)->vouches("/env/bin/python", StatKey{1, 2, 3, 4, 5}, oci::sha256_of("")));
}
