// ImagePuller against a real registry (the builder's RegistryServer in-process), seen through a
// counting proxy: rootfs as pushed, one-layer deltas, one download for 8 concurrent pullers,
// platform choice from an index, resume with Range, the local store, and hostile or damaged
// layers refused with the canary and the existing cache intact.
#include "envd/node/image_puller.hpp"

#include <doctest/doctest.h>
#include <sys/stat.h>

#include <map>
#include <mutex>
#include <thread>

#include "../../builder/registry_fixture.hpp"
#include "../registry/test_servers.hpp"
#include "support/layer_forge.hpp"
#include "support/scratch_dir.hpp"

namespace envd::node {
namespace {

namespace fs = std::filesystem;
using builder::registry_test::Registry;
using registry::test_support::fast_options;
using registry::test_support::HttpServer;
using test::ForgeCompression;
using test::ForgedLayer;
using test::ForgeEntry;
using test::ScratchDir;

template <class R>
std::string why(const R& r) {
  return r ? std::string() : r.error().message();
}

bool contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

// Forwards GET (and HEAD, as GET) to the registry, counting requests per path and recording
// Range headers; `tamper` may change a response body on its way.
class CountingProxy {
 public:
  explicit CountingProxy(int upstream_port) : m_upstream(upstream_port) {
    m_server.routes().Get(
        ".*", [this](const httplib::Request& req, httplib::Response& res) { forward(req, res); });
    m_server.start();
  }
  std::string host() const { return m_server.authority(); }
  int count(const std::string& path_suffix) {
    std::lock_guard lock(m_mutex);
    int n = 0;
    for (const auto& [path, c] : m_counts)
      if (path.ends_with(path_suffix)) n += c;
    return n;
  }
  int blob_gets() {
    std::lock_guard lock(m_mutex);
    int n = 0;
    for (const auto& [path, c] : m_counts)
      if (contains(path, "/blobs/")) n += c;
    return n;
  }
  std::vector<std::string> ranges() {
    std::lock_guard lock(m_mutex);
    return m_ranges;
  }
  void reset() {
    std::lock_guard lock(m_mutex);
    m_counts.clear();
    m_ranges.clear();
  }
  std::function<void(const std::string& path, std::string& body)> tamper;

 private:
  void forward(const httplib::Request& req, httplib::Response& res) {
    {
      std::lock_guard lock(m_mutex);
      ++m_counts[req.path];
      if (req.has_header("Range")) m_ranges.push_back(req.get_header_value("Range"));
    }
    // The whole body is fetched upstream; httplib's server answers a Range request from it
    // (a 206 with Content-Range), as it does for every set_content() response.
    httplib::Client upstream("127.0.0.1", m_upstream);
    httplib::Headers headers;
    for (const char* h : {"Accept", "Authorization"})
      if (req.has_header(h)) headers.emplace(h, req.get_header_value(h));
    auto r = upstream.Get(req.path, headers);
    if (!r) {
      res.status = 502;
      return;
    }
    // httplib cuts the body to the range but keeps the status we set: say 206 ourselves.
    res.status = r->status == 200 && !req.ranges.empty() ? 206 : r->status;
    for (const char* h : {"Docker-Content-Digest", "Accept-Ranges"})
      if (r->has_header(h)) res.set_header(h, r->get_header_value(h));
    std::string body = r->body;
    if (tamper) tamper(req.path, body);
    res.set_content(body, r->get_header_value("Content-Type"));
  }

  int m_upstream;
  HttpServer m_server;
  std::mutex m_mutex;
  std::map<std::string, int> m_counts;
  std::vector<std::string> m_ranges;
};

struct ImageSpec {
  explicit ImageSpec(std::vector<ForgedLayer> l) : layers(std::move(l)) {}
  std::vector<ForgedLayer> layers;
  std::vector<std::string> env = {"PATH=/usr/bin:/bin", "APP=1"};
  std::string working_dir = "/srv";
  std::vector<oci::Digest> diff_ids;      // default: the layers'
  std::vector<std::int64_t> size_deltas;  // added to the layer descriptors' sizes
  std::string architecture = "amd64";
};

struct Published {
  oci::Digest manifest;
  std::string manifest_bytes;
  std::string config_bytes;
};

// Stores blobs and the manifest in the registry directly (as a push would, but without the
// server's checks, so that descriptors may lie) and tags it.
Published publish(Registry& reg, const std::string& repo, const std::string& tag,
                  const ImageSpec& spec) {
  oci::ImageConfig config;
  config.architecture = spec.architecture;
  config.os = "linux";
  config.env = spec.env;
  config.working_dir = spec.working_dir;
  std::vector<oci::Descriptor> descs;
  std::vector<oci::Digest> blobs;
  for (std::size_t i = 0; i < spec.layers.size(); ++i) {
    const auto& l = spec.layers[i];
    REQUIRE(reg.blobs->put(l.digest, l.blob));
    std::int64_t delta = i < spec.size_deltas.size() ? spec.size_deltas[i] : 0;
    descs.push_back(oci::Descriptor{
        std::string(l.media_type()),
        l.digest,
        static_cast<std::uint64_t>(static_cast<std::int64_t>(l.blob.size()) + delta),
        {}});
    config.diff_ids.push_back(l.diff_id);
    blobs.push_back(l.digest);
  }
  if (!spec.diff_ids.empty()) config.diff_ids = spec.diff_ids;
  std::string config_json = oci::serialize(config);
  auto config_digest = reg.blobs->put(config_json);
  REQUIRE(config_digest);
  blobs.push_back(*config_digest);
  oci::ImageManifest m{
      oci::Descriptor{
          std::string(oci::media_type::k_config), *config_digest, config_json.size(), {}},
      descs,
      {}};
  std::string manifest = oci::serialize(m);
  auto manifest_digest = reg.blobs->put(manifest);
  REQUIRE(manifest_digest);
  std::vector<std::string> tags;
  if (!tag.empty()) tags.push_back(tag);
  REQUIRE(reg.index->commit_image(repo, blobs, *manifest_digest,
                                  std::string(oci::media_type::k_manifest), tags));
  return Published{*manifest_digest, manifest, config_json};
}

std::vector<ForgeEntry> base_entries() {
  using E = ForgeEntry;
  return {E::dir("usr"),
          E::dir("usr/bin"),
          E::file("usr/bin/tool", "#!/bin/sh\necho tool\n", 0755),
          E::dir("etc"),
          E::file("etc/config", "a=1\n"),
          E::file("etc/old", "to be removed\n"),
          E::symlink("bin", "usr/bin"),
          E::dir("srv")};
}

struct Fixture {
  ScratchDir scratch;
  Registry reg;
  CountingProxy proxy{reg.port};
  fs::path data = scratch / "node";
  fs::path canary = scratch / "canary";
  std::unique_ptr<NodeStore> store;
  std::unique_ptr<ImagePuller> puller;

  explicit Fixture(UnpackLimits limits = {}) {
    test::write_file(canary / "keep.txt", "canary\n");
    auto s = NodeStore::open(data);
    REQUIRE(s);
    store = std::move(*s);
    puller = make_puller(*store, limits);
  }
  std::unique_ptr<ImagePuller> make_puller(NodeStore& s, UnpackLimits limits = {}) {
    PullerOptions o;
    o.client = fast_options();
    o.limits = limits;
    o.architecture = "amd64";
    auto p = ImagePuller::create(s, o);
    REQUIRE(p);
    return std::move(*p);
  }
  std::string ref(const std::string& repo_tag) const { return proxy.host() + "/" + repo_tag; }
};

TEST_CASE("pull: the rootfs is what was pushed, whiteouts applied, config and state recorded") {
  Fixture f;
  using E = ForgeEntry;
  auto base = test::forge_layer(base_entries(), ForgeCompression::gzip);
  auto top = test::forge_layer({E::whiteout("etc/old"), E::file("etc/config", "a=2\n"),
                                E::file("srv/app.py", "print('hi')\n", 0644)},
                               ForgeCompression::zstd);
  auto pub = publish(f.reg, "team/env", "v1", ImageSpec{{base, top}});

  PullProgress progress;
  auto pulled = f.puller->pull(f.ref("team/env:v1"), &progress);
  REQUIRE_MESSAGE(pulled, why(pulled));
  CHECK(pulled->manifest_digest == pub.manifest);
  CHECK(pulled->reference == f.ref("team/env:v1"));
  CHECK(pulled->layers.size() == 2);
  CHECK(pulled->layers_fetched == 2);
  CHECK(pulled->bytes_fetched ==
        pub.manifest_bytes.size() + pub.config_bytes.size() + base.blob.size() + top.blob.size());
  CHECK(progress.layers_done == 2);
  CHECK(progress.bytes_fetched == base.blob.size() + top.blob.size());
  CHECK(pulled->config.env == std::vector<std::string>{"PATH=/usr/bin:/bin", "APP=1"});
  CHECK(pulled->config.working_dir == "/srv");
  CHECK(pulled->rootfs == f.data / "envs" / std::string(pub.manifest.hex()) / "rootfs");

  const fs::path& root = pulled->rootfs;
  CHECK(test::read_file(root / "usr/bin/tool") == "#!/bin/sh\necho tool\n");
  CHECK(test::read_file(root / "etc/config") == "a=2\n");
  CHECK(test::read_file(root / "srv/app.py") == "print('hi')\n");
  CHECK_FALSE(fs::exists(root / "etc/old"));
  CHECK_FALSE(fs::exists(root / "etc/.wh.old"));
  CHECK(fs::read_symlink(root / "bin") == "usr/bin");
  struct stat st {};
  REQUIRE(::stat((root / "usr/bin/tool").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0755);
  CHECK(fs::exists(pulled->env_dir / "image.json"));
  CHECK(fs::is_empty(f.data / "staging"));

  auto rec = f.store->find_image(pub.manifest);
  REQUIRE(rec);
  REQUIRE(rec->has_value());
  CHECK((*rec)->references == std::vector<std::string>{f.ref("team/env:v1")});
  CHECK(f.store->blobs().contains(base.digest));
  CHECK(f.store->has_layer(base.diff_id));

  // Again: only the manifest is asked for, nothing fetched.
  f.proxy.reset();
  auto again = f.puller->pull(f.ref("team/env:v1"));
  REQUIRE(again);
  CHECK(again->layers_fetched == 0);
  CHECK(again->bytes_fetched == pub.manifest_bytes.size());
  CHECK(f.proxy.blob_gets() == 0);
  // ensure() of a known reference does not even ask.
  f.proxy.reset();
  auto ensured = f.puller->ensure(f.ref("team/env:v1"));
  REQUIRE(ensured);
  CHECK(ensured->manifest_digest == pub.manifest);
  CHECK(ensured->config.working_dir == "/srv");
  CHECK(f.proxy.count("/manifests/v1") == 0);
  // resolve() costs one manifest request and names the same digest.
  auto resolved = f.puller->resolve(f.ref("team/env:v1"));
  REQUIRE(resolved);
  CHECK(*resolved == pub.manifest);
  CHECK(f.proxy.count("/manifests/v1") == 1);
}

TEST_CASE("a second image differing in one layer fetches only that layer, manifest and config") {
  Fixture f;
  using E = ForgeEntry;
  auto base = test::forge_layer(base_entries());
  std::string big(200000, 'p');
  auto pkg1 = test::forge_layer({E::file("srv/pkg.py", big + "1")});
  auto pkg2 = test::forge_layer({E::file("srv/pkg.py", big + "2")});
  auto src = test::forge_layer({E::file("srv/main.py", "main\n")});
  publish(f.reg, "team/env", "v1", ImageSpec{{base, pkg1, src}});
  auto v2 = publish(f.reg, "team/env", "v2", ImageSpec{{base, pkg2, src}});
  REQUIRE(f.puller->pull(f.ref("team/env:v1")));
  f.proxy.reset();
  auto pulled = f.puller->pull(f.ref("team/env:v2"));
  REQUIRE_MESSAGE(pulled, why(pulled));
  CHECK(pulled->layers_fetched == 1);
  CHECK(pulled->bytes_fetched ==
        pkg2.blob.size() + v2.manifest_bytes.size() + v2.config_bytes.size());
  CHECK(f.proxy.blob_gets() == 2);  // config and the changed layer
  CHECK(f.proxy.count("/blobs/" + pkg2.digest.str()) == 1);
  CHECK(test::read_file(pulled->rootfs / "srv/pkg.py") == big + "2");
  CHECK(test::read_file(pulled->rootfs / "srv/main.py") == "main\n");
}

TEST_CASE("a pull commits without syncfs under a record; a reboot before settling redoes it") {
  Fixture f;
  auto base = test::forge_layer(base_entries());
  auto pub = publish(f.reg, "team/env", "v1", ImageSpec{{base}});
  REQUIRE(f.puller->pull(f.ref("team/env:v1")));
  // The record names the layer and the environment; nothing settles it within a minute.
  REQUIRE(fs::exists(f.data / "unsynced"));
  std::vector<fs::path> records;
  for (const auto& e : fs::directory_iterator(f.data / "unsynced")) records.push_back(e.path());
  REQUIRE(records.size() == 1);
  std::string text = test::read_file(records[0]);
  CHECK(text.find("layers/" + std::string(base.diff_id.hex())) != std::string::npos);
  CHECK(text.find("envs/" + std::string(pub.manifest.hex())) != std::string::npos);

  // The machine restarts before a settle: what the record lists may have lost data, so it goes.
  auto rebooted = NodeStore::open(f.data, NodeStoreOptions{{}, std::string("another-boot")});
  REQUIRE(rebooted);
  CHECK_FALSE((*rebooted)->has_env(pub.manifest));
  CHECK_FALSE((*rebooted)->has_layer(base.diff_id));
  CHECK(fs::is_empty(f.data / "unsynced"));
  // ensure() assembles it again, from the compressed layer kept in the (durable) blob store.
  auto puller = f.make_puller(**rebooted);
  f.proxy.reset();
  auto again = puller->ensure(f.ref("team/env:v1"));
  REQUIRE_MESSAGE(again, why(again));
  CHECK(f.proxy.blob_gets() == 0);
  CHECK(test::read_file(again->rootfs / "usr/bin/tool") == "#!/bin/sh\necho tool\n");
  // Settled (as `node serve` does every 30 s), the record is gone and a restart keeps it all.
  auto settled = (*rebooted)->settle_deferred_sync(std::chrono::seconds(0));
  REQUIRE(settled);
  CHECK(*settled == 1);
  auto later = NodeStore::open(f.data, NodeStoreOptions{{}, std::string("third-boot")});
  REQUIRE(later);
  CHECK((*later)->has_env(pub.manifest));
  CHECK((*later)->has_layer(base.diff_id));
}

TEST_CASE("a layer of several MiB arrives in gathered chunks: stored, unpacked and counted whole") {
  Fixture f;
  using E = ForgeEntry;
  // Incompressible bytes, so that the blob itself spans several of the puller's 1 MiB chunks and
  // ends with a partial one.
  std::string noise(3 * 1024 * 1024 + 12345, '\0');
  std::uint64_t x = 88172645463325252ull;
  for (auto& c : noise) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c = static_cast<char>(x);
  }
  auto big =
      test::forge_layer({E::dir("srv"), E::file("srv/blob.bin", noise)}, ForgeCompression::zstd);
  REQUIRE(big.blob.size() > 3 * 1024 * 1024);
  auto pub = publish(f.reg, "team/big", "v1", ImageSpec{{big}});
  PullProgress progress;
  auto pulled = f.puller->pull(f.ref("team/big:v1"), &progress);
  REQUIRE_MESSAGE(pulled, why(pulled));
  CHECK(pulled->manifest_digest == pub.manifest);
  CHECK(progress.bytes_fetched == big.blob.size());
  CHECK(pulled->bytes_fetched ==
        pub.manifest_bytes.size() + pub.config_bytes.size() + big.blob.size());
  CHECK(test::read_file(pulled->rootfs / "srv/blob.bin") == noise);
  auto stored = f.store->blobs().read_all(big.digest);
  REQUIRE(stored);
  CHECK(*stored == big.blob);
  CHECK(f.store->blobs().list_resumable()->empty());
}

TEST_CASE("8 concurrent pullers (threads, and separate store instances) download each blob once") {
  Fixture f;
  using E = ForgeEntry;
  std::vector<ForgedLayer> layers;
  for (int i = 0; i < 4; ++i)
    layers.push_back(test::forge_layer({E::file(
        "data/" + std::to_string(i), std::string(300000 + i, static_cast<char>('a' + i)))}));
  auto pub = publish(f.reg, "team/env", "v1", ImageSpec{layers});
  // Half share one puller; the other half each have their own NodeStore on the same data dir,
  // as separate processes would (their exclusion is by flock).
  std::vector<std::unique_ptr<NodeStore>> stores;
  std::vector<std::unique_ptr<ImagePuller>> pullers;
  for (int i = 0; i < 4; ++i) {
    auto s = NodeStore::open(f.data);
    REQUIRE(s);
    stores.push_back(std::move(*s));
    pullers.push_back(f.make_puller(*stores.back()));
  }
  std::vector<std::optional<Result<PulledImage>>> results(8);
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    ImagePuller& p = i < 4 ? *f.puller : *pullers[i - 4];
    threads.emplace_back([&, i, pp = &p] { results[i].emplace(pp->pull(f.ref("team/env:v1"))); });
  }
  for (auto& t : threads) t.join();
  std::size_t fetched = 0;
  for (auto& r : results) {
    REQUIRE_MESSAGE(*r, why(*r));
    CHECK((*r)->manifest_digest == pub.manifest);
    fetched += (*r)->layers_fetched;
  }
  CHECK(fetched == 4);  // each layer fetched by exactly one of them
  for (const auto& l : layers) CHECK(f.proxy.count("/blobs/" + l.digest.str()) == 1);
  CHECK(f.proxy.blob_gets() == 5);  // 4 layers + the config
  CHECK(test::read_file((*results[7])->rootfs / "data/3") == std::string(300003, 'd'));
  CHECK(fs::is_empty(f.data / "staging"));
}

TEST_CASE("an OCI index: this platform's manifest is chosen; resolve names it") {
  Fixture f;
  auto amd = publish(f.reg, "team/multi", "",
                     ImageSpec{{test::forge_layer({ForgeEntry::file("arch", "amd64\n")})}});
  ImageSpec arm_spec{{test::forge_layer({ForgeEntry::file("arch", "arm64\n")})}};
  arm_spec.architecture = "arm64";
  auto arm = publish(f.reg, "team/multi", "", arm_spec);
  nlohmann::json index = {{"schemaVersion", 2},
                          {"mediaType", oci::media_type::k_index},
                          {"manifests",
                           {{{"mediaType", oci::media_type::k_manifest},
                             {"digest", arm.manifest.str()},
                             {"size", arm.manifest_bytes.size()},
                             {"platform", {{"os", "linux"}, {"architecture", "arm64"}}}},
                            {{"mediaType", oci::media_type::k_manifest},
                             {"digest", amd.manifest.str()},
                             {"size", amd.manifest_bytes.size()},
                             {"platform", {{"os", "linux"}, {"architecture", "amd64"}}}}}}};
  std::string index_bytes = index.dump();
  auto index_digest = f.reg.blobs->put(index_bytes);
  REQUIRE(index_digest);
  REQUIRE(f.reg.index->commit_image("team/multi", {}, *index_digest,
                                    std::string(oci::media_type::k_index), {"v1"}));
  auto resolved = f.puller->resolve(f.ref("team/multi:v1"));
  REQUIRE_MESSAGE(resolved, why(resolved));
  CHECK(*resolved == amd.manifest);
  auto pulled = f.puller->pull(f.ref("team/multi:v1"));
  REQUIRE_MESSAGE(pulled, why(pulled));
  CHECK(pulled->manifest_digest == amd.manifest);
  CHECK(test::read_file(pulled->rootfs / "arch") == "amd64\n");

  // A platform the index lacks: not_found, naming what it has.
  PullerOptions o;
  o.client = fast_options();
  o.architecture = "riscv64";
  auto other = ImagePuller::create(*f.store, o);
  REQUIRE(other);
  auto missing = (*other)->pull(f.ref("team/multi:v1"));
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code() == ErrorCode::not_found);
  CHECK(contains(missing.error().message(), "linux/riscv64"));
  CHECK(contains(missing.error().message(), "linux/arm64"));
}

TEST_CASE("partial bytes left by a killed pull are replayed and the download resumes with Range") {
  Fixture f;
  std::string payload(1 << 20, '\0');
  for (std::size_t i = 0; i < payload.size(); ++i)
    payload[i] = static_cast<char>((i * 2654435761u) >> 13);
  auto layer = test::forge_layer({ForgeEntry::file("big.bin", payload)}, ForgeCompression::gzip);
  auto pub = publish(f.reg, "team/env", "v1", ImageSpec{{layer}});
  std::size_t half = layer.blob.size() / 2;
  {
    // What a killed download leaves: the first half in the resumable ingest, a staging dir.
    auto w = f.store->blobs().resume_write(layer.digest);
    REQUIRE(w);
    REQUIRE((*w)->write(std::string_view(layer.blob).substr(0, half)));
  }
  test::write_file(f.data / "staging" / "layer-killed" / "big.bin", "partial");
  f.store.reset();
  auto reopened = NodeStore::open(f.data);  // a restart: staging cleaned, ingest kept
  REQUIRE(reopened);
  f.store = std::move(*reopened);
  CHECK_FALSE(fs::exists(f.data / "staging" / "layer-killed"));
  f.puller = f.make_puller(*f.store);
  auto pulled = f.puller->pull(f.ref("team/env:v1"));
  REQUIRE_MESSAGE(pulled, why(pulled));
  CHECK(f.proxy.ranges() == std::vector<std::string>{"bytes=" + std::to_string(half) + "-"});
  CHECK(pulled->bytes_fetched ==
        layer.blob.size() - half + pub.manifest_bytes.size() + pub.config_bytes.size());
  CHECK(test::read_file(pulled->rootfs / "big.bin") == payload);
  CHECK(f.store->blobs().list_resumable()->empty());
}

TEST_CASE("a local reference pulls from the injected local store") {
  ScratchDir scratch;
  auto local = store::FsBlobStore::create(scratch / "builder");
  REQUIRE(local);
  auto layer = test::forge_layer({ForgeEntry::file("opt/env/bin/python", "py\n", 0755)},
                                 ForgeCompression::zstd);
  REQUIRE((*local)->put(layer.digest, layer.blob));
  oci::ImageConfig config;
  config.os = "linux";
  config.architecture = "amd64";
  config.diff_ids = {layer.diff_id};
  std::string config_json = oci::serialize(config);
  auto config_digest = (*local)->put(config_json);
  REQUIRE(config_digest);
  std::string manifest = oci::serialize(oci::ImageManifest{
      {std::string(oci::media_type::k_config), *config_digest, config_json.size(), {}},
      {{std::string(layer.media_type()), layer.digest, layer.blob.size(), {}}},
      {}});
  auto manifest_digest = (*local)->put(manifest);
  REQUIRE(manifest_digest);

  auto node_store = NodeStore::open(scratch / "node");
  REQUIRE(node_store);
  PullerOptions o;
  o.local_source =
      [&](const registry::Reference& ref) -> Result<std::unique_ptr<registry::ImageSource>> {
    CHECK(ref.repository == "team/env");
    return std::unique_ptr<registry::ImageSource>(std::make_unique<registry::StoreImageSource>(
        **local, ref.repository, [&](const std::string& r) -> Result<registry::ManifestLocation> {
          if (r != "v1" && r != manifest_digest->str())
            return Error(ErrorCode::not_found, "no tag " + r);
          return registry::ManifestLocation{*manifest_digest,
                                            std::string(oci::media_type::k_manifest)};
        }));
  };
  auto puller = ImagePuller::create(**node_store, o);
  REQUIRE(puller);
  auto pulled = (*puller)->pull("team/env:v1");
  REQUIRE_MESSAGE(pulled, why(pulled));
  CHECK(pulled->manifest_digest == *manifest_digest);
  CHECK(test::read_file(pulled->rootfs / "opt/env/bin/python") == "py\n");
  auto absent = (*puller)->pull("team/env:v9");
  REQUIRE_FALSE(absent);
  CHECK(absent.error().code() == ErrorCode::not_found);
  CHECK(contains(absent.error().message(), "team/env:v9"));

  // Without a local source, a local reference is a clear precondition failure.
  auto bare = ImagePuller::create(**node_store, PullerOptions{});
  REQUIRE(bare);
  auto refused = (*bare)->pull("team/env:v1");
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code() == ErrorCode::failed_precondition);
}

struct BadCase {
  std::string label;
  ImageSpec spec;
  std::string must_name;  // beyond the reference and "layer"
  std::function<void(const std::string&, std::string&)> tamper = {};
};

std::vector<BadCase> bad_cases(const fs::path& canary) {
  using E = ForgeEntry;
  auto good = test::forge_layer({E::file("ok", std::string(5000, 'k'))});
  std::vector<BadCase> out;
  auto evil = [&](std::string label, std::vector<ForgeEntry> entries, std::string name) {
    out.push_back(BadCase{label, ImageSpec{{good, test::forge_layer(entries)}}, name});
  };
  evil("dot-dot", {E::file("../../../canary/pwned", "x")}, "../../../canary/pwned");
  evil("write through a symlink", {E::symlink("evil", canary.string()), E::file("evil/pwned", "x")},
       "evil/pwned");
  evil("symlink chain",
       {E::symlink("a", "b"), E::symlink("b", canary.string()), E::file("a/pwned", "x")},
       "a/pwned");
  evil("hardlink escape", {E::hardlink("h", canary.string() + "/keep.txt")}, "\"h\"");
  evil("symlink then hardlink then chmod",
       {E::symlink("s", canary.string() + "/keep.txt"), E::hardlink("h", "s"),
        E::file("h", "pwned", 0777)},
       "\"h\"");
  evil("whiteout of ..", {E::file(".wh..", "")}, ".wh..");
  evil("whiteout through a symlinked parent",
       {E::symlink("l", canary.string()), E::whiteout("l/keep.txt")}, "l/.wh.keep.txt");
  out.push_back(BadCase{"compression bomb",
                        ImageSpec{{good, test::forge_compression_bomb(64ull << 20)}}, "bomb"});
  auto victim =
      test::forge_layer({E::file("data", std::string(100000, 'v')), E::file("tail", "t")});
  out.push_back(BadCase{"truncated stream",
                        ImageSpec{{good, test::forge_truncated(victim, victim.blob.size() / 2)}},
                        ""});
  ImageSpec wrong_diff{{good, victim}};
  wrong_diff.diff_ids = {good.diff_id, oci::sha256_of("not the tar")};
  out.push_back(BadCase{"wrong diff_id", wrong_diff, "sha256:"});
  out.push_back(BadCase{"one flipped byte (stored so)",
                        ImageSpec{{good, test::forge_flipped_byte(victim, victim.blob.size() / 2)}},
                        ""});
  // Layers no earlier case stored, so that they really are downloaded.
  auto fresh = [&](char c) {
    return test::forge_layer({E::file("fresh", std::string(100000, c))});
  };
  ImageSpec longer{{good, fresh('l')}};
  longer.size_deltas = {0, -1};  // the blob is longer than its descriptor says
  out.push_back(BadCase{"blob longer than its descriptor", longer, "longer than the"});
  ImageSpec shorter{{good, fresh('s')}};
  shorter.size_deltas = {0, +1};
  out.push_back(BadCase{"blob shorter than its descriptor", shorter, "bytes, expected"});
  ImageSpec longer_cached{{good, victim}};
  longer_cached.size_deltas = {0, -1};  // victim is in the store by now (wrong diff_id case)
  out.push_back(
      BadCase{"stored blob longer than its descriptor", longer_cached, "its descriptor says"});
  auto flipped = fresh('t');
  std::string victim_path = "/blobs/" + flipped.digest.str();
  out.push_back(BadCase{"one byte flipped in transit", ImageSpec{{good, flipped}}, "digest",
                        [victim_path](const std::string& path, std::string& body) {
                          if (path.ends_with(victim_path) && !body.empty())
                            body[body.size() / 3] ^= 0x20;
                        }});
  return out;
}

TEST_CASE("hostile and damaged layers are refused; the canary and the existing cache are intact") {
  UnpackLimits limits;
  limits.max_bytes = 16ull << 20;  // the bomb's 64 MiB stop here
  Fixture f(limits);
  auto cached = publish(f.reg, "team/good", "v1", ImageSpec{{test::forge_layer(base_entries())}});
  auto good = f.puller->pull(f.ref("team/good:v1"));
  REQUIRE_MESSAGE(good, why(good));
  auto canary_before = test::tree_listing(f.canary);
  auto envs_before = test::tree_listing(f.data / "envs");
  int n = 0;
  for (const BadCase& c : bad_cases(f.canary)) {
    CAPTURE(c.label);
    std::string repo = "team/bad" + std::to_string(n++);
    publish(f.reg, repo, "v1", c.spec);
    f.proxy.tamper = c.tamper;
    auto r = f.puller->pull(f.ref(repo + ":v1"));
    f.proxy.tamper = nullptr;
    REQUIRE_FALSE(r);
    INFO(r.error().message());
    CHECK((r.error().code() == ErrorCode::invalid_argument ||
           r.error().code() == ErrorCode::digest_mismatch));
    CHECK(contains(r.error().message(), "pull " + f.ref(repo + ":v1")));
    CHECK(contains(r.error().message(), "layer 2/2"));
    CHECK(contains(r.error().message(), c.must_name));
    CHECK(test::tree_listing(f.canary) == canary_before);
    CHECK(test::read_file(f.canary / "keep.txt") == "canary\n");
    // The cache is intact: the good environment unchanged, nothing half-made left.
    CHECK(test::tree_listing(f.data / "envs") == envs_before);
    CHECK(fs::is_empty(f.data / "staging"));
    CHECK(f.store->blobs().list_resumable()->empty());
    auto listed = f.store->list_images();
    REQUIRE(listed);
    CHECK(listed->size() == 1);
  }
  auto again = f.puller->ensure(f.ref("team/good:v1"));
  REQUIRE(again);
  CHECK(again->manifest_digest == cached.manifest);
}

TEST_CASE("device nodes are skipped and setuid bits dropped, the pull succeeds") {
  Fixture f;
  using E = ForgeEntry;
  auto layer = test::forge_layer(
      {E::char_device("dev/null2"), E::file("bin/su", "su\n", 04755), E::fifo("run/fifo")});
  publish(f.reg, "team/dev", "v1", ImageSpec{{layer}});
  auto pulled = f.puller->pull(f.ref("team/dev:v1"));
  REQUIRE_MESSAGE(pulled, why(pulled));
  CHECK_FALSE(fs::exists(fs::symlink_status(pulled->rootfs / "dev/null2")));
  CHECK_FALSE(fs::exists(fs::symlink_status(pulled->rootfs / "run/fifo")));
  struct stat st {};
  REQUIRE(::stat((pulled->rootfs / "bin/su").c_str(), &st) == 0);
  CHECK((st.st_mode & 07000) == 0);
}

TEST_CASE("bad references and unreachable registries fail with clear errors") {
  Fixture f;
  auto bad = f.puller->pull("Not A Reference");
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code() == ErrorCode::invalid_argument);
  auto missing = f.puller->pull(f.ref("team/none:v1"));
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code() == ErrorCode::not_found);
  CHECK(contains(missing.error().message(), "pull " + f.ref("team/none:v1")));
  CHECK(f.store->list_images()->empty());
}

}  // namespace
}  // namespace envd::node
