// The envd API (/envd/v1/) on an in-process server over a BuilderState in a scratch dir: missing
// blobs, streamed batches (a corrupt blob keeps the earlier ones), snapshots (409 with the missing
// list, 400 for ".."), builds with long-polled progress and shared identical builds, tag watches,
// auth, and every document against its JSON Schema in schemas/envd-api/.
#include <algorithm>
#include <condition_variable>
#include <future>
#include <mutex>
#include <sstream>

#include "builder/builder_state.hpp"
#include "builder/envd_api.hpp"
#include "envd/snapshot/snapshot_patch.hpp"
#include "registry_fixture.hpp"
#include "support/run_command.hpp"

namespace envd::builder {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace envd::builder::registry_test;

// Holds builds at their start while closed (EnvdApiOptions::before_build), so that a test sees a
// running build without racing it.
struct Gate {
  std::mutex mutex;
  std::condition_variable cv;
  bool open = true;

  void pass() {
    std::unique_lock lock(mutex);
    cv.wait(lock, [&] { return open; });
  }
  void set(bool value) {
    std::lock_guard lock(mutex);
    open = value;
    cv.notify_all();
  }
};

// A builder (OCI API + envd API) on 127.0.0.1 with an OS-chosen port over a scratch data dir.
struct Api {
  Gate gate;
  ScratchDir scratch;
  std::unique_ptr<BuilderState> state;
  std::unique_ptr<RegistryServer> server;
  std::shared_ptr<EnvdApi> api;
  int port = 0;

  explicit Api(ServerOptions server_options = {}, EnvdApiOptions options = {}) {
    auto s = BuilderState::open(scratch / "data");
    REQUIRE_MESSAGE(s.has_value(), why(s));
    state = std::move(*s);
    server_options.upload_dir = scratch / "data" / "uploads";
    auto created = RegistryServer::create(*state->blobs, *state->index, server_options);
    REQUIRE_MESSAGE(created.has_value(), why(created));
    server = std::move(*created);
    options.before_build = [this](std::string_view) { gate.pass(); };
    api = add_envd_api(*server, *state, options);
    auto p = server->start();
    REQUIRE(p.has_value());
    port = *p;
  }
  ~Api() {
    gate.set(true);
    api->shutdown();
    server->stop();
  }

  httplib::Client client(const std::string& token = {}) const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(90, 0);  // long polls wait up to 60 s
    if (!token.empty()) c.set_bearer_token_auth(token);
    return c;
  }
  fs::path data() const { return scratch / "data"; }
};

struct Reply {
  int status = 0;
  json body;
};

Reply reply_of(const httplib::Result& r) {
  REQUIRE(r);
  auto j = json::parse(r->body, nullptr, false);
  INFO("body: " << r->body);
  REQUIRE_FALSE(j.is_discarded());
  return {r->status, j};
}

Reply post(const Api& a, const std::string& path, const std::string& body,
           const std::string& type = "application/json") {
  return reply_of(a.client().Post(path.c_str(), body, type.c_str()));
}

Reply get(const Api& a, const std::string& path) {
  return reply_of(a.client().Get(path.c_str()));
}

std::string record(std::string_view content) {
  return digest_of(content) + " " + std::to_string(content.size()) + "\n" + std::string(content);
}

struct File {
  std::string path;
  std::string content;
  std::uint32_t mode = 0644;
  std::string target;  // set: a symlink
};

// A snapshot of one prefix environment holding `files` (sorted by path) as unowned files.
snapshot::Snapshot make_snapshot(std::vector<File> files) {
  std::sort(files.begin(), files.end(), [](auto& a, auto& b) { return a.path < b.path; });
  snapshot::Environment env;
  env.kind = snapshot::EnvironmentKind::prefix;
  env.name = "env";
  env.prefix = "/opt/envd-test/env";
  env.python_version = "3.11.7";
  for (const auto& f : files) {
    snapshot::FileEntry e;
    e.path = f.path;
    e.mode = f.mode;
    if (f.target.empty()) {
      e.digest = oci::sha256_of(f.content);
      e.size = f.content.size();
    } else {
      e.type = snapshot::FileType::symlink;
      e.target = f.target;
    }
    env.unowned.push_back(e);
  }
  snapshot::Snapshot s;
  s.platform = {"linux", "amd64", "glibc 2.36"};
  s.environments = {env};
  s.created = "2024-03-01T12:00:00Z";
  s.host = "laptop";
  s.envd_version = "0.1.0";
  return s;
}

std::vector<File> sample_files(std::string_view flavour = "a") {
  return {{"bin/python3", "#!/bin/sh\necho " + std::string(flavour) + "\n", 0755, {}},
          {"bin/python", "", 0777, "python3"},
          {"lib/python3.11/os.py", "# os\n", 0644, {}},
          {"lib/python3.11/site-packages/p/__init__.py", "X = 1\n", 0644, {}}};
}

// Uploads the files' content and submits the snapshot; returns its digest.
std::string submit(const Api& a, const std::vector<File>& files) {
  std::string batch;
  for (const auto& f : files)
    if (f.target.empty()) batch += record(f.content);
  auto up = post(a, "/envd/v1/team/env/blobs/batch", batch, "application/octet-stream");
  REQUIRE(up.status == 200);
  auto doc = snapshot::to_json(make_snapshot(files));
  REQUIRE(doc.has_value());
  auto r = post(a, "/envd/v1/team/env/snapshots", *doc);
  INFO(r.body.dump());
  REQUIRE(r.status == 200);
  return r.body["snapshot_digest"].get<std::string>();
}

std::string start_build(const Api& a, const std::string& snapshot_digest,
                        const std::string& tag = "v1") {
  auto r = post(a, "/envd/v1/team/env/builds",
                json{{"snapshot_digest", snapshot_digest}, {"tag", tag}}.dump());
  INFO(r.body.dump());
  REQUIRE(r.status == 202);
  return r.body["build_id"].get<std::string>();
}

// Long-polls the build until it finished (bounded: each poll returns on news or after 30 s).
json wait_build(const Api& a, const std::string& id) {
  std::uint64_t since = 0;
  for (int polls = 0; polls < 200; ++polls) {
    auto r = get(
        a, "/envd/v1/team/env/builds/" + id + "?wait_seconds=30&since=" + std::to_string(since));
    REQUIRE(r.status == 200);
    if (r.body["state"] != "running") return r.body;
    since = r.body["version"].get<std::uint64_t>();
  }
  FAIL("build did not finish");
  return {};
}

std::string tag_digest(const Api& a, const std::string& tag) {
  auto ref = a.state->index->resolve("team/env", tag);
  REQUIRE(ref.has_value());
  return *ref ? (*ref)->digest.str() : std::string();
}

}  // namespace

TEST_CASE("blobs/missing lists absent digests once, in request order; bad digests are 400") {
  Api a;
  REQUIRE(a.state->blobs->put("present").has_value());
  std::string absent1 = digest_of("absent-1"), absent2 = digest_of("absent-2");
  auto r = post(a, "/envd/v1/team/env/blobs/missing",
                json{{"digests", {absent2, digest_of("present"), absent1, absent2}}}.dump());
  CHECK(r.status == 200);
  CHECK(r.body == json{{"missing", {absent2, absent1}}});

  auto bad = post(a, "/envd/v1/team/env/blobs/missing",
                  json{{"digests", {absent1, "sha256:../../etc/passwd"}}}.dump());
  CHECK(bad.status == 400);
  CHECK(bad.body["errors"][0]["code"] == "DIGEST_INVALID");
  CHECK(bad.body["errors"][0]["message"].get<std::string>().find("digests[1]") !=
        std::string::npos);
  CHECK(post(a, "/envd/v1/team/env/blobs/missing", "[1,2]").status == 400);
  CHECK(post(a, "/envd/v1/team/env/blobs/missing", R"({"digests":"x"})").status == 400);
}

TEST_CASE("a batch stores every blob; a corrupt blob stops it and keeps the earlier ones") {
  Api a;
  auto ok = post(a, "/envd/v1/team/env/blobs/batch", record("one") + record("") + record("two"),
                 "application/octet-stream");
  CHECK(ok.status == 200);
  CHECK(ok.body ==
        json{{"stored", {digest_of("one"), digest_of(""), digest_of("two")}}, {"failed", nullptr}});
  CHECK(a.state->blobs->read_all(*oci::Digest::parse(digest_of("two"))).value_or("") == "two");

  // The third record claims the digest of "three" but carries other bytes of the same size.
  std::string corrupt = digest_of("three") + " 5\nthr3e";
  auto r = post(a, "/envd/v1/team/env/blobs/batch",
                record("alpha") + record("beta") + corrupt + record("gamma"),
                "application/octet-stream");
  CHECK(r.status == 400);
  CHECK(r.body["stored"] == json{digest_of("alpha"), digest_of("beta")});
  CHECK(r.body["failed"]["digest"] == digest_of("three"));
  CHECK(r.body["failed"]["error"].get<std::string>().find("record 3") != std::string::npos);
  CHECK(a.state->blobs->contains(*oci::Digest::parse(digest_of("beta"))));
  CHECK_FALSE(a.state->blobs->contains(*oci::Digest::parse(digest_of("three"))));
  CHECK_FALSE(a.state->blobs->contains(*oci::Digest::parse(digest_of("gamma"))));
  CHECK(a.state->blobs->list()->size() == 5);  // one, "", two, alpha, beta: nothing else

  SUBCASE("a bad header, a cut record and a short body fail naming what is wrong") {
    auto header = post(a, "/envd/v1/team/env/blobs/batch", record("x") + "sha256:zz 3\nabc",
                       "application/octet-stream");
    CHECK(header.status == 400);
    CHECK(header.body["stored"] == json{digest_of("x")});
    CHECK(header.body["failed"]["digest"].is_null());
    auto cut = post(a, "/envd/v1/team/env/blobs/batch", digest_of("abcdef") + " 6\nabc",
                    "application/octet-stream");
    CHECK(cut.status == 400);
    CHECK(cut.body["failed"]["error"].get<std::string>().find("3 of 6 bytes") != std::string::npos);
    CHECK_FALSE(a.state->blobs->contains(*oci::Digest::parse(digest_of("abcdef"))));
  }
}

TEST_CASE("batch limits: a blob over blob_bytes and a batch over batch_bytes are 413") {
  EnvdApiOptions o;
  o.limits.blob_bytes = 8;
  o.limits.batch_bytes = 200;
  Api a({}, o);
  auto big = post(a, "/envd/v1/team/env/blobs/batch", record("small") + record("123456789"),
                  "application/octet-stream");
  CHECK(big.status == 413);
  CHECK(big.body["stored"] == json{digest_of("small")});
  CHECK(big.body["failed"]["digest"] == digest_of("123456789"));
  auto batch =
      post(a, "/envd/v1/team/env/blobs/batch", std::string(300, 'x'), "application/octet-stream");
  CHECK(batch.status == 413);
  CHECK(batch.body["stored"].empty());
}

TEST_CASE("a snapshot naming absent files is 409 with the list; once uploaded it is stored") {
  Api a;
  auto files = sample_files();
  auto doc = *snapshot::to_json(make_snapshot(files));
  auto r = post(a, "/envd/v1/team/env/snapshots", doc);
  CHECK(r.status == 409);
  std::vector<std::string> expected;
  for (const auto& f : files)
    if (f.target.empty()) expected.push_back(digest_of(f.content));
  std::sort(expected.begin(), expected.end());
  CHECK(r.body["missing"] == json(expected));
  CHECK(r.body["errors"][0]["code"] == "BLOB_UNKNOWN");
  CHECK_FALSE(fs::exists(a.data() / "snapshots"));

  std::string digest = submit(a, files);
  CHECK(digest == snapshot::digest_of(make_snapshot(files))->str());
  CHECK(test::read_file(a.data() / "snapshots" / (digest.substr(7) + ".json")) == doc);
}

TEST_CASE("a snapshot with a '..' path or a bad digest is 400 naming the location") {
  Api a;
  auto doc = json::parse(*snapshot::to_json(make_snapshot(sample_files())));
  auto dotdot = doc;
  dotdot["environments"][0]["unowned"][1]["path"] = "../../etc/passwd";
  auto r = post(a, "/envd/v1/team/env/snapshots", dotdot.dump());
  CHECK(r.status == 400);
  CHECK(r.body["errors"][0]["code"] == "SNAPSHOT_INVALID");
  std::string message = r.body["errors"][0]["message"].get<std::string>();
  CHECK(message.find("environments") != std::string::npos);
  CHECK(message.find("unowned") != std::string::npos);

  auto bad_digest = doc;
  bad_digest["environments"][0]["unowned"][2]["digest"] = "sha256:1234";
  CHECK(post(a, "/envd/v1/team/env/snapshots", bad_digest.dump()).status == 400);
  CHECK(post(a, "/envd/v1/team/env/snapshots", "not json").status == 400);
  CHECK_FALSE(fs::exists(a.data() / "snapshots"));
}

// A patch turning the snapshot of `from` into that of `to` (snapshot_patch.hpp).
std::string patch_between(const std::vector<File>& from, const std::vector<File>& to) {
  auto base = make_snapshot(from);
  auto next = make_snapshot(to);
  auto base_index = snapshot::ItemIndex::of(base, *snapshot::digest_of(base));
  auto next_index = snapshot::ItemIndex::of(next, *snapshot::digest_of(next));
  REQUIRE(base_index);
  REQUIRE(next_index);
  auto text = snapshot::make_patch(*base_index, next, *next_index);
  REQUIRE(text);
  return *text;
}

const std::string k_patch_type(snapshot::k_patch_media_type);

TEST_CASE("a snapshot patch against a stored snapshot: 409 for its new blobs, then stored whole") {
  Api a;
  auto v1 = sample_files();
  std::string d1 = submit(a, v1);
  auto v2 = v1;
  v2[2].content = "# os, changed\n";
  v2.push_back({"share/new.txt", "new file\n", 0644, {}});
  v2.erase(v2.begin() + 3);  // the package file
  auto patch = patch_between(v1, v2);
  CHECK(patch.size() < snapshot::to_json(make_snapshot(v2))->size() + 600);

  // Only the blobs of what the patch adds are asked for.
  auto r = post(a, "/envd/v1/team/env/snapshots", patch, k_patch_type);
  CHECK(r.status == 409);
  std::vector<std::string> expected = {digest_of(v2[2].content), digest_of("new file\n")};
  std::sort(expected.begin(), expected.end());
  CHECK(r.body["missing"] == json(expected));

  auto up = post(a, "/envd/v1/team/env/blobs/batch", record(v2[2].content) + record("new file\n"),
                 "application/octet-stream");
  REQUIRE(up.status == 200);
  r = post(a, "/envd/v1/team/env/snapshots", patch, k_patch_type);
  INFO(r.body.dump());
  REQUIRE(r.status == 200);
  std::string d2 = snapshot::digest_of(make_snapshot(v2))->str();
  CHECK(r.body["snapshot_digest"] == d2);
  // Stored as the whole document, which builds like any other.
  auto stored = test::read_file(a.data() / "snapshots" / (d2.substr(7) + ".json"));
  CHECK(stored == *snapshot::to_json(make_snapshot(v2)));
  auto built = wait_build(a, start_build(a, d2));
  CHECK(built["state"] == "succeeded");
}

TEST_CASE("a snapshot patch: unknown base 404, wrong result digest 400, malformed 400") {
  Api a;
  auto v1 = sample_files();
  auto v2 = v1;
  v2[0].content = "#!/bin/sh\necho b\n";
  auto patch = patch_between(v1, v2);
  auto r = post(a, "/envd/v1/team/env/snapshots", patch, k_patch_type);
  CHECK(r.status == 404);
  CHECK(r.body["errors"][0]["code"] == "SNAPSHOT_UNKNOWN");

  submit(a, v1);
  auto up =
      post(a, "/envd/v1/team/env/blobs/batch", record(v2[0].content), "application/octet-stream");
  REQUIRE(up.status == 200);
  auto lying = json::parse(patch);
  lying["digest"] = digest_of("something else");
  r = post(a, "/envd/v1/team/env/snapshots", lying.dump(), k_patch_type);
  CHECK(r.status == 400);
  CHECK(r.body["errors"][0]["code"] == "SNAPSHOT_INVALID");
  CHECK(r.body["errors"][0]["message"].get<std::string>().find("digest") != std::string::npos);
  CHECK_FALSE(
      fs::exists(a.data() / "snapshots" / (digest_of("something else").substr(7) + ".json")));

  auto unsafe = json::parse(patch);
  unsafe["removed"]["environments"][0]["unowned"] = {"../x"};
  CHECK(post(a, "/envd/v1/team/env/snapshots", unsafe.dump(), k_patch_type).status == 400);
  CHECK(post(a, "/envd/v1/team/env/snapshots", "{}", k_patch_type).status == 400);

  r = post(a, "/envd/v1/team/env/snapshots", patch, k_patch_type);
  CHECK(r.status == 200);
  CHECK(r.body["snapshot_digest"] == snapshot::digest_of(make_snapshot(v2))->str());
}

TEST_CASE("a build is accepted (202) and long polls follow its progress until it succeeded") {
  Api a;
  std::string snap = submit(a, sample_files());
  a.gate.set(false);
  std::string id = start_build(a, snap);
  auto first = get(a, "/envd/v1/team/env/builds/" + id + "?wait_seconds=0");
  CHECK(first.status == 200);
  CHECK(first.body["state"] == "running");
  CHECK(first.body["result"].is_null());
  // Nothing changes while the build is held: a short poll returns at its deadline, unchanged.
  auto held = get(a, "/envd/v1/team/env/builds/" + id + "?wait_seconds=1&since=" +
                         std::to_string(first.body["version"].get<std::uint64_t>()));
  CHECK(held.body["version"] == first.body["version"]);
  a.gate.set(true);

  std::uint64_t since = first.body["version"];
  json last;
  for (int polls = 0; polls < 200; ++polls) {
    auto r = get(
        a, "/envd/v1/team/env/builds/" + id + "?wait_seconds=30&since=" + std::to_string(since));
    REQUIRE(r.status == 200);
    CHECK(r.body["version"].get<std::uint64_t>() > since);  // a poll answers with news only
    since = r.body["version"];
    last = r.body;
    if (r.body["state"] != "running") break;
  }
  REQUIRE(last["state"] == "succeeded");
  CHECK(last["error"].is_null());
  CHECK(last["layers_done"] == last["layers_total"]);
  CHECK(last["result"]["layers"] == last["layers_total"]);
  std::string manifest = last["result"]["manifest_digest"];
  CHECK(tag_digest(a, "v1") == manifest);
  CHECK(last["result"]["tags"] == json{"v1", "sha256-" + snap.substr(7)});
  // The image is served by the OCI API of the same server.
  auto m = a.client().Get("/v2/team/env/manifests/v1");
  REQUIRE(m);
  CHECK(m->status == 200);
  CHECK(m->get_header_value("Docker-Content-Digest") == manifest);

  // Another repository's path does not reveal the build.
  CHECK(get(a, "/envd/v1/other/env/builds/" + id).status == 404);
  CHECK(get(a, "/envd/v1/team/env/builds/nosuchbuild").status == 404);
}

TEST_CASE("identical build requests while one runs share one build") {
  Api a;
  std::string snap = submit(a, sample_files());
  a.gate.set(false);
  auto one = std::async(std::launch::async, [&] { return start_build(a, snap); });
  auto two = std::async(std::launch::async, [&] { return start_build(a, snap); });
  std::string id = one.get();
  CHECK(two.get() == id);
  CHECK(start_build(a, snap) == id);
  std::string other_tag = start_build(a, snap, "v2");  // another tag: another build
  CHECK(other_tag != id);
  a.gate.set(true);
  auto done = wait_build(a, id);
  auto done2 = wait_build(a, other_tag);
  REQUIRE(done["state"] == "succeeded");
  CHECK(done2["result"]["manifest_digest"] == done["result"]["manifest_digest"]);
  // Finished: the same request now starts a new build (which reuses every layer).
  std::string again = start_build(a, snap);
  CHECK(again != id);
  auto rebuilt = wait_build(a, again);
  CHECK(rebuilt["result"]["manifest_digest"] == done["result"]["manifest_digest"]);
  CHECK(rebuilt["result"]["layers_reused"] == rebuilt["result"]["layers"]);
}

TEST_CASE("build requests: unknown snapshot 404, bad fields 400") {
  Api a;
  auto unknown = post(a, "/envd/v1/team/env/builds",
                      json{{"snapshot_digest", digest_of("nothing")}, {"tag", "v1"}}.dump());
  CHECK(unknown.status == 404);
  CHECK(unknown.body["errors"][0]["code"] == "SNAPSHOT_UNKNOWN");
  for (const json& body :
       {json{{"snapshot_digest", "sha256:xyz"}, {"tag", "v1"}},
        json{{"snapshot_digest", digest_of("a")}, {"tag", "bad tag"}},
        json{{"snapshot_digest", digest_of("a")}},
        json{{"snapshot_digest", digest_of("a")}, {"tag", "v1"}, {"x", 1}},
        json{{"snapshot_digest", digest_of("a")}, {"tag", "v1"}, {"compression", "lz4"}}}) {
    CAPTURE(body.dump());
    CHECK(post(a, "/envd/v1/team/env/builds", body.dump()).status == 400);
  }
  CHECK(get(a, "/envd/v1/team/env/builds/x?wait_seconds=soon").status == 400);
}

TEST_CASE("a tag watch returns when a build moves the tag, and at its deadline otherwise") {
  Api a;
  auto first = wait_build(a, start_build(a, submit(a, sample_files("a"))));
  std::string d1 = first["result"]["manifest_digest"];

  auto started = std::chrono::steady_clock::now();
  auto same = get(a, "/envd/v1/team/env/tags/v1/watch?digest=" + d1 + "&wait_seconds=1");
  CHECK(same.body == json{{"digest", d1}});
  CHECK(std::chrono::steady_clock::now() - started >= std::chrono::milliseconds(900));
  // A caller that knows another digest (or none) is answered at once.
  CHECK(get(a, "/envd/v1/team/env/tags/v1/watch?wait_seconds=30").body == json{{"digest", d1}});
  CHECK(get(a, "/envd/v1/team/env/tags/nope/watch?wait_seconds=0").body ==
        json{{"digest", nullptr}});

  started = std::chrono::steady_clock::now();
  auto watch = std::async(std::launch::async, [&] {
    return get(a, "/envd/v1/team/env/tags/v1/watch?digest=" + d1 + "&wait_seconds=60");
  });
  auto second = wait_build(a, start_build(a, submit(a, sample_files("b"))));
  std::string d2 = second["result"]["manifest_digest"];
  CHECK(d2 != d1);
  CHECK(watch.get().body == json{{"digest", d2}});
  CHECK(std::chrono::steady_clock::now() - started < std::chrono::seconds(30));
}

TEST_CASE("tags_changed() wakes watchers after a manifest PUT through the OCI API") {
  Api a;
  auto built = wait_build(a, start_build(a, submit(a, sample_files())));
  std::string digest = built["result"]["manifest_digest"];
  std::string manifest = *a.state->blobs->read_all(*oci::Digest::parse(digest));

  auto watch = std::async(std::launch::async, [&] {
    return get(a, "/envd/v1/team/env/tags/pushed/watch?wait_seconds=60");
  });
  auto put = a.client().Put("/v2/team/env/manifests/pushed", manifest,
                            "application/vnd.oci.image.manifest.v1+json");
  REQUIRE(put);
  CHECK(put->status == 201);
  a.api->tags_changed();
  CHECK(watch.get().body == json{{"digest", digest}});
}

TEST_CASE("shutdown() answers a waiting tag watch at once instead of at its deadline") {
  Api a;
  auto watch = std::async(std::launch::async, [&] {
    return get(a, "/envd/v1/team/env/tags/none/watch?wait_seconds=60");
  });
  a.api->shutdown();
  // Whether the watch arrived before or after the shutdown, it must not wait out its 60 s.
  REQUIRE(watch.wait_for(std::chrono::seconds(20)) == std::future_status::ready);
  CHECK(watch.get().body == json{{"digest", nullptr}});
}

TEST_CASE("access: pushing needs a push token; status and watch need pull") {
  ServerOptions o;
  o.auth.tokens = {{"reader", token_hash("read-token"), {"team"}, Access::pull},
                   {"writer", token_hash("write-token"), {"team"}, Access::push}};
  Api a(o);
  const std::string body = json{{"digests", json::array()}}.dump();
  auto anonymous = a.client().Post("/envd/v1/team/env/blobs/missing", body, "application/json");
  CHECK(anonymous->status == 401);
  auto reader = a.client("read-token");
  CHECK(reader.Post("/envd/v1/team/env/blobs/missing", body, "application/json")->status == 403);
  CHECK(reader.Post("/envd/v1/team/env/blobs/batch", "", "application/octet-stream")->status ==
        403);
  CHECK(reader.Get("/envd/v1/team/env/tags/v1/watch")->status == 200);
  CHECK(reader.Get("/envd/v1/other/env/tags/v1/watch")->status == 403);
  auto writer = a.client("write-token");
  CHECK(writer.Post("/envd/v1/team/env/blobs/missing", body, "application/json")->status == 200);
  CHECK(writer.Post("/envd/v1/other/env/blobs/missing", body, "application/json")->status == 403);
  CHECK(writer.Post("/envd/v1/Bad/Name/blobs/missing", body, "application/json")->status == 400);
}

// ---- JSON Schemas (schemas/envd-api/) -----------------------------------------------------------

namespace {

fs::path source_root() {
  return (fs::path(__FILE__).parent_path() / "../..").lexically_normal();
}

// Validates (schema name, document) pairs with Debian's python3-jsonschema; one line per pair:
// "valid" or "invalid <pointer>: <message>".
std::vector<std::string> validate(const std::vector<std::pair<std::string, json>>& docs) {
  ScratchDir dir;
  std::vector<std::string> argv = {"/usr/bin/python3", "-c", R"PY(
import json, sys, jsonschema
args = sys.argv[1:]
for schema_path, doc_path in zip(args[0::2], args[1::2]):
    schema = json.load(open(schema_path, encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(json.load(open(doc_path, encoding="utf-8"))))
    if error is None:
        print("valid")
    else:
        print("invalid " + "".join("/" + str(p) for p in error.absolute_path) + ": " + error.message[:200])
)PY"};
  for (std::size_t i = 0; i < docs.size(); ++i) {
    argv.push_back(
        (source_root() / "schemas/envd-api" / (docs[i].first + ".schema.json")).string());
    auto p = dir / ("doc" + std::to_string(i) + ".json");
    test::write_file(p, docs[i].second.dump());
    argv.push_back(p.string());
  }
  auto r = test::run_command(argv);
  INFO("stderr: " << r.err);
  REQUIRE(r.exit_code == 0);
  std::vector<std::string> lines;
  std::istringstream in(r.out);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  REQUIRE(lines.size() == docs.size());
  return lines;
}

}  // namespace

TEST_CASE("every example and every real request and response agrees with its schema") {
  std::vector<std::pair<std::string, json>> docs;
  for (const auto& e : fs::directory_iterator(source_root() / "schemas/examples/envd-api")) {
    std::string name = e.path().filename().string();
    REQUIRE(name.ends_with(".example.json"));
    docs.emplace_back(name.substr(0, name.size() - std::string(".example.json").size()),
                      json::parse(test::read_file(e.path())));
  }
  CHECK(docs.size() >= 10);

  Api a;
  auto files = sample_files();
  docs.emplace_back("missing-request", json{{"digests", {digest_of("x")}}});
  docs.emplace_back("missing-response",
                    post(a, "/envd/v1/team/env/blobs/missing", docs.back().second.dump()).body);
  docs.emplace_back(
      "batch-response",
      post(a, "/envd/v1/team/env/blobs/batch", record("ok"), "application/octet-stream").body);
  docs.emplace_back(
      "batch-response",
      post(a, "/envd/v1/team/env/blobs/batch", "sha256:x 1\n", "application/octet-stream").body);
  docs.emplace_back(
      "snapshot-missing",
      post(a, "/envd/v1/team/env/snapshots", *snapshot::to_json(make_snapshot(files))).body);
  docs.emplace_back("snapshot-patch", json::parse(patch_between(files, sample_files("b"))));
  docs.emplace_back("snapshot-response", json{{"snapshot_digest", submit(a, files)}});
  json request = {{"snapshot_digest", docs.back().second["snapshot_digest"]},
                  {"tag", "v1"},
                  {"compression", "gzip"}};
  docs.emplace_back("build-request", request);
  a.gate.set(false);
  auto accepted = post(a, "/envd/v1/team/env/builds", request.dump());
  docs.emplace_back("build-accepted", accepted.body);
  std::string status_url = accepted.body["status_url"];
  docs.emplace_back("build-status", get(a, status_url).body);
  a.gate.set(true);
  docs.emplace_back("build-status", wait_build(a, accepted.body["build_id"]));
  docs.emplace_back("tag-watch-response",
                    get(a, "/envd/v1/team/env/tags/v1/watch?wait_seconds=0").body);
  docs.emplace_back("tag-watch-response",
                    get(a, "/envd/v1/team/env/tags/v9/watch?wait_seconds=0").body);
  docs.emplace_back("error", post(a, "/envd/v1/team/env/builds", "{}").body);

  auto results = validate(docs);
  for (std::size_t i = 0; i < docs.size(); ++i) {
    CAPTURE(docs[i].first);
    CAPTURE(docs[i].second.dump());
    CHECK(results[i] == "valid");
  }

  // The schemas can fail: wrong documents are rejected.
  auto bad = validate({{"build-status", json{{"state", "done"}}},
                       {"missing-request", json{{"digests", {"sha256:ABC"}}}},
                       {"tag-watch-response", json{{"digest", 5}}}});
  for (const auto& line : bad) CHECK(line.starts_with("invalid"));
}

}  // namespace envd::builder
