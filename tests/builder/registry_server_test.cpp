// The OCI Distribution API over HTTP: uploads (monolithic, chunked, resumed, cancelled), pulls
// with ranges, manifests, tags, error codes, auth, concurrency and TLS, against a real server.
#include "builder/registry_server.hpp"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <thread>

#include "registry_fixture.hpp"
#include "support/run_command.hpp"

namespace envd::builder {
namespace {

namespace fs = std::filesystem;
using namespace envd::builder::registry_test;

httplib::Result post_blob(httplib::Client& c, const std::string& repo, const std::string& data) {
  return c.Post(("/v2/" + repo + "/blobs/uploads/?digest=" + digest_of(data)).c_str(), data,
                "application/octet-stream");
}

std::string push_blob(httplib::Client& c, const std::string& repo, const std::string& data) {
  auto r = post_blob(c, repo, data);
  REQUIRE(r);
  CHECK(r->status == 201);
  return digest_of(data);
}

// Starts a session; returns its Location.
std::string start_session(httplib::Client& c, const std::string& repo) {
  auto r = c.Post(("/v2/" + repo + "/blobs/uploads/").c_str());
  REQUIRE(r);
  REQUIRE(r->status == 202);
  CHECK(r->get_header_value("Range") == "0-0");
  CHECK(!r->get_header_value("Docker-Upload-UUID").empty());
  return r->get_header_value("Location");
}

httplib::Result patch(httplib::Client& c, const std::string& location, std::uint64_t first,
                      const std::string& chunk) {
  std::string range = std::to_string(first) + "-" + std::to_string(first + chunk.size() - 1);
  return c.Patch(location.c_str(), {{"Content-Range", range}}, chunk, "application/octet-stream");
}

// A small image: config + layers, as bytes, and its manifest.
struct TestImage {
  std::string config;
  std::vector<std::string> layers;
  std::string manifest;
  std::string digest;
};

TestImage make_image(std::vector<std::string> layers) {
  TestImage img;
  oci::ImageConfig config;
  config.architecture = "amd64";
  config.os = "linux";
  for (const auto& l : layers) config.diff_ids.push_back(oci::sha256_of(l));
  img.config = oci::serialize(config);
  oci::ImageManifest m{descriptor(oci::media_type::k_config, img.config), {}, {}};
  for (const auto& l : layers) m.layers.push_back(descriptor(oci::media_type::k_layer_tar, l));
  img.layers = std::move(layers);
  img.manifest = oci::serialize(m);
  img.digest = digest_of(img.manifest);
  return img;
}

httplib::Result put_manifest(httplib::Client& c, const std::string& repo, const std::string& ref,
                             const std::string& manifest) {
  return c.Put(("/v2/" + repo + "/manifests/" + ref).c_str(), manifest,
               std::string(oci::media_type::k_manifest).c_str());
}

void push_image(httplib::Client& c, const std::string& repo, const std::string& tag,
                const TestImage& img) {
  push_blob(c, repo, img.config);
  for (const auto& l : img.layers) push_blob(c, repo, l);
  auto r = put_manifest(c, repo, tag, img.manifest);
  REQUIRE(r);
  REQUIRE(r->status == 201);
  CHECK(r->get_header_value("Docker-Content-Digest") == img.digest);
}

std::size_t files_in(const fs::path& dir) {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
  return n;
}

}  // namespace

TEST_CASE("GET /v2/ answers with the API version header") {
  Registry reg;
  auto c = reg.client();
  auto r = c.Get("/v2/");
  REQUIRE(r);
  CHECK(r->status == 200);
  CHECK(r->get_header_value("Docker-Distribution-API-Version") == "registry/2.0");
  auto unknown = c.Get("/nope");
  REQUIRE(unknown);
  CHECK(unknown->status == 404);
}

TEST_CASE("monolithic upload, then HEAD and GET of the blob") {
  Registry reg;
  auto c = reg.client();
  std::string data = "hello blob";
  auto r = post_blob(c, "team/app", data);
  REQUIRE(r);
  CHECK(r->status == 201);
  CHECK(r->get_header_value("Location") == "/v2/team/app/blobs/" + digest_of(data));
  CHECK(r->get_header_value("Docker-Content-Digest") == digest_of(data));
  auto head = c.Head(("/v2/team/app/blobs/" + digest_of(data)).c_str());
  REQUIRE(head);
  CHECK(head->status == 200);
  CHECK(head->get_header_value("Content-Length") == std::to_string(data.size()));
  CHECK(head->get_header_value("Docker-Content-Digest") == digest_of(data));
  CHECK(head->body.empty());
  auto get = c.Get(("/v2/team/app/blobs/" + digest_of(data)).c_str());
  REQUIRE(get);
  CHECK(get->status == 200);
  CHECK(get->body == data);
  // Blobs are visible only in the repositories they were pushed to.
  auto other = c.Get(("/v2/team/other/blobs/" + digest_of(data)).c_str());
  REQUIRE(other);
  CHECK(other->status == 404);
  CHECK(code_of(other) == "BLOB_UNKNOWN");
}

TEST_CASE("POST then PUT with the whole blob") {
  Registry reg;
  auto c = reg.client();
  std::string data(300 * 1024, 'z');
  auto loc = start_session(c, "team/app");
  auto r = c.Put((loc + "?digest=" + digest_of(data)).c_str(), data, "application/octet-stream");
  REQUIRE(r);
  CHECK(r->status == 201);
  CHECK(*reg.blobs->read_all(*oci::Digest::parse(digest_of(data))) == data);
  CHECK(files_in(reg.scratch / "uploads") == 0);
}

TEST_CASE("chunked upload: in-order PATCHes, status, out-of-order 416, then PUT") {
  Registry reg;
  auto c = reg.client();
  std::string data;
  for (int i = 0; i < 100000; ++i) data += static_cast<char>('a' + i % 26);
  auto loc = start_session(c, "team/app");
  auto p1 = patch(c, loc, 0, data.substr(0, 40000));
  REQUIRE(p1);
  CHECK(p1->status == 202);
  CHECK(p1->get_header_value("Range") == "0-39999");

  // A chunk that does not continue where the session is: 416 with the current range.
  auto gap = patch(c, loc, 50000, data.substr(50000, 10));
  REQUIRE(gap);
  CHECK(gap->status == 416);
  CHECK(gap->get_header_value("Range") == "0-39999");
  auto overlap = patch(c, loc, 0, data.substr(0, 10));
  REQUIRE(overlap);
  CHECK(overlap->status == 416);

  auto status = c.Get(loc.c_str());
  REQUIRE(status);
  CHECK(status->status == 204);
  CHECK(status->get_header_value("Range") == "0-39999");
  CHECK(status->get_header_value("Location") == loc);

  auto p2 = patch(c, loc, 40000, data.substr(40000));
  REQUIRE(p2);
  CHECK(p2->status == 202);
  CHECK(p2->get_header_value("Range") == "0-99999");
  auto put = c.Put((loc + "?digest=" + digest_of(data)).c_str(), "", "application/octet-stream");
  REQUIRE(put);
  CHECK(put->status == 201);
  auto get = c.Get(("/v2/team/app/blobs/" + digest_of(data)).c_str());
  REQUIRE(get);
  CHECK(get->body == data);
  CHECK(files_in(reg.scratch / "uploads") == 0);
  auto gone = c.Get(loc.c_str());
  REQUIRE(gone);
  CHECK(gone->status == 404);
  CHECK(code_of(gone) == "BLOB_UPLOAD_UNKNOWN");
}

TEST_CASE("an upload session survives a server restart; DELETE cancels a session") {
  Registry reg;
  std::string data = "0123456789abcdefghij";
  std::string loc;
  {
    auto c = reg.client();
    loc = start_session(c, "team/app");
    REQUIRE(patch(c, loc, 0, data.substr(0, 10))->status == 202);
  }
  reg.restart();
  auto c = reg.client();
  auto status = c.Get(loc.c_str());
  REQUIRE(status);
  CHECK(status->status == 204);
  CHECK(status->get_header_value("Range") == "0-9");
  auto put = c.Put((loc + "?digest=" + digest_of(data)).c_str(), {{"Content-Range", "10-19"}},
                   data.substr(10), "application/octet-stream");
  REQUIRE(put);
  CHECK(put->status == 201);

  auto loc2 = start_session(c, "team/app");
  auto del = c.Delete(loc2.c_str());
  REQUIRE(del);
  CHECK(del->status == 204);
  CHECK(c.Get(loc2.c_str())->status == 404);
  CHECK(files_in(reg.scratch / "uploads") == 0);
}

TEST_CASE("a digest mismatch is 400 DIGEST_INVALID and stores nothing") {
  Registry reg;
  auto c = reg.client();
  std::string wrong = digest_of("something else");
  auto mono = c.Post(("/v2/team/app/blobs/uploads/?digest=" + wrong).c_str(), "payload",
                     "application/octet-stream");
  REQUIRE(mono);
  CHECK(mono->status == 400);
  CHECK(code_of(mono) == "DIGEST_INVALID");
  auto loc = start_session(c, "team/app");
  REQUIRE(patch(c, loc, 0, "payload")->status == 202);
  auto put = c.Put((loc + "?digest=" + wrong).c_str(), "", "application/octet-stream");
  REQUIRE(put);
  CHECK(put->status == 400);
  CHECK(code_of(put) == "DIGEST_INVALID");
  CHECK(reg.stored_blobs() == 0);
  CHECK(files_in(reg.scratch / "store" / "ingest") == 0);
  CHECK(files_in(reg.scratch / "uploads") == 0);
  CHECK(c.Head(("/v2/team/app/blobs/" + digest_of("payload")).c_str())->status == 404);
}

TEST_CASE("malformed digests are 400 DIGEST_INVALID with nothing written") {
  Registry reg;
  auto c = reg.client();
  std::string hex(64, 'a');
  auto before = test::tree_listing(reg.scratch / "store");
  for (std::string bad : std::vector<std::string>{
           "sha256:../../x", "sha256:" + std::string(64, 'A'), "sha256:" + hex.substr(1),
           "md5:d41d8cd98f00b204e9800998ecf8427e", "sha256:" + hex + "0", "nonsense"}) {
    CAPTURE(bad);
    auto post = c.Post(("/v2/team/app/blobs/uploads/?digest=" + bad).c_str(), "x", "text/plain");
    REQUIRE(post);
    CHECK(post->status == 400);
    CHECK(code_of(post) == "DIGEST_INVALID");
    auto get = c.Get(("/v2/team/app/blobs/" + bad).c_str());
    REQUIRE(get);
    CHECK(get->status == 400);
    CHECK(code_of(get) == "DIGEST_INVALID");
  }
  CHECK(test::tree_listing(reg.scratch / "store") == before);
}

TEST_CASE("invalid repository names are NAME_INVALID; invalid tags MANIFEST_INVALID") {
  Registry reg;
  auto c = reg.client();
  for (std::string bad : {"Team/app", "team/-app", "team//app", "a..b"}) {
    CAPTURE(bad);
    auto r = c.Post(("/v2/" + bad + "/blobs/uploads/").c_str());
    REQUIRE(r);
    CHECK(r->status == 400);
    CHECK(code_of(r) == "NAME_INVALID");
  }
  auto img = make_image({"layer"});
  push_blob(c, "team/app", img.config);
  push_blob(c, "team/app", img.layers[0]);
  for (std::string bad : std::vector<std::string>{".hidden", "-x", std::string(129, 't')}) {
    auto r = put_manifest(c, "team/app", bad, img.manifest);
    REQUIRE(r);
    CHECK(r->status == 400);
    CHECK(code_of(r) == "MANIFEST_INVALID");
  }
  CHECK(reg.index->tags("team/app")->empty());
}

TEST_CASE("manifests: push by tag and digest, pull with stored type, missing blobs, size limit") {
  ServerOptions o;
  o.limits.manifest_bytes = 2048;
  Registry reg(o);
  auto c = reg.client();
  auto img = make_image({"layer one", "layer two"});

  // Referenced blobs must be in this repository first.
  push_blob(c, "team/app", img.config);
  auto missing = put_manifest(c, "team/app", "v1", img.manifest);
  REQUIRE(missing);
  CHECK(missing->status == 400);
  auto errors = nlohmann::json::parse(missing->body)["errors"];
  REQUIRE(errors.size() == 2);
  CHECK(errors[0]["code"] == "MANIFEST_BLOB_UNKNOWN");
  CHECK(errors[0]["detail"]["digest"] == digest_of("layer one"));
  CHECK_FALSE(reg.index->resolve("team/app", "v1")->has_value());

  for (const auto& l : img.layers) push_blob(c, "team/app", l);
  auto wrong_digest = put_manifest(c, "team/app", digest_of("other"), img.manifest);
  REQUIRE(wrong_digest);
  CHECK(wrong_digest->status == 400);
  CHECK(code_of(wrong_digest) == "DIGEST_INVALID");
  auto by_digest = put_manifest(c, "team/app", img.digest, img.manifest);
  REQUIRE(by_digest);
  CHECK(by_digest->status == 201);
  auto by_tag = put_manifest(c, "team/app", "v1", img.manifest);
  REQUIRE(by_tag);
  CHECK(by_tag->status == 201);
  CHECK(by_tag->get_header_value("Location") == "/v2/team/app/manifests/" + img.digest);

  for (std::string ref : {std::string("v1"), img.digest}) {
    auto get = c.Get(("/v2/team/app/manifests/" + ref).c_str());
    REQUIRE(get);
    CHECK(get->status == 200);
    CHECK(get->body == img.manifest);
    CHECK(get->get_header_value("Content-Type") == oci::media_type::k_manifest);
    CHECK(get->get_header_value("Docker-Content-Digest") == img.digest);
    auto head = c.Head(("/v2/team/app/manifests/" + ref).c_str());
    REQUIRE(head);
    CHECK(head->status == 200);
    CHECK(head->get_header_value("Content-Length") == std::to_string(img.manifest.size()));
    CHECK(head->body.empty());
  }
  auto unknown = c.Get("/v2/team/app/manifests/v9");
  REQUIRE(unknown);
  CHECK(unknown->status == 404);
  CHECK(code_of(unknown) == "MANIFEST_UNKNOWN");
  auto garbage = put_manifest(c, "team/app", "v2", "{not json");
  REQUIRE(garbage);
  CHECK(garbage->status == 400);
  CHECK(code_of(garbage) == "MANIFEST_INVALID");

  std::string big = img.manifest;
  big.insert(big.size() - 1, ",\"annotations\":{\"pad\":\"" + std::string(4096, 'p') + "\"}");
  auto too_big = put_manifest(c, "team/app", "big", big);
  REQUIRE(too_big);
  CHECK(too_big->status == 413);
  CHECK(code_of(too_big) == "MANIFEST_INVALID");
  CHECK_FALSE(reg.index->resolve("team/app", "big")->has_value());
  CHECK(c.Delete(("/v2/team/app/manifests/" + img.digest).c_str())->status == 405);
}

TEST_CASE("a manifest PUT by tag reports the moved tag; a PUT by digest does not") {
  std::vector<std::string> moved;
  std::mutex mutex;
  ServerOptions o;
  o.on_tag_changed = [&](const std::string& repo) {
    std::lock_guard lock(mutex);
    moved.push_back(repo);
  };
  Registry reg(o);
  auto c = reg.client();
  auto img = make_image({"only layer"});
  push_blob(c, "team/app", img.config);
  for (const auto& l : img.layers) push_blob(c, "team/app", l);
  auto by_digest = put_manifest(c, "team/app", digest_of(img.manifest), img.manifest);
  REQUIRE(by_digest);
  CHECK(by_digest->status == 201);
  CHECK(moved.empty());
  auto by_tag = put_manifest(c, "team/app", "v2", img.manifest);
  REQUIRE(by_tag);
  CHECK(by_tag->status == 201);
  std::lock_guard lock(mutex);
  CHECK(moved == std::vector<std::string>{"team/app"});
}

TEST_CASE("Range requests get 206 with the exact bytes") {
  Registry reg;
  auto c = reg.client();
  std::string data;
  for (int i = 0; i < 1000; ++i) data += static_cast<char>(i % 251);
  auto d = push_blob(c, "team/app", data);
  auto path = "/v2/team/app/blobs/" + d;
  struct Case {
    std::string range;
    std::string content_range;
    std::string bytes;
  };
  for (const Case& k : {Case{"bytes=10-19", "bytes 10-19/1000", data.substr(10, 10)},
                        Case{"bytes=990-", "bytes 990-999/1000", data.substr(990)},
                        Case{"bytes=-5", "bytes 995-999/1000", data.substr(995)},
                        Case{"bytes=900-5000", "bytes 900-999/1000", data.substr(900)}}) {
    CAPTURE(k.range);
    auto r = c.Get(path.c_str(), {{"Range", k.range}});
    REQUIRE(r);
    CHECK(r->status == 206);
    CHECK(r->get_header_value("Content-Range") == k.content_range);
    CHECK(r->body == k.bytes);
  }
  auto past = c.Get(path.c_str(), {{"Range", "bytes=1000-1001"}});
  REQUIRE(past);
  CHECK(past->status == 416);
  CHECK(past->get_header_value("Content-Range") == "bytes */1000");
  auto multi = c.Get(path.c_str(), {{"Range", "bytes=0-1,5-6"}});
  REQUIRE(multi);
  CHECK(multi->status == 200);
  CHECK(multi->body == data);
}

TEST_CASE("tags list paginates with n and last, and a Link to the next page") {
  Registry reg;
  auto c = reg.client();
  auto img = make_image({"l"});
  for (std::string tag : {"e", "a", "d", "b", "c"}) push_image(c, "team/app", tag, img);
  auto all = c.Get("/v2/team/app/tags/list");
  REQUIRE(all);
  CHECK(nlohmann::json::parse(all->body) ==
        nlohmann::json{{"name", "team/app"}, {"tags", {"a", "b", "c", "d", "e"}}});
  std::vector<std::string> seen;
  std::string next = "/v2/team/app/tags/list?n=2";
  int pages = 0;
  while (!next.empty() && pages < 10) {
    auto r = c.Get(next.c_str());
    REQUIRE(r);
    REQUIRE(r->status == 200);
    ++pages;
    auto body = nlohmann::json::parse(r->body);
    for (const auto& t : body["tags"]) seen.push_back(t.get<std::string>());
    std::string link = r->get_header_value("Link");
    next = link.empty() ? "" : link.substr(1, link.find('>') - 1);
  }
  CHECK(pages == 3);
  CHECK(seen == std::vector<std::string>{"a", "b", "c", "d", "e"});
  auto after = c.Get("/v2/team/app/tags/list?last=c");
  CHECK(nlohmann::json::parse(after->body)["tags"] == nlohmann::json{"d", "e"});
  auto unknown = c.Get("/v2/team/none/tags/list");
  REQUIRE(unknown);
  CHECK(unknown->status == 404);
  CHECK(code_of(unknown) == "NAME_UNKNOWN");
}

TEST_CASE("cross-repository mount: 201 from a readable repository, else a new session") {
  Registry reg;
  auto c = reg.client();
  auto d = push_blob(c, "team/a", "shared layer");
  auto mounted = c.Post(("/v2/team/b/blobs/uploads/?mount=" + d + "&from=team/a").c_str());
  REQUIRE(mounted);
  CHECK(mounted->status == 201);
  CHECK(mounted->get_header_value("Docker-Content-Digest") == d);
  CHECK(c.Get(("/v2/team/b/blobs/" + d).c_str())->body == "shared layer");
  auto fallback = c.Post(("/v2/team/c/blobs/uploads/?mount=" + d + "&from=team/none").c_str());
  REQUIRE(fallback);
  CHECK(fallback->status == 202);
  CHECK(!fallback->get_header_value("Location").empty());
  CHECK(reg.stored_blobs() == 1);
}

TEST_CASE("auth: 401 without a valid token, 403 beyond a token's rights or namespaces") {
  ServerOptions o;
  o.auth.tokens = {{"pusher", token_hash("push-secret"), {"team"}, Access::push},
                   {"reader", token_hash("pull-secret"), {"team/"}, Access::pull},
                   {"everyone", token_hash("all-secret"), {"*"}, Access::pull}};
  Registry reg(o);
  auto anon = reg.client();
  auto r = anon.Get("/v2/");
  REQUIRE(r);
  CHECK(r->status == 401);
  CHECK(code_of(r) == "UNAUTHORIZED");
  std::vector<std::string> challenges;
  for (auto [it, end] = r->headers.equal_range("WWW-Authenticate"); it != end; ++it)
    challenges.push_back(it->second);
  CHECK(std::find(challenges.begin(), challenges.end(), "Bearer realm=\"envd\",service=\"envd\"") !=
        challenges.end());
  CHECK(std::find(challenges.begin(), challenges.end(), "Basic realm=\"envd\"") !=
        challenges.end());
  CHECK(reg.client("wrong-secret").Get("/v2/")->status == 401);
  CHECK(anon.Get("/v2/team/app/tags/list")->status == 401);

  auto pusher = reg.client("push-secret");
  CHECK(pusher.Get("/v2/")->status == 200);
  push_image(pusher, "team/app", "v1", make_image({"layer"}));
  auto outside = post_blob(pusher, "b/x", "data");
  REQUIRE(outside);
  CHECK(outside->status == 403);
  CHECK(code_of(outside) == "DENIED");
  CHECK(post_blob(pusher, "teamx/app", "data")->status == 403);  // whole components only

  auto reader = reg.client("pull-secret");
  CHECK(reader.Get("/v2/team/app/manifests/v1")->status == 200);
  auto denied = post_blob(reader, "team/app", "data");
  REQUIRE(denied);
  CHECK(denied->status == 403);
  CHECK(code_of(denied) == "DENIED");
  CHECK(reader.Post("/v2/team/app/blobs/uploads/")->status == 403);

  // Basic auth with the token as password, as `skopeo --creds user:token` sends it.
  auto basic = reg.client();
  basic.set_basic_auth("whoever", "push-secret");
  CHECK(post_blob(basic, "team/app", "via basic")->status == 201);
  auto basic_wrong = reg.client();
  basic_wrong.set_basic_auth("push-secret", "nope");
  CHECK(basic_wrong.Get("/v2/")->status == 401);

  // A mount needs pull on the source: "pusher" cannot read "other/x", so it gets a session.
  auto everyone_blob = reg.blobs->put("secret layer");
  REQUIRE(everyone_blob.has_value());
  REQUIRE(reg.index->link_blob("other/x", *everyone_blob).has_value());
  auto mount = pusher.Post(
      ("/v2/team/app/blobs/uploads/?mount=" + everyone_blob->str() + "&from=other/x").c_str());
  REQUIRE(mount);
  CHECK(mount->status == 202);
  CHECK_FALSE(*reg.index->has_blob("team/app", *everyone_blob));
}

TEST_CASE("without tokens the server refuses non-loopback addresses") {
  ScratchDir dir;
  auto blobs = store::FsBlobStore::create(dir / "store");
  auto index = RegistryIndex::open(dir / "registry.sqlite");
  REQUIRE(blobs.has_value());
  REQUIRE(index.has_value());
  ServerOptions o;
  o.host = "0.0.0.0";
  o.upload_dir = dir / "uploads";
  auto refused = RegistryServer::create(**blobs, **index, o);
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code() == ErrorCode::failed_precondition);
  o.auth.tokens = {{"ci", token_hash("t"), {"*"}, Access::push}};
  CHECK(RegistryServer::create(**blobs, **index, o).has_value());
  CHECK(is_loopback_host("127.0.0.2"));
  CHECK(is_loopback_host("::1"));
  CHECK(is_loopback_host("[::1]"));
  CHECK(is_loopback_host("localhost"));
  CHECK_FALSE(is_loopback_host("10.0.0.1"));
  CHECK_FALSE(is_loopback_host("::"));
}

TEST_CASE("20 clients pushing overlapping blobs and manifests at once all succeed") {
  Registry reg;
  std::vector<std::string> layers;
  for (int i = 0; i < 5; ++i) layers.push_back(std::string(70000 + i, static_cast<char>('a' + i)));
  auto img = make_image(layers);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 20; ++t) {
    threads.emplace_back([&, t] {
      auto c = reg.client();
      std::string repo = "conc/r" + std::to_string(t % 3);
      auto ok = [&](const httplib::Result& r, int status) {
        if (!r || r->status != status) ++failures;
        return r && r->status == status;
      };
      for (const auto& l : img.layers) {  // chunked: POST, two PATCHes, PUT
        auto start = c.Post(("/v2/" + repo + "/blobs/uploads/").c_str());
        if (!ok(start, 202)) return;
        auto loc = start->get_header_value("Location");
        ok(patch(c, loc, 0, l.substr(0, 30000)), 202);
        ok(patch(c, loc, 30000, l.substr(30000)), 202);
        ok(c.Put((loc + "?digest=" + digest_of(l)).c_str(), "", "application/octet-stream"), 201);
      }
      ok(post_blob(c, repo, img.config), 201);
      ok(put_manifest(c, repo, "t" + std::to_string(t), img.manifest), 201);
    });
  }
  for (auto& th : threads) th.join();
  CHECK(failures == 0);
  CHECK(reg.stored_blobs() == 7);  // 5 layers, 1 config, 1 manifest: each stored once
  CHECK(files_in(reg.scratch / "uploads") == 0);
  CHECK(files_in(reg.scratch / "store" / "ingest") == 0);
  for (int t = 0; t < 20; ++t) {
    auto ref = reg.index->resolve("conc/r" + std::to_string(t % 3), "t" + std::to_string(t));
    REQUIRE(ref.has_value());
    REQUIRE(ref->has_value());
    CHECK((*ref)->digest.str() == img.digest);
  }
}

TEST_CASE("TLS: the server speaks https with the configured certificate") {
  ScratchDir certs;
  auto gen =
      test::run_command({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                         "-subj", "/CN=127.0.0.1", "-keyout", (certs / "key.pem").string(), "-out",
                         (certs / "cert.pem").string()});
  REQUIRE_MESSAGE(gen.exit_code == 0, gen.err);
  ServerOptions o;
  o.tls = TlsConfig{certs / "cert.pem", certs / "key.pem"};
  Registry reg(o);
  httplib::SSLClient c("127.0.0.1", reg.port);
  c.enable_server_certificate_verification(false);
  auto r = c.Get("/v2/");
  REQUIRE(r);
  CHECK(r->status == 200);
  o.tls = TlsConfig{certs / "missing.pem", certs / "key.pem"};
  auto blobs = store::FsBlobStore::create(certs / "store");
  auto bad = RegistryServer::create(**blobs, *reg.index, [&] {
    auto x = o;
    x.upload_dir = certs / "uploads";
    return x;
  }());
  CHECK_FALSE(bad.has_value());
}
}  // namespace envd::builder
