// NodeStore: data dir layout, staging cleaned at open, atomic appearance, state across reopen,
// leases, resumable ingest, and GC under a quota (LRU, in use, grace period).
#include "envd/node/node_store.hpp"

#include <doctest/doctest.h>
#include <sqlite3.h>
#include <sys/stat.h>

#include <atomic>
#include <latch>
#include <thread>

#include "support/scratch_dir.hpp"

namespace envd::node {
namespace {

namespace fs = std::filesystem;
using test::ScratchDir;

struct FakeClock {
  std::shared_ptr<std::atomic<std::int64_t>> t = std::make_shared<std::atomic<std::int64_t>>(1000);
  NodeStoreOptions options() const {
    auto p = t;
    return NodeStoreOptions{[p] { return p->load(); }, std::nullopt};
  }
};

std::unique_ptr<NodeStore> open_store(const fs::path& dir, NodeStoreOptions o = {}) {
  auto s = NodeStore::open(dir, std::move(o));
  REQUIRE_MESSAGE(s.has_value(), (s ? "" : s.error().message()));
  return std::move(*s);
}

oci::Digest digest_of(std::string_view s) {
  return oci::sha256_of(s);
}

// An image as a pull leaves it: blobs, unpacked layers (each `layer_bytes` of file data), an
// environment, and the state rows. Layers are named by `layer_names` (shared names share layers).
ImageRecord add_image(NodeStore& s, const std::string& reference,
                      const std::vector<std::string>& layer_names, std::size_t layer_bytes) {
  oci::ImageConfig config;
  config.os = "linux";
  config.architecture = "amd64";
  std::vector<LayerRecord> layers;
  std::vector<oci::Descriptor> descs;
  for (const auto& name : layer_names) {
    std::string blob = "compressed " + name;
    std::string tar = "tar of " + name;
    oci::Descriptor d{
        "application/vnd.oci.image.layer.v1.tar+gzip", digest_of(blob), blob.size(), {}};
    REQUIRE(s.blobs().put(d.digest, blob));
    auto diff_id = digest_of(tar);
    config.diff_ids.push_back(diff_id);
    layers.push_back(LayerRecord{d, diff_id});
    descs.push_back(d);
    if (!s.has_layer(diff_id)) {
      auto staging = s.make_staging("layer");
      REQUIRE(staging);
      test::write_file(staging->path() / name, std::string(layer_bytes, 'x'));
      REQUIRE(s.record_layer(diff_id, layer_bytes, 1, 0));
      REQUIRE(s.commit_staging(*staging, s.layer_dir(diff_id)));
    }
  }
  std::string config_json = oci::serialize(config);
  oci::Descriptor config_desc{
      std::string(oci::media_type::k_config), digest_of(config_json), config_json.size(), {}};
  std::string manifest = oci::serialize(oci::ImageManifest{config_desc, descs, {}});
  auto manifest_digest = digest_of(manifest);
  REQUIRE(s.blobs().put(manifest_digest, manifest));
  REQUIRE(s.blobs().put(config_desc.digest, config_json));
  auto staging = s.make_staging("env");
  REQUIRE(staging);
  test::write_file(staging->path() / "rootfs" / "marker", reference);
  REQUIRE(s.commit_staging(*staging, s.env_dir(manifest_digest)));
  ImageRecord rec{.manifest_digest = manifest_digest,
                  .manifest_media_type = std::string(oci::media_type::k_manifest),
                  .manifest_size = manifest.size(),
                  .config = config_desc,
                  .config_json = config_json,
                  .layers = layers,
                  .references = {},
                  .pulled_at = 0,
                  .last_used = 0,
                  .size_bytes = 0,
                  .in_use = false};
  REQUIRE(s.record_image(rec, reference));
  return rec;
}

TEST_CASE("open creates the layout and removes staging left by dead owners") {
  ScratchDir scratch;
  fs::path dir = scratch / "node";
  {
    auto s = open_store(dir);
    for (const char* sub : {"blobs/sha256", "ingest", "layers", "envs", "staging", "locks"})
      CHECK(fs::is_directory(dir / sub));
    CHECK(fs::exists(dir / "state.sqlite"));
  }
  // A crash leaves staging with and without lock files, and a half-unpacked read-only tree.
  test::write_file(dir / "staging" / "layer-dead1" / "usr" / "bin" / "x", "partial");
  ::chmod((dir / "staging" / "layer-dead1" / "usr").c_str(), 0555);
  test::write_file(dir / "staging" / "layer-dead1.lock", "");
  test::write_file(dir / "staging" / "env-dead2" / "rootfs" / "y", "partial");
  auto live_owner = open_store(dir);
  auto live = live_owner->make_staging("layer");
  REQUIRE(live);
  test::write_file(live->path() / "in-progress", "z");

  auto reopened = open_store(dir);
  CHECK_FALSE(fs::exists(dir / "staging" / "layer-dead1"));
  CHECK_FALSE(fs::exists(dir / "staging" / "layer-dead1.lock"));
  CHECK_FALSE(fs::exists(dir / "staging" / "env-dead2"));
  // A live owner's staging (another store instance, as another process would be) stays.
  CHECK(fs::exists(live->path() / "in-progress"));
}

TEST_CASE("a layer or environment appears only by rename, and a second commit loses quietly") {
  ScratchDir scratch;
  auto s = open_store(scratch / "node");
  auto diff_id = digest_of("layer");
  auto a = s->make_staging("layer");
  auto b = s->make_staging("layer");
  REQUIRE(a);
  REQUIRE(b);
  test::write_file(a->path() / "f", "from a");
  test::write_file(b->path() / "f", "from b");
  CHECK_FALSE(s->has_layer(diff_id));
  REQUIRE(s->commit_staging(*a, s->layer_dir(diff_id)));
  CHECK(s->has_layer(diff_id));
  fs::path b_path = b->path();
  REQUIRE(s->commit_staging(*b, s->layer_dir(diff_id)));  // already there: b is dropped
  CHECK(test::read_file(s->layer_dir(diff_id) / "f") == "from a");
  *b = StagingDir();
  CHECK_FALSE(fs::exists(b_path));
  // An uncommitted staging dir is removed with its owner.
  fs::path gone;
  {
    auto c = s->make_staging("env");
    REQUIRE(c);
    gone = c->path();
    test::write_file(gone / "rootfs" / "x", "x");
  }
  CHECK_FALSE(fs::exists(gone));
  *a = StagingDir();  // a committed owner leaves only its lock file, removed with it
  CHECK(fs::is_empty(scratch / "node" / "staging"));
}

TEST_CASE("state survives reopening: images, references, sizes, last used") {
  ScratchDir scratch;
  FakeClock clock;
  ImageRecord rec = [&] {
    auto s = open_store(scratch / "node", clock.options());
    return add_image(*s, "127.0.0.1:5000/team/env:v1", {"a", "b"}, 100);
  }();
  clock.t->store(2000);
  auto s = open_store(scratch / "node", clock.options());
  auto found = s->lookup_reference("127.0.0.1:5000/team/env:v1");
  REQUIRE(found);
  REQUIRE(found->has_value());
  CHECK(**found == rec.manifest_digest);
  auto img = s->find_image(rec.manifest_digest);
  REQUIRE(img);
  REQUIRE(img->has_value());
  CHECK((*img)->layers == rec.layers);
  CHECK((*img)->config == rec.config);
  CHECK((*img)->config_json == rec.config_json);
  CHECK((*img)->references == std::vector<std::string>{"127.0.0.1:5000/team/env:v1"});
  CHECK((*img)->pulled_at == 1000);
  CHECK((*img)->size_bytes == rec.manifest_size + rec.config.size + rec.layers[0].blob.size +
                                  rec.layers[1].blob.size + 200);
  REQUIRE(s->touch(rec.manifest_digest));
  auto listed = s->list_images();
  REQUIRE(listed);
  REQUIRE(listed->size() == 1);
  CHECK((*listed)[0].last_used == 2000);
  CHECK_FALSE(s->lookup_reference("127.0.0.1:5000/team/env:v2")->has_value());
}

TEST_CASE("touch and pin write last_used once per k_touch_resolution; state survives reopening") {
  ScratchDir scratch;
  FakeClock clock;
  auto rec = [&] {
    auto s = open_store(scratch / "node", clock.options());
    return add_image(*s, "team/env:v1", {"a"}, 10);  // pulled at 1000
  }();
  auto last_used = [&](NodeStore& s) {
    auto img = s.find_image(rec.manifest_digest);
    REQUIRE(img);
    REQUIRE(img->has_value());
    return (*img)->last_used;
  };
  {
    auto s = open_store(scratch / "node", clock.options());
    clock.t->store(1000 + NodeStore::k_touch_resolution);
    REQUIRE(s->touch(rec.manifest_digest));
    auto lease = s->pin(rec.manifest_digest);
    REQUIRE(lease);
    CHECK(last_used(*s) == 1000);  // recent enough: not written
    clock.t->store(1001 + NodeStore::k_touch_resolution);
    REQUIRE(s->touch(rec.manifest_digest));
    CHECK(last_used(*s) == 1001 + NodeStore::k_touch_resolution);
  }
  // Closed without a checkpoint: a new instance reads what the last one wrote.
  auto again = open_store(scratch / "node", clock.options());
  CHECK(last_used(*again) == 1001 + NodeStore::k_touch_resolution);
  clock.t->store(500);  // a clock that went back is followed
  auto lease = again->pin(rec.manifest_digest);
  REQUIRE(lease);
  CHECK(last_used(*again) == 500);
}

TEST_CASE("a lease marks an image in use until released, across store instances") {
  ScratchDir scratch;
  auto s = open_store(scratch / "node");
  auto other = open_store(scratch / "node");
  auto rec = add_image(*s, "team/env:v1", {"a"}, 10);
  CHECK_FALSE(s->in_use(rec.manifest_digest));
  auto lease = other->pin(rec.manifest_digest);
  REQUIRE(lease);
  CHECK(s->in_use(rec.manifest_digest));
  auto second = s->pin(rec.manifest_digest);  // shared: several workers pin one image
  REQUIRE(second);
  lease->release();
  CHECK(s->in_use(rec.manifest_digest));
  *second = ImageLease();
  CHECK_FALSE(s->in_use(rec.manifest_digest));
}

TEST_CASE("gc under a quota evicts the least recently used image, never one in use") {
  ScratchDir scratch;
  FakeClock clock;
  auto s = open_store(scratch / "node", clock.options());
  auto old_img = add_image(*s, "team/env:old", {"base", "old"}, 1000);
  clock.t->store(2000);
  auto used_img = add_image(*s, "team/env:used", {"base", "used"}, 1000);
  clock.t->store(3000);
  auto new_img = add_image(*s, "team/env:new", {"base", "new"}, 1000);
  clock.t->store(100000);  // all past the grace period
  // The oldest is in use: the next least recently used goes instead.
  auto lease = s->pin(old_img.manifest_digest);
  REQUIRE(lease);
  clock.t->store(100001);
  REQUIRE(s->touch(new_img.manifest_digest));  // new is now the most recently used
  auto before = s->usage();
  REQUIRE(before);
  // Room for two images sharing "base", not three.
  std::uint64_t quota = *before - 500;
  auto r = s->gc(GcOptions{quota, std::chrono::seconds(600)});
  REQUIRE_MESSAGE(r, (r ? "" : r.error().message()));
  CHECK(r->images_evicted == std::vector<oci::Digest>{used_img.manifest_digest});
  CHECK(r->kept_in_use.empty());  // old was pinned recently: touched, so no longer LRU
  CHECK(r->quota_met);
  CHECK(r->bytes_after <= quota);
  CHECK(r->bytes_before == *before);
  CHECK_FALSE(s->has_env(used_img.manifest_digest));
  CHECK_FALSE(s->has_layer(used_img.layers[1].diff_id));
  CHECK_FALSE(s->blobs().contains(used_img.layers[1].blob.digest));
  CHECK_FALSE(s->blobs().contains(used_img.manifest_digest));
  CHECK(s->has_layer(used_img.layers[0].diff_id));  // "base" is shared
  CHECK(s->has_env(old_img.manifest_digest));
  CHECK(s->has_env(new_img.manifest_digest));
  CHECK_FALSE(s->lookup_reference("team/env:used")->has_value());
  CHECK(r->layers_removed == 1);

  // A quota of zero: everything not in use goes; the pinned one stays, named as kept.
  clock.t->store(200000);
  auto all = s->gc(GcOptions{0, std::chrono::seconds(600)});
  REQUIRE(all);
  CHECK(all->images_evicted == std::vector<oci::Digest>{new_img.manifest_digest});
  CHECK(all->kept_in_use == std::vector<oci::Digest>{old_img.manifest_digest});
  CHECK_FALSE(all->quota_met);
  CHECK(s->has_env(old_img.manifest_digest));
  CHECK(test::read_file(s->rootfs_dir(old_img.manifest_digest) / "marker") == "team/env:old");
  for (const auto& l : old_img.layers) {
    CHECK(s->has_layer(l.diff_id));
    CHECK(s->blobs().contains(l.blob.digest));
  }
  // Unpinned, it can go.
  lease->release();
  auto last = s->gc(GcOptions{0, std::chrono::seconds(600)});
  REQUIRE(last);
  CHECK(last->images_evicted == std::vector<oci::Digest>{old_img.manifest_digest});
  CHECK(last->bytes_after == 0);
  CHECK(s->list_images()->empty());
}

TEST_CASE("gc respects the grace period after a pull") {
  ScratchDir scratch;
  FakeClock clock;
  auto s = open_store(scratch / "node", clock.options());
  auto a = add_image(*s, "team/a:v1", {"a"}, 1000);
  clock.t->store(1500);
  auto b = add_image(*s, "team/b:v1", {"b"}, 1000);
  clock.t->store(1700);  // a pulled 700 s ago, b 200 s ago; grace 600 s
  auto r = s->gc(GcOptions{0, std::chrono::seconds(600)});
  REQUIRE(r);
  CHECK(r->images_evicted == std::vector<oci::Digest>{a.manifest_digest});
  CHECK(r->kept_in_grace == std::vector<oci::Digest>{b.manifest_digest});
  CHECK(s->has_env(b.manifest_digest));
  CHECK_FALSE(s->has_env(a.manifest_digest));
}

TEST_CASE("gc without a quota removes only content no image references") {
  ScratchDir scratch;
  auto s = open_store(scratch / "node");
  auto rec = add_image(*s, "team/env:v1", {"a"}, 10);
  // Leftovers of a pull that died after unpacking and assembling, before recording.
  auto stray_layer = digest_of("stray layer");
  auto st = s->make_staging("layer");
  REQUIRE(st);
  test::write_file(st->path() / "f", "stray");
  REQUIRE(s->commit_staging(*st, s->layer_dir(stray_layer)));
  auto stray_blob = s->blobs().put("stray blob");
  REQUIRE(stray_blob);
  auto stray_env = digest_of("stray env");
  auto se = s->make_staging("env");
  REQUIRE(se);
  REQUIRE(s->commit_staging(*se, s->env_dir(stray_env)));
  // A leased stray environment is never removed.
  auto leased_env = digest_of("leased env");
  auto le = s->make_staging("env");
  REQUIRE(le);
  REQUIRE(s->commit_staging(*le, s->env_dir(leased_env)));
  auto lease = s->pin(leased_env);
  REQUIRE(lease);

  auto r = s->gc(GcOptions{std::nullopt, std::chrono::seconds(600)});
  REQUIRE(r);
  CHECK(r->images_evicted.empty());
  CHECK(r->layers_removed == 1);
  CHECK(r->blobs_removed == 1);
  CHECK(r->envs_removed == 1);
  CHECK_FALSE(s->has_layer(stray_layer));
  CHECK_FALSE(s->blobs().contains(*stray_blob));
  CHECK_FALSE(s->has_env(stray_env));
  CHECK(s->has_env(leased_env));
  CHECK(s->has_env(rec.manifest_digest));
  CHECK(s->has_layer(rec.layers[0].diff_id));
}

TEST_CASE("resumable ingest keeps partial bytes across writers and verifies at commit") {
  ScratchDir scratch;
  auto s = open_store(scratch / "node");
  std::string blob(300000, '\0');
  for (std::size_t i = 0; i < blob.size(); ++i) blob[i] = static_cast<char>(i * 7 + 3);
  auto digest = digest_of(blob);
  {
    auto w = s->blobs().resume_write(digest);
    REQUIRE(w);
    REQUIRE((*w)->write(std::string_view(blob).substr(0, 123456)));
  }  // abandoned, as by a crash: the bytes stay, also across a reopen
  s.reset();
  s = open_store(scratch / "node");
  std::string replayed;
  auto w = s->blobs().resume_write(digest, [&](std::string_view d) -> Result<void> {
    replayed += d;
    return {};
  });
  REQUIRE(w);
  CHECK((*w)->written() == 123456);
  CHECK(replayed == blob.substr(0, 123456));
  CHECK(*s->usage() == 123456);
  REQUIRE((*w)->write(std::string_view(blob).substr(123456)));
  REQUIRE((*w)->commit(digest, blob.size()));
  CHECK(*s->blobs().read_all(digest) == blob);
  CHECK(s->blobs().list_resumable()->empty());

  // Wrong bytes: nothing becomes visible and the partial file goes.
  auto other = digest_of("other");
  auto bad = s->blobs().resume_write(other);
  REQUIRE(bad);
  REQUIRE((*bad)->write("not other"));
  auto c = (*bad)->commit(other, std::nullopt);
  REQUIRE_FALSE(c);
  CHECK(c.error().code() == ErrorCode::digest_mismatch);
  CHECK_FALSE(s->blobs().contains(other));
  CHECK(s->blobs().list_resumable()->empty());
}

TEST_CASE("per-digest locks exclude each other across threads") {
  ScratchDir scratch;
  auto s = open_store(scratch / "node");
  auto d = digest_of("x");
  std::atomic<int> inside{0};
  std::atomic<int> max_inside{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      for (int k = 0; k < 20; ++k) {
        auto lock = s->lock(LockKind::layer, d);
        REQUIRE(lock);
        int now = ++inside;
        int seen = max_inside.load();
        while (now > seen && !max_inside.compare_exchange_weak(seen, now)) {
        }
        std::this_thread::yield();
        --inside;
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(max_inside.load() == 1);
}

TEST_CASE("record_layer keeps whiteout counts; a layer without a record has none") {
  ScratchDir scratch;
  auto a = digest_of("layer a"), b = digest_of("layer b");
  {
    auto s = open_store(scratch / "node");
    REQUIRE(s->record_layer(a, 100, 10, 0));
    REQUIRE(s->record_layer(b, 200, 20, 3));
    CHECK(*s->layer_whiteouts(a) == std::optional<std::uint64_t>(0));
    CHECK(*s->layer_whiteouts(b) == std::optional<std::uint64_t>(3));
    auto unknown = s->layer_whiteouts(digest_of("never recorded"));
    REQUIRE(unknown);
    CHECK_FALSE(unknown->has_value());
    REQUIRE(s->record_layer(b, 200, 20, 7));  // recorded again (a re-unpack): replaced
    CHECK(*s->layer_whiteouts(b) == std::optional<std::uint64_t>(7));
  }
  auto s = open_store(scratch / "node");  // and kept across reopening
  CHECK(*s->layer_whiteouts(a) == std::optional<std::uint64_t>(0));
  CHECK(*s->layer_whiteouts(b) == std::optional<std::uint64_t>(7));
}

// ---- stores made before layers had a whiteouts column ----

// A raw connection to a state database, for setting one up as an older envd left it and for
// looking at what open() made of it.
struct RawDb {
  sqlite3* db = nullptr;
  explicit RawDb(const fs::path& path) {
    REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
    sqlite3_busy_timeout(db, 10000);
  }
  ~RawDb() { sqlite3_close(db); }
  void exec(const char* sql) {
    char* err = nullptr;
    int rc = sqlite3_exec(db, sql, nullptr, nullptr, &err);
    std::string msg = err != nullptr ? err : "";
    sqlite3_free(err);
    REQUIRE_MESSAGE(rc == SQLITE_OK, sql << ": " << msg);
  }
  // The first column of each row of `sql`, as text ("NULL" for NULL).
  std::vector<std::string> column(const char* sql) {
    sqlite3_stmt* st = nullptr;
    REQUIRE_MESSAGE(sqlite3_prepare_v2(db, sql, -1, &st, nullptr) == SQLITE_OK,
                    sql << ": " << sqlite3_errmsg(db));
    std::vector<std::string> out;
    while (sqlite3_step(st) == SQLITE_ROW) {
      const auto* t = sqlite3_column_text(st, 0);
      out.push_back(t != nullptr ? reinterpret_cast<const char*>(t) : "NULL");
    }
    sqlite3_finalize(st);
    return out;
  }
};

// DIR/state.sqlite as the previous schema made it (WAL, as open() always set), with one layer
// (`old_layer`: 123 bytes, 4 entries) recorded.
void make_old_store(const fs::path& dir, const oci::Digest& old_layer) {
  fs::create_directories(dir);
  RawDb raw(dir / "state.sqlite");
  raw.exec("PRAGMA journal_mode=WAL");
  // Only the layers table changed; open() creates the others as ever.
  raw.exec(
      "CREATE TABLE layers(diff_id TEXT PRIMARY KEY, bytes INTEGER NOT NULL, entries INTEGER NOT "
      "NULL) WITHOUT ROWID");
  std::string insert =
      "INSERT INTO layers(diff_id, bytes, entries) VALUES('" + old_layer.str() + "', 123, 4)";
  raw.exec(insert.c_str());
}

TEST_CASE(
    "a store from before whiteouts were counted opens: old layers unknown, new ones counted") {
  ScratchDir scratch;
  const fs::path dir = scratch / "node";
  auto old_layer = digest_of("recorded by an older envd");
  auto new_a = digest_of("new a"), new_b = digest_of("new b");
  make_old_store(dir, old_layer);
  {
    auto s = open_store(dir);
    auto old_count = s->layer_whiteouts(old_layer);
    REQUIRE_MESSAGE(old_count, (old_count ? "" : old_count.error().message()));
    CHECK_FALSE(old_count->has_value());  // NULL: unknown, never taken for 0
    REQUIRE(s->record_layer(new_a, 10, 1, 0));
    REQUIRE(s->record_layer(new_b, 20, 2, 3));
    CHECK(*s->layer_whiteouts(new_a) == std::optional<std::uint64_t>(0));
    CHECK(*s->layer_whiteouts(new_b) == std::optional<std::uint64_t>(3));
    // A second instance (as another process would open it) while the first is open: the column
    // is there already, nothing to add.
    auto second = open_store(dir);
    CHECK(*second->layer_whiteouts(new_b) == std::optional<std::uint64_t>(3));
    CHECK_FALSE(second->layer_whiteouts(old_layer)->has_value());
  }
  // Reopened after both closed: still one whiteouts column, the old row's sizes intact.
  auto s = open_store(dir);
  CHECK(*s->layer_whiteouts(new_a) == std::optional<std::uint64_t>(0));
  CHECK_FALSE(s->layer_whiteouts(old_layer)->has_value());
  REQUIRE(s->record_layer(old_layer, 123, 4, 2));  // unpacked again by this version: counted
  CHECK(*s->layer_whiteouts(old_layer) == std::optional<std::uint64_t>(2));
  RawDb raw(dir / "state.sqlite");
  CHECK(raw.column("SELECT name FROM pragma_table_info('layers') WHERE name = 'whiteouts'") ==
        std::vector<std::string>{"whiteouts"});
  std::string sizes =
      "SELECT bytes || '/' || entries FROM layers WHERE diff_id = '" + old_layer.str() + "'";
  CHECK(raw.column(sizes.c_str()) == std::vector<std::string>{"123/4"});
}

TEST_CASE("instances opening an old store at the same moment all succeed") {
  // Each finds the column missing; one adds it, the others must take "duplicate column" as done.
  ScratchDir scratch;
  for (int round = 0; round < 8; ++round) {
    const fs::path dir = scratch / ("node" + std::to_string(round));
    auto old_layer = digest_of("old");
    make_old_store(dir, old_layer);
    constexpr int k_openers = 4;
    std::latch start(k_openers);
    std::vector<std::string> errors(k_openers);
    std::vector<std::thread> threads;
    for (int i = 0; i < k_openers; ++i) {
      threads.emplace_back([&, i] {
        start.arrive_and_wait();
        auto s = NodeStore::open(dir);
        if (!s) {
          errors[i] = s.error().message();
          return;
        }
        auto w = (*s)->layer_whiteouts(old_layer);
        if (!w || w->has_value()) errors[i] = "old layer: not unknown";
      });
    }
    for (auto& t : threads) t.join();
    for (const auto& e : errors) CHECK_MESSAGE(e.empty(), "round " << round << ": " << e);
  }
}

}  // namespace
}  // namespace envd::node
