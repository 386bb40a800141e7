// BuilderClient against the builder's real server in-process (RegistryServer + envd API over a
// BuilderState in a scratch dir, 127.0.0.1, OS-chosen port): missing blobs, batched parallel
// uploads, snapshot 409 then 200, builds followed to the end, tag watch and manifest, a file that
// changed after hashing, token auth, and an unreachable builder.
#include <signal.h>

#include <algorithm>

#include "agent/builder_client.hpp"
#include "builder/auth.hpp"
#include "builder/builder_state.hpp"
#include "builder/envd_api.hpp"
#include "builder/registry_fixture.hpp"
#include "envd/snapshot/snapshot.hpp"

namespace envd::agent {
namespace {

namespace fs = std::filesystem;
using builder::registry_test::ScratchDir;
using builder::registry_test::why;

// A builder (OCI API + envd API) on 127.0.0.1 with an OS-chosen port over a scratch data dir.
struct Builder {
  ScratchDir scratch;
  std::unique_ptr<builder::BuilderState> state;
  std::unique_ptr<builder::RegistryServer> server;
  std::shared_ptr<builder::EnvdApi> api;
  int port = 0;

  explicit Builder(builder::ServerOptions options = {}, builder::EnvdApiOptions api_options = {}) {
    auto s = builder::BuilderState::open(scratch / "data");
    REQUIRE_MESSAGE(s.has_value(), why(s));
    state = std::move(*s);
    options.upload_dir = scratch / "data" / "uploads";
    auto created = builder::RegistryServer::create(*state->blobs, *state->index, options);
    REQUIRE_MESSAGE(created.has_value(), why(created));
    server = std::move(*created);
    api = builder::add_envd_api(*server, *state, api_options);
    auto p = server->start();
    REQUIRE(p.has_value());
    port = *p;
  }
  ~Builder() {
    api->shutdown();
    server->stop();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port); }
  bool has(const oci::Digest& d) const { return state->blobs->contains(d); }
};

std::unique_ptr<BuilderClient> client_for(const std::string& url, const std::string& token = {}) {
  BuilderClientOptions o;
  o.url = url;
  o.token = token;
  auto c = BuilderClient::create(o);
  REQUIRE_MESSAGE(c.has_value(), why(c));
  return std::move(*c);
}

// Files of a prefix on disk, as a snapshot's unowned files and as blobs to upload.
struct Prefix {
  fs::path root;
  snapshot::Snapshot snap;
  std::vector<BlobSource> blobs;

  Prefix(const fs::path& dir, const std::vector<std::pair<std::string, std::string>>& files)
      : root(dir) {
    snapshot::Environment env;
    env.kind = snapshot::EnvironmentKind::prefix;
    env.name = "env";
    env.prefix = dir.string();
    env.python_version = "3.11.7";
    auto sorted = files;
    std::sort(sorted.begin(), sorted.end());
    for (const auto& [path, content] : sorted) {
      test::write_file(dir / path, content);
      snapshot::FileEntry e;
      e.path = path;
      e.mode = 0644;
      e.digest = oci::sha256_of(content);
      e.size = content.size();
      env.unowned.push_back(e);
      blobs.push_back({*e.digest, e.size, dir / path});
    }
    snap.platform = {"linux", "amd64", "glibc 2.36"};
    snap.environments = {env};
    snap.created = "2024-03-01T12:00:00Z";
    snap.host = "laptop";
    snap.envd_version = "0.1.0";
  }
  std::vector<oci::Digest> digests() const {
    std::vector<oci::Digest> out;
    for (const auto& b : blobs) out.push_back(b.digest);
    return out;
  }
};

std::vector<std::pair<std::string, std::string>> sample_files() {
  std::vector<std::pair<std::string, std::string>> files;
  for (int i = 0; i < 40; ++i)
    files.emplace_back("lib/small" + std::to_string(i) + ".py", "X = " + std::to_string(i) + "\n");
  files.emplace_back("lib/empty.py", "");
  files.emplace_back("lib/big1.so", std::string(300000, 'a'));
  files.emplace_back("lib/big2.so", std::string(200000, 'b'));
  return files;
}

}  // namespace

TEST_CASE("missing, batched parallel upload, snapshot, build, tag: the whole push protocol") {
  Builder b;
  ScratchDir dir;
  Prefix prefix(dir / "env", sample_files());
  auto client = client_for(b.url() + "/");  // a trailing '/' is ignored
  CHECK(client->url() == b.url());
  CHECK(client->host() == "127.0.0.1:" + std::to_string(b.port));

  auto missing = client->missing_blobs("team/env", prefix.digests());
  REQUIRE_MESSAGE(missing.has_value(), why(missing));
  CHECK(missing->size() == prefix.blobs.size());

  // Before the blobs: the snapshot is refused with the list of what is missing.
  auto doc = snapshot::to_json(prefix.snap);
  REQUIRE(doc.has_value());
  auto early = client->submit_snapshot("team/env", *doc);
  REQUIRE_MESSAGE(early.has_value(), why(early));
  CHECK_FALSE(early->digest.has_value());
  CHECK(early->missing.size() == prefix.blobs.size());

  UploadOptions options;
  options.large_bytes = 100000;  // both big files alone
  options.batch_blobs = 16;      // 41 small files: 3 requests
  options.parallel = 3;
  std::atomic<std::uint64_t> progress{0};
  std::uint64_t before = client->bytes_sent();
  auto up = client->upload_blobs("team/env", prefix.blobs, options, &progress);
  REQUIRE_MESSAGE(up.has_value(), why(up));
  CHECK(up->blobs == prefix.blobs.size());
  CHECK(up->requests == 5);
  std::uint64_t body = 0;
  for (const auto& blob : prefix.blobs)
    body += blob.digest.str().size() + 1 + std::to_string(blob.size).size() + 1 + blob.size;
  CHECK(up->bytes == body);
  CHECK(progress.load() == body);
  CHECK(client->bytes_sent() - before == body);
  for (const auto& blob : prefix.blobs) CHECK(b.has(blob.digest));
  auto none = client->missing_blobs("team/env", prefix.digests());
  REQUIRE(none.has_value());
  CHECK(none->empty());

  auto submitted = client->submit_snapshot("team/env", *doc);
  REQUIRE_MESSAGE(submitted.has_value(), why(submitted));
  REQUIRE(submitted->digest.has_value());
  CHECK(*submitted->digest == *snapshot::digest_of(prefix.snap));

  auto id = client->start_build("team/env", *submitted->digest, "v1", "gzip");
  REQUIRE_MESSAGE(id.has_value(), why(id));
  std::vector<std::uint64_t> versions;
  auto built = client->wait_build("team/env", *id,
                                  [&](const RemoteBuild& s) { versions.push_back(s.version); });
  REQUIRE_MESSAGE(built.has_value(), why(built));
  CHECK(built->state == RemoteBuild::State::succeeded);
  CHECK(std::is_sorted(versions.begin(), versions.end()));
  REQUIRE(built->manifest_digest.has_value());
  CHECK(built->layers >= 2);
  auto tagged = b.state->index->resolve("team/env", "v1");
  REQUIRE(tagged.has_value());
  REQUIRE(tagged->has_value());
  CHECK((*tagged)->digest == *built->manifest_digest);

  // The same request again (a rerun after an interruption) is the same build or an identical
  // result: a build is keyed by its snapshot.
  auto again = client->start_build("team/env", *submitted->digest, "v1", "gzip");
  REQUIRE(again.has_value());
  auto rebuilt = client->wait_build("team/env", *again);
  REQUIRE(rebuilt.has_value());
  CHECK(*rebuilt->manifest_digest == *built->manifest_digest);
  CHECK(rebuilt->layers_reused == rebuilt->layers);

  auto watched = client->watch_tag("team/env", "v1", std::nullopt, 0);
  REQUIRE_MESSAGE(watched.has_value(), why(watched));
  CHECK(*watched == built->manifest_digest);
  auto absent = client->watch_tag("team/env", "nope", std::nullopt, 0);
  REQUIRE(absent.has_value());
  CHECK_FALSE(absent->has_value());

  auto manifest = client->tag_manifest("team/env", "v1");
  REQUIRE_MESSAGE(manifest.has_value(), why(manifest));
  REQUIRE(manifest->has_value());
  CHECK((*manifest)->digest == *built->manifest_digest);
  CHECK((*manifest)->snapshot_digest == submitted->digest);
  CHECK((*manifest)->layer_media_types.size() == built->layers);
  for (const auto& m : (*manifest)->layer_media_types) CHECK(m.ends_with("+gzip"));
  auto no_tag = client->tag_manifest("team/env", "v2");
  REQUIRE(no_tag.has_value());
  CHECK_FALSE(no_tag->has_value());
}

TEST_CASE("a file that changed after hashing fails naming it; the blobs before it stay") {
  Builder b;
  ScratchDir dir;
  Prefix prefix(dir / "env", {{"a.py", "alpha\n"}, {"b.py", "beta\n"}, {"c.py", "gamma\n"}});
  auto client = client_for(b.url());

  SUBCASE("same size, other bytes: the builder's digest check refuses it") {
    test::write_file(dir / "env/b.py", "BETA\n");
    UploadOptions one_request;
    one_request.parallel = 1;
    // Within a batch bigger blobs go first: a.py and c.py (6 bytes), then b.py (5).
    auto up = client->upload_blobs("team/env", prefix.blobs, one_request);
    REQUIRE_FALSE(up.has_value());
    CHECK(up.error().code() == ErrorCode::failed_precondition);
    CHECK(up.error().message().find((dir / "env/b.py").string()) != std::string::npos);
    CHECK(up.error().message().find("changed since it was hashed") != std::string::npos);
    CHECK(b.has(prefix.blobs[0].digest));
    CHECK(b.has(prefix.blobs[2].digest));
    CHECK_FALSE(b.has(prefix.blobs[1].digest));
  }
  SUBCASE("another size: the client notices before sending it") {
    test::write_file(dir / "env/c.py", "gamma, longer now\n");
    auto up = client->upload_blobs("team/env", prefix.blobs);
    REQUIRE_FALSE(up.has_value());
    CHECK(up.error().code() == ErrorCode::failed_precondition);
    CHECK(up.error().message().find((dir / "env/c.py").string()) != std::string::npos);
    CHECK_FALSE(b.has(prefix.blobs[2].digest));
  }
  SUBCASE("gone") {
    fs::remove(dir / "env/a.py");
    auto up = client->upload_blobs("team/env", prefix.blobs);
    REQUIRE_FALSE(up.has_value());
    CHECK(up.error().code() == ErrorCode::failed_precondition);
    CHECK(up.error().message().find((dir / "env/a.py").string()) != std::string::npos);
  }
}

TEST_CASE("tokens: none or a wrong one is refused (401), another namespace is denied (403)") {
  builder::ServerOptions options;
  options.auth.tokens = {
      {"dev", builder::token_hash("dev-token"), {"team"}, builder::Access::push}};
  Builder b(options);
  ScratchDir dir;
  Prefix prefix(dir / "env", {{"a.py", "alpha\n"}});

  for (const std::string token : {"", "wrong-token"}) {
    CAPTURE(token);
    auto refused = client_for(b.url(), token)->missing_blobs("team/env", prefix.digests());
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code() == ErrorCode::permission_denied);
    CHECK(refused.error().message().find("401") != std::string::npos);
    CHECK(refused.error().message().find("ENVD_TOKEN") != std::string::npos);
  }
  auto good = client_for(b.url(), "dev-token");
  auto denied = good->upload_blobs("other/env", prefix.blobs);
  REQUIRE_FALSE(denied.has_value());
  CHECK(denied.error().code() == ErrorCode::permission_denied);
  CHECK(denied.error().message().find("403") != std::string::npos);
  CHECK_FALSE(b.has(prefix.blobs[0].digest));

  auto up = good->upload_blobs("team/env", prefix.blobs);
  REQUIRE_MESSAGE(up.has_value(), why(up));
  CHECK(b.has(prefix.blobs[0].digest));
}

TEST_CASE("a batch over the builder's limit fails the upload, naming the builder") {
  ::signal(SIGPIPE, SIG_IGN);  // as envd push does: the builder may close mid-body
  builder::EnvdApiOptions limits;
  limits.limits.batch_bytes = 4096;
  Builder b({}, limits);
  ScratchDir dir;
  Prefix prefix(dir / "env", {{"big.bin", std::string(300000, 'x')}});
  auto up = client_for(b.url())->upload_blobs("team/env", prefix.blobs);
  REQUIRE_FALSE(up.has_value());
  CHECK((up.error().code() == ErrorCode::invalid_argument ||
         up.error().code() == ErrorCode::unavailable));
  CHECK(up.error().message().find(b.url()) != std::string::npos);
  CHECK_FALSE(b.has(prefix.blobs[0].digest));
}

TEST_CASE("an unreachable builder: unavailable, saying why and what to do") {
  int port = 0;
  {
    Builder b;  // a port that was just in use, now closed
    port = b.port;
  }
  auto client = client_for("http://127.0.0.1:" + std::to_string(port));
  auto r = client->missing_blobs("team/env", {});
  CHECK(r.has_value());  // no digests: nothing to ask
  auto m = client->tag_manifest("team/env", "latest");
  REQUIRE_FALSE(m.has_value());
  CHECK(m.error().code() == ErrorCode::unavailable);
  CHECK(m.error().message() ==
        "cannot reach builder http://127.0.0.1:" + std::to_string(port) +
            ": connection refused; is `envd builder serve` running there? (set the builder with "
            "--builder, ENVD_BUILDER or the config)");
}

TEST_CASE("builder URLs: only http(s)://HOST[:PORT]") {
  for (const std::string bad : {"ftp://x", "127.0.0.1:5000", "http://x/path", "http://", ""}) {
    CAPTURE(bad);
    BuilderClientOptions o;
    o.url = bad;
    auto c = BuilderClient::create(o);
    REQUIRE_FALSE(c.has_value());
    CHECK(c.error().code() == ErrorCode::invalid_argument);
  }
}

}  // namespace envd::agent
