// RegistryClient against small loopback servers that misbehave on purpose: wrong bytes, a
// connection cut mid-body, silence, a redirect to another host, token realms, transient errors.
#include <atomic>
#include <mutex>

#include "distribution_fixture.hpp"
#include "envd/registry/auth_challenge.hpp"
#include "envd/registry/registry_client.hpp"
#include "envd/store/fs_blob_store.hpp"
#include "test_servers.hpp"

namespace envd::registry {
namespace {

namespace fs = std::filesystem;
using envd::test::ScratchDir;
using namespace test_support;

std::string blob_path(const oci::Digest& d) {
  return "/v2/ns/img/blobs/" + d.str();
}

}  // namespace

TEST_CASE("a blob served with wrong bytes: digest_mismatch, nothing committed") {
  std::string blob = bytes(4096, 8);
  oci::Digest digest = oci::sha256_of(blob);
  HttpServer server;
  server.routes().Get(blob_path(digest), [&](const httplib::Request&, httplib::Response& res) {
    std::string wrong = blob;
    wrong[100] ^= 1;
    res.set_content(wrong, "application/octet-stream");
  });
  server.routes().Get("/v2/ns/img/blobs/" + oci::sha256_of("long").str(),
                      [&](const httplib::Request&, httplib::Response& res) {
                        res.set_content("long and then some", "application/octet-stream");
                      });
  server.start();
  auto client = client_for(server.authority());
  ScratchDir dir;
  auto store = store::FsBlobStore::create(dir / "store");
  REQUIRE(store.has_value());

  auto r =
      client->fetch_blob_to_store("ns/img", oci::Descriptor{"", digest, blob.size(), {}}, **store);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code() == ErrorCode::digest_mismatch);
  CHECK((*store)->list()->empty());
  CHECK_FALSE((*store)->contains(digest));
  CHECK(fs::is_empty(dir / "store" / "ingest"));

  struct Collect : BlobSink {
    std::string data;
    Result<void> write(std::string_view d) override {
      data += d;
      return {};
    }
  } sink;
  auto s = client->fetch_blob_to_sink("ns/img", digest, blob.size(), sink);
  REQUIRE_FALSE(s.has_value());
  CHECK(s.error().code() == ErrorCode::digest_mismatch);

  // Longer than its descriptor: stopped at the descriptor's size.
  Collect prefix;
  auto longer = client->fetch_blob_to_sink("ns/img", oci::sha256_of("long"), 4, prefix);
  REQUIRE_FALSE(longer.has_value());
  CHECK(longer.error().code() == ErrorCode::digest_mismatch);
  CHECK(prefix.data.size() <= 4);
}

TEST_CASE("an interrupted download resumes with Range and completes") {
  std::string blob = bytes(1 << 20, 9);
  oci::Digest digest = oci::sha256_of(blob);
  std::mutex mutex;
  std::vector<std::string> ranges;
  HttpServer server;
  server.routes().Get(blob_path(digest), [&](const httplib::Request& req, httplib::Response& res) {
    bool first;
    {
      std::lock_guard lock(mutex);
      ranges.push_back(req.get_header_value("Range"));
      first = ranges.size() == 1;
    }
    // httplib applies the request's Range to the provider (206 with Content-Range).
    res.set_content_provider(
        blob.size(), "application/octet-stream",
        [&, first](std::size_t offset, std::size_t length, httplib::DataSink& sink) {
          if (first && offset >= blob.size() / 2) return false;  // cut
          std::size_t n = std::min<std::size_t>(length, 64 * 1024);
          if (first) n = std::min(n, blob.size() / 2 - offset);
          return sink.write(blob.data() + offset, n);
        });
  });
  server.start();
  auto client = client_for(server.authority());
  ScratchDir dir;
  auto store = store::FsBlobStore::create(dir / "store");
  REQUIRE(store.has_value());
  auto r =
      client->fetch_blob_to_store("ns/img", oci::Descriptor{"", digest, blob.size(), {}}, **store);
  REQUIRE_MESSAGE(r.has_value(), why(r));
  CHECK(r->requests == 2);
  CHECK(r->bytes_fetched == blob.size());  // no byte fetched twice
  REQUIRE(ranges.size() == 2);
  CHECK(ranges[0].empty());
  REQUIRE(ranges[1].starts_with("bytes="));
  auto resumed_at = std::stoull(ranges[1].substr(6));
  CHECK(resumed_at > 0);
  CHECK(resumed_at <= blob.size() / 2);
  CHECK(*(*store)->read_all(digest) == blob);
}

TEST_CASE("a silent server: stall timeout and bounded retries, no hang") {
  ClientOptions o = fast_options();
  o.stall_timeout = std::chrono::milliseconds(300);
  o.max_attempts = 2;
  oci::Digest digest = oci::sha256_of("never arrives");
  struct Discard : BlobSink {
    Result<void> write(std::string_view) override { return {}; }
  } sink;
  SUBCASE("headers, some bytes, then nothing") {
    SilentServer server("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789");
    auto client = client_for(server.authority(), o);
    auto start = std::chrono::steady_clock::now();
    auto r = client->fetch_blob_to_sink("ns/img", digest, 1000, sink);
    auto elapsed = std::chrono::steady_clock::now() - start;
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == ErrorCode::unavailable);
    CHECK(r.error().message().find("stalled") != std::string::npos);
    CHECK(server.requests() == 2);
    CHECK(elapsed < std::chrono::seconds(5));
  }
  SUBCASE("nothing at all after the request") {
    SilentServer server("");
    auto client = client_for(server.authority(), o);
    auto start = std::chrono::steady_clock::now();
    auto r = client->get_manifest("ns/img", "v1");
    auto elapsed = std::chrono::steady_clock::now() - start;
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == ErrorCode::unavailable);
    CHECK(server.requests() == 2);
    CHECK(elapsed < std::chrono::seconds(5));
  }
}

TEST_CASE("credentials are not forwarded to a redirect on another host") {
  std::string blob = bytes(2000, 10);
  oci::Digest digest = oci::sha256_of(blob);
  std::mutex mutex;
  std::vector<std::string> storage_auth;
  std::vector<std::string> registry_auth;
  HttpServer storage("127.0.0.2");
  storage.routes().Get("/storage/blob", [&](const httplib::Request& req, httplib::Response& res) {
    std::lock_guard lock(mutex);
    storage_auth.push_back(req.get_header_value("Authorization"));
    res.set_content(blob, "application/octet-stream");
  });
  storage.start();
  const std::string expected = "Basic " + base64_encode("user:pass");
  HttpServer reg;
  reg.routes().Get(blob_path(digest), [&](const httplib::Request& req, httplib::Response& res) {
    std::lock_guard lock(mutex);
    registry_auth.push_back(req.get_header_value("Authorization"));
    if (req.get_header_value("Authorization") != expected) {
      res.status = 401;
      res.set_header("WWW-Authenticate", "Basic realm=\"test\"");
      return;
    }
    res.set_redirect(storage.url() + "/storage/blob?sig=abc", 307);
  });
  reg.start();
  ClientOptions o = fast_options();
  o.credentials[reg.authority()] = Credentials{"user", "pass", {}};
  auto client = client_for(reg.authority(), o);
  struct Collect : BlobSink {
    std::string data;
    Result<void> write(std::string_view d) override {
      data += d;
      return {};
    }
  } sink;
  auto r = client->fetch_blob_to_sink("ns/img", digest, blob.size(), sink);
  REQUIRE_MESSAGE(r.has_value(), why(r));
  CHECK(sink.data == blob);
  REQUIRE(registry_auth.size() == 2);  // challenged, then with credentials
  CHECK(registry_auth[1] == expected);
  REQUIRE(storage_auth.size() == 1);
  CHECK(storage_auth[0].empty());
}

// A registry that wants bearer tokens from a token server at `realm`.
struct TokenSetup {
  HttpServer token_server;
  HttpServer reg;
  std::mutex mutex;
  std::vector<std::string> token_auth;
  std::vector<std::string> token_queries;
  std::string manifest;

  explicit TokenSetup(const std::string& token_host) : token_server(token_host) {
    const std::string valid = "Basic " + base64_encode("alice:secret");
    token_server.routes().Get(
        "/token", [&, valid](const httplib::Request& req, httplib::Response& res) {
          std::lock_guard lock(mutex);
          token_auth.push_back(req.get_header_value("Authorization"));
          std::string q = "service=" + req.get_param_value("service");
          for (std::size_t i = 0; i < req.get_param_value_count("scope"); ++i)
            q += " scope=" + req.get_param_value("scope", i);
          token_queries.push_back(q);
          if (req.get_header_value("Authorization") != valid) {
            res.status = 401;
            return;
          }
          res.set_content(R"({"token":"tok-123","expires_in":300})", "application/json");
        });
    token_server.start();
    oci::ImageManifest m{descriptor_of(oci::media_type::k_config, "{}"), {}, {}};
    manifest = oci::serialize(m);
    reg.routes().Get("/v2/ns/img/manifests/(v1|bad)", [&](const httplib::Request& req,
                                                          httplib::Response& res) {
      if (req.get_header_value("Authorization") != "Bearer tok-123") {
        res.status = 401;
        res.set_header("WWW-Authenticate",
                       "Bearer realm=\"" + token_server.url() +
                           "/token\",service=\"test-registry\",scope=\"repository:ns/img:pull\"");
        return;
      }
      res.set_header("Docker-Content-Digest", req.matches[1] == "bad"
                                                  ? oci::sha256_of("other").str()
                                                  : oci::sha256_of(manifest).str());
      res.set_content(manifest, std::string(oci::media_type::k_manifest));
    });
    reg.start();
  }
};

TEST_CASE("bearer token flow: token fetched with basic credentials, cached, scoped") {
  TokenSetup setup("127.0.0.1");
  ClientOptions o = fast_options();
  o.credentials[setup.reg.authority()] = Credentials{"alice", "secret", {}};
  auto client = client_for(setup.reg.authority(), o);
  auto m = client->get_manifest("ns/img", "v1");
  REQUIRE_MESSAGE(m.has_value(), why(m));
  CHECK(m->digest == oci::sha256_of(setup.manifest));
  CHECK(client->get_manifest("ns/img", "v1").has_value());
  REQUIRE(setup.token_queries.size() == 1);  // the token is reused
  CHECK(setup.token_queries[0] == "service=test-registry scope=repository:ns/img:pull");

  auto bad = client->get_manifest("ns/img", "bad");
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.error().code() == ErrorCode::digest_mismatch);

  o.credentials[setup.reg.authority()] = Credentials{"alice", "wrong", {}};
  auto wrong = client_for(setup.reg.authority(), o);
  auto refused = wrong->get_manifest("ns/img", "v1");
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code() == ErrorCode::permission_denied);
}

TEST_CASE("bearer token flow: no credentials to a token realm on another host") {
  TokenSetup setup("127.0.0.2");
  ClientOptions o = fast_options();
  o.credentials[setup.reg.authority()] = Credentials{"alice", "secret", {}};
  auto client = client_for(setup.reg.authority(), o);
  auto r = client->get_manifest("ns/img", "v1");
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code() == ErrorCode::permission_denied);
  REQUIRE(setup.token_auth.size() == 1);
  CHECK(setup.token_auth[0].empty());  // asked anonymously
}

TEST_CASE("transient failures are retried with backoff, permanent ones are not") {
  std::atomic<int> manifest_requests{0};
  std::atomic<int> missing_requests{0};
  HttpServer server;
  oci::ImageManifest im{descriptor_of(oci::media_type::k_config, "{}"), {}, {}};
  std::string manifest = oci::serialize(im);
  server.routes().Get("/v2/ns/img/manifests/v1",
                      [&](const httplib::Request&, httplib::Response& res) {
                        if (++manifest_requests < 3) {
                          res.status = 503;
                          return;
                        }
                        res.set_content(manifest, std::string(oci::media_type::k_manifest));
                      });
  server.routes().Get(
      "/v2/ns/img/manifests/missing", [&](const httplib::Request&, httplib::Response& res) {
        ++missing_requests;
        res.status = 404;
        res.set_content(R"({"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]})",
                        "application/json");
      });
  server.start();
  auto client = client_for(server.authority());
  auto m = client->get_manifest("ns/img", "v1");
  REQUIRE_MESSAGE(m.has_value(), why(m));
  CHECK(manifest_requests == 3);
  auto missing = client->get_manifest("ns/img", "missing");
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().code() == ErrorCode::not_found);
  CHECK(missing.error().message().find("MANIFEST_UNKNOWN") != std::string::npos);
  CHECK(missing_requests == 1);
}

}  // namespace envd::registry
