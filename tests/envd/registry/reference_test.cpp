// Image references (DESIGN.md §5): registry and local forms, defaults, schemes, and bad text
// rejected with a message naming it; WWW-Authenticate parsing and URL resolution.
#include "envd/registry/reference.hpp"

#include <doctest/doctest.h>

#include <vector>

#include "envd/registry/auth_challenge.hpp"
#include "envd/registry/http_transport.hpp"

namespace envd::registry {
namespace {

constexpr std::string_view k_digest =
    "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

TEST_CASE("registry references: host, port, repository, tag, digest") {
  auto r = parse_reference("127.0.0.1:5000/team/env:v1");
  REQUIRE(r.has_value());
  CHECK(r->host == "127.0.0.1:5000");
  CHECK(r->repository == "team/env");
  CHECK(r->tag == "v1");
  CHECK_FALSE(r->digest.has_value());
  CHECK_FALSE(r->is_local());
  CHECK(r->reference() == "v1");
  CHECK(r->str() == "127.0.0.1:5000/team/env:v1");

  auto d = parse_reference("registry.example.com/org/team/img@" + std::string(k_digest));
  REQUIRE(d.has_value());
  CHECK(d->host == "registry.example.com");
  CHECK(d->repository == "org/team/img");
  CHECK(d->tag.empty());
  REQUIRE(d->digest.has_value());
  CHECK(d->reference() == k_digest);

  auto both = parse_reference("localhost/a/b:t@" + std::string(k_digest));
  REQUIRE(both.has_value());
  CHECK(both->host == "localhost");
  CHECK(both->tag == "t");
  CHECK(both->reference() == k_digest);  // the digest wins

  auto v6 = parse_reference("[::1]:5000/ns/name");
  REQUIRE(v6.has_value());
  CHECK(v6->host == "[::1]:5000");
  CHECK(v6->reference() == "latest");
}

TEST_CASE("local references have no host") {
  auto r = parse_reference("team/env:v1");
  REQUIRE(r.has_value());
  CHECK(r->is_local());
  CHECK(r->repository == "team/env");
  CHECK(r->tag == "v1");
  auto nested = parse_reference("team/sub/env");
  REQUIRE(nested.has_value());
  CHECK(nested->is_local());
  CHECK(nested->repository == "team/sub/env");
  CHECK(nested->reference() == "latest");
}

TEST_CASE("bad references are refused with a message naming the text") {
  for (std::string bad : std::vector<std::string>{
           "", "env", "Team/env", "team/env:", "team/env:-bad", "team//env", "team/env/",
           "/team/env", "127.0.0.1:5000/env", "127.0.0.1:99999/a/b", "127.0.0.1:/a/b",
           "host.example:x/a/b", "[::1/a/b", "team/env@md5:abc", "team/env@sha256:ABC",
           "a/b@" + std::string(k_digest) + "x", "bad_host.example.com/a/b", "team/e..nv",
           "team/env:" + std::string(129, 'a')}) {
    auto r = parse_reference(bad);
    INFO("reference: " << bad);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == ErrorCode::invalid_argument);
    CHECK(r.error().message().find("\"" + bad + "\"") != std::string::npos);
  }
}

TEST_CASE("loopback registries use http, all others https") {
  CHECK(default_scheme("127.0.0.1:5000") == Scheme::http);
  CHECK(default_scheme("localhost") == Scheme::http);
  CHECK(default_scheme("LOCALHOST:80") == Scheme::http);
  CHECK(default_scheme("[::1]:5000") == Scheme::http);
  CHECK(default_scheme("127.0.0.2") == Scheme::http);
  CHECK(default_scheme("registry.example.com") == Scheme::https);
  CHECK(default_scheme("10.0.0.1:5000") == Scheme::https);
  CHECK(default_scheme("localhost.example.com") == Scheme::https);
}

TEST_CASE("WWW-Authenticate challenges") {
  auto cs = parse_challenges(
      R"(Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:team/env:pull,push")");
  REQUIRE(cs.size() == 1);
  CHECK(cs[0].scheme == "bearer");
  CHECK(cs[0].param("realm") == "https://auth.example.com/token");
  CHECK(cs[0].param("service") == "registry.example.com");
  CHECK(cs[0].param("scope") == "repository:team/env:pull,push");

  auto two = parse_challenges(R"(Basic realm="x y", Bearer realm=envd,service="s\"q")");
  REQUIRE(two.size() == 2);
  CHECK(two[0].scheme == "basic");
  CHECK(two[0].param("realm") == "x y");
  CHECK(two[1].scheme == "bearer");
  CHECK(two[1].param("realm") == "envd");
  CHECK(two[1].param("service") == "s\"q");

  CHECK(parse_challenges("").empty());
  CHECK(parse_challenges("Basic").size() == 1);

  CHECK(*parse_token_response(R"({"token":"abc","expires_in":60})") == "abc");
  CHECK(*parse_token_response(R"({"access_token":"def"})") == "def");
  CHECK(parse_token_response(R"({"token":""})").error().code() == ErrorCode::invalid_argument);
  CHECK(base64_encode("user:pass") == "dXNlcjpwYXNz");
  CHECK(base64_encode("ab") == "YWI=");
  CHECK(url_encode("repository:a/b:pull,push") == "repository%3Aa%2Fb%3Apull%2Cpush");
}

TEST_CASE("URLs and redirect locations") {
  auto u = parse_url("http://127.0.0.1:5000/v2/a/b/blobs/x?y=1");
  REQUIRE(u.has_value());
  CHECK(u->scheme == Scheme::http);
  CHECK(u->authority() == "127.0.0.1:5000");
  CHECK(u->target == "/v2/a/b/blobs/x?y=1");
  CHECK(parse_url("https://example.com")->str() == "https://example.com:443/");
  CHECK(parse_url("https://[::1]:8443/t")->authority() == "[::1]:8443");
  CHECK_FALSE(parse_url("ftp://x/").has_value());
  CHECK_FALSE(parse_url("http://user:pw@x/").has_value());

  CHECK(resolve_url(*u, "/v2/other")->str() == "http://127.0.0.1:5000/v2/other");
  CHECK(resolve_url(*u, "uploads/1")->str() == "http://127.0.0.1:5000/v2/a/b/blobs/uploads/1");
  CHECK(resolve_url(*u, "http://127.0.0.2:6000/s?sig=1")->str() == "http://127.0.0.2:6000/s?sig=1");
  CHECK(resolve_url(*u, "//storage.example.com/b")->str() == "http://storage.example.com:80/b");
}

}  // namespace
}  // namespace envd::registry
