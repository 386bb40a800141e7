// Deferred durability records: written before the renames they cover, removed with what they list
// after a reboot, settled (syncfs, then deleted) once their pull is done; and NodeStore's use of
// them at open and commit.
#include "envd/node/deferred_sync.hpp"

#include <doctest/doctest.h>

#include "envd/node/node_store.hpp"
#include "support/scratch_dir.hpp"

namespace envd::node {
namespace {

namespace fs = std::filesystem;
using test::ScratchDir;

const std::string k_hex_a(64, 'a');
const std::string k_hex_b(64, 'b');
const std::string k_hex_c(64, 'c');

std::vector<std::string> records(const fs::path& dir) {
  std::vector<std::string> out;
  if (!fs::exists(dir / "unsynced")) return out;
  for (const auto& e : fs::directory_iterator(dir / "unsynced"))
    out.push_back(e.path().filename().string());
  return out;
}

void make_dir_with_file(const fs::path& p) {
  test::write_file(p / "f", "data\n");
}

TEST_CASE("the boot id is the kernel's") {
  std::string id = current_boot_id();
  CHECK(id.size() == 36);
  CHECK(id == current_boot_id());
}

TEST_CASE("a record lists its entries under this boot's name and refuses other entries") {
  ScratchDir dir;
  auto rec = begin_deferred_sync(dir.path(), "boot-1", {"layers/" + k_hex_a, "envs/" + k_hex_b});
  REQUIRE_MESSAGE(rec, (rec ? "" : rec.error().message()));
  CHECK(rec->active());
  auto names = records(dir.path());
  REQUIRE(names.size() == 1);
  CHECK(names[0].starts_with("boot-1-"));
  CHECK(test::read_file(dir / "unsynced" / names[0]) ==
        "envd-unsynced 1\nlayers/" + k_hex_a + "\nenvs/" + k_hex_b + "\n");

  for (const std::string& bad :
       std::vector<std::string>{"layers/../x", "blobs/" + k_hex_a, "layers/" + k_hex_a + "/x",
                                "envs/" + std::string(64, 'A'), "/abs"}) {
    auto r = begin_deferred_sync(dir.path(), "boot-1", {bad});
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == ErrorCode::invalid_argument);
    CHECK(r.error().message().find(bad) != std::string::npos);
  }
  CHECK(records(dir.path()).size() == 1);
}

TEST_CASE("after a reboot, what an unsettled record lists is removed; this boot's stay") {
  ScratchDir dir;
  make_dir_with_file(dir / "layers" / k_hex_a);
  make_dir_with_file(dir / "layers" / k_hex_c);  // listed by nobody
  make_dir_with_file(dir / "envs" / k_hex_b);
  {
    auto old = begin_deferred_sync(dir.path(), "boot-1", {"layers/" + k_hex_a, "envs/" + k_hex_b});
    REQUIRE(old);
    auto current = begin_deferred_sync(dir.path(), "boot-2", {"layers/" + k_hex_c});
    REQUIRE(current);
  }  // both pulls ended (their processes died or finished)
  std::vector<fs::path> asked;
  auto removed = recover_deferred_sync(dir.path(), "boot-2", [&](const fs::path& p) {
    asked.push_back(p);
    fs::remove_all(p);
    return Result<void>{};
  });
  REQUIRE(removed);
  CHECK(*removed == std::vector<fs::path>{dir / "layers" / k_hex_a, dir / "envs" / k_hex_b});
  CHECK(asked == *removed);
  CHECK_FALSE(fs::exists(dir / "layers" / k_hex_a));
  CHECK_FALSE(fs::exists(dir / "envs" / k_hex_b));
  CHECK(fs::exists(dir / "layers" / k_hex_c / "f"));
  auto names = records(dir.path());
  REQUIRE(names.size() == 1);
  CHECK(names[0].starts_with("boot-2-"));
}

TEST_CASE("a failing removal keeps the record for the next open") {
  ScratchDir dir;
  make_dir_with_file(dir / "layers" / k_hex_a);
  REQUIRE(begin_deferred_sync(dir.path(), "boot-1", {"layers/" + k_hex_a}));
  auto r = recover_deferred_sync(dir.path(), "boot-2", [](const fs::path& p) -> Result<void> {
    return Error(ErrorCode::io, "cannot remove " + p.string());
  });
  REQUIRE_FALSE(r);
  CHECK(r.error().message().find(k_hex_a) != std::string::npos);
  CHECK(records(dir.path()).size() == 1);
}

TEST_CASE(
    "settle: records of finished pulls go after a syncfs; held, young and foreign ones stay") {
  ScratchDir dir;
  auto running = begin_deferred_sync(dir.path(), "boot-2", {"layers/" + k_hex_a});
  REQUIRE(running);
  auto done = begin_deferred_sync(dir.path(), "boot-2", {"layers/" + k_hex_b});
  REQUIRE(done);
  done->finish();
  REQUIRE(begin_deferred_sync(dir.path(), "boot-1", {"layers/" + k_hex_c}));

  auto young = settle_deferred_sync(dir.path(), "boot-2", std::chrono::seconds(3600));
  REQUIRE(young);
  CHECK(*young == 0);
  CHECK(records(dir.path()).size() == 3);

  auto settled = settle_deferred_sync(dir.path(), "boot-2", std::chrono::seconds(0));
  REQUIRE(settled);
  CHECK(*settled == 1);
  CHECK(records(dir.path()).size() == 2);  // the running pull's and boot-1's

  running->finish();
  settled = settle_deferred_sync(dir.path(), "boot-2", std::chrono::seconds(0));
  REQUIRE(settled);
  CHECK(*settled == 1);
  auto names = records(dir.path());
  REQUIRE(names.size() == 1);
  CHECK(names[0].starts_with("boot-1-"));
}

TEST_CASE("NodeStore: a deferred commit survives a reopen in the same boot, not a reboot") {
  ScratchDir dir;
  auto diff_id = oci::sha256_of("layer tar");
  auto open = [&](const std::string& boot) {
    auto s = NodeStore::open(dir.path(), NodeStoreOptions{{}, boot});
    REQUIRE_MESSAGE(s, (s ? "" : s.error().message()));
    return std::move(*s);
  };
  // A pull's part: record, deferred commit of the layer, record finished.
  auto pull_layer = [&](NodeStore& store) {
    auto record = store.begin_deferred_sync({store.layer_dir(diff_id)});
    REQUIRE(record);
    CHECK(record->active());
    auto staging = store.make_staging("layer");
    REQUIRE(staging);
    test::write_file(staging->path() / "f", "content\n");
    REQUIRE(
        store.commit_staging(*staging, store.layer_dir(diff_id), NodeStore::Durability::deferred));
    record->finish();
  };
  {
    auto store = open("boot-1");
    pull_layer(*store);
    CHECK(store->has_layer(diff_id));
  }
  CHECK(open("boot-1")->has_layer(diff_id));
  {
    auto store = open("boot-2");  // the machine restarted before any settle
    CHECK_FALSE(store->has_layer(diff_id));
    CHECK(records(dir.path()).empty());
    CHECK(fs::is_empty(dir / "staging"));
  }

  // Settled before the restart: kept.
  {
    auto store = open("boot-3");
    pull_layer(*store);
    auto settled = store->settle_deferred_sync(std::chrono::seconds(0));
    REQUIRE(settled);
    CHECK(*settled == 1);
  }
  CHECK(open("boot-4")->has_layer(diff_id));

  // Boot id unknown: no record, commits are durable.
  auto store = open("");
  auto record = store->begin_deferred_sync({store->layer_dir(diff_id)});
  REQUIRE(record);
  CHECK_FALSE(record->active());
  CHECK(records(dir.path()).empty());
}

}  // namespace
}  // namespace envd::node
