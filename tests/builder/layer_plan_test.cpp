// The layer plan: deterministic, within the layer cap, big packages alone, small ones in stable
// groups so that changing one package changes exactly one layer.
#include <doctest/doctest.h>

#include <set>

#include "builder/layer_plan.hpp"

using namespace envd;
using namespace envd::builder;

namespace {

snapshot::FileEntry file(const std::string& path, std::uint64_t size, const std::string& content) {
  snapshot::FileEntry f;
  f.path = path;
  f.type = snapshot::FileType::regular;
  f.size = size;
  f.mode = 0644;
  f.digest = oci::sha256_of(content);
  return f;
}

snapshot::Snapshot make_snapshot(std::size_t small_packages) {
  snapshot::Snapshot s;
  s.platform = {"linux", "amd64", "glibc 2.36"};
  snapshot::Environment env;
  env.kind = snapshot::EnvironmentKind::venv;
  env.prefix = "/opt/env";
  snapshot::Package big;
  big.name = "numpy";
  big.version = "1.26";
  big.files = {file("lib/python3.11/site-packages/numpy/core.so", 20'000'000, "numpy")};
  env.packages.push_back(big);
  for (std::size_t i = 0; i < small_packages; ++i) {
    snapshot::Package p;
    p.name = "pkg" + std::to_string(i);
    p.version = "1.0";
    p.files = {file("lib/python3.11/site-packages/" + p.name + "/__init__.py", 100, p.name)};
    env.packages.push_back(p);
  }
  env.unowned = {file("bin/python3", 1000, "python")};
  s.environments.push_back(env);
  snapshot::SourceTree src;
  src.root = "/home/u/proj";
  src.files = {file("main.py", 10, "main")};
  s.sources.push_back(src);
  return s;
}

std::map<std::string, std::string> keys(const std::vector<PlannedLayer>& plan) {
  std::map<std::string, std::string> out;
  for (const auto& l : plan) out[l.name] = l.key.str();
  return out;
}

}  // namespace

TEST_CASE(
    "the plan keeps absolute paths, gives big packages their own layer and is deterministic") {
  auto snap = make_snapshot(30);
  auto plan = plan_layers(snap, {});
  auto again = plan_layers(snap, {});
  CHECK(keys(plan) == keys(again));
  std::set<std::string> names;
  for (const auto& l : plan) names.insert(l.name);
  CHECK(names.count("pkg:/opt/env:pip:numpy") == 1);
  CHECK(names.count("unowned:/opt/env") == 1);
  CHECK(names.count("src:/home/u/proj") == 1);
  const auto& numpy = *std::find_if(
      plan.begin(), plan.end(), [](const auto& l) { return l.name == "pkg:/opt/env:pip:numpy"; });
  REQUIRE(numpy.entries().size() == 1);
  CHECK(numpy.entries()[0].path == "opt/env/lib/python3.11/site-packages/numpy/core.so");
  CHECK(numpy.entries()[0].source == "/opt/env/lib/python3.11/site-packages/numpy/core.so");
  std::size_t files = 0;
  for (const auto& l : plan) {
    files += l.files.size();
    auto entries = l.entries();
    CHECK(std::is_sorted(entries.begin(), entries.end(),
                         [](const auto& a, const auto& b) { return a.path < b.path; }));
    CHECK(layer_key(entries, k_layer_format) == l.key);
  }
  CHECK(files == 33);  // numpy + 30 small + python3 + main.py
}

TEST_CASE("changing one small package changes exactly one layer") {
  auto snap = make_snapshot(40);
  auto before = keys(plan_layers(snap, {}));
  snap.environments[0].packages[7].files[0].digest = oci::sha256_of("changed");
  auto after = keys(plan_layers(snap, {}));
  REQUIRE(before.size() == after.size());
  int differing = 0;
  for (const auto& [name, key] : before) differing += after.at(name) != key ? 1 : 0;
  CHECK(differing == 1);

  // A mode change counts as a change; nothing else (e.g. sizes in the snapshot) does on its own.
  auto snap2 = make_snapshot(40);
  snap2.environments[0].unowned[0].mode = 0755;
  auto after2 = keys(plan_layers(snap2, {}));
  CHECK(after2.at("unowned:/opt/env") != before.at("unowned:/opt/env"));
}

TEST_CASE("the layer count stays within the cap however many packages there are") {
  auto snap = make_snapshot(500);
  PlanOptions options;
  options.layer_cap = 10;
  auto plan = plan_layers(snap, options);
  CHECK(plan.size() + 1 <= 10);  // +1: the snapshot document's layer
  std::size_t files = 0;
  for (const auto& l : plan) files += l.files.size();
  CHECK(files == 503);
}

TEST_CASE("a group of packages from nested roots is sorted by image path, each path once") {
  // /opt/a/sub is an environment inside /opt/a: A's "sub/x" and B's "x" are the same image path.
  snapshot::Snapshot s;
  s.platform = {"linux", "amd64", "glibc 2.36"};
  snapshot::Environment a;
  a.kind = snapshot::EnvironmentKind::venv;
  a.prefix = "/opt/a";
  snapshot::Package pa;
  pa.name = "pa";
  pa.files = {file("sub/x", 1, "x"), file("sub0", 1, "sub0"), file("t", 1, "t")};
  a.packages.push_back(pa);
  snapshot::Environment b = a;
  b.prefix = "/opt/a/sub";
  b.packages[0].name = "pb";
  b.packages[0].files = {file("x", 1, "x"), file("y", 1, "y")};
  s.environments = {a, b};
  PlanOptions options;
  options.groups = 1;
  auto plan = plan_layers(s, options);
  const auto* group = &plan.front();
  for (const auto& l : plan)
    if (l.name == "group:0") group = &l;
  REQUIRE(group->name == "group:0");
  auto entries = group->entries();
  std::vector<std::string> paths, sources;
  for (const auto& e : entries) {
    paths.push_back(e.path);
    sources.push_back(e.source);
  }
  CHECK(paths == std::vector<std::string>{"opt/a/sub/x", "opt/a/sub/y", "opt/a/sub0", "opt/a/t"});
  CHECK(sources ==
        std::vector<std::string>{"/opt/a/sub/x", "/opt/a/sub/y", "/opt/a/sub0", "/opt/a/t"});
  CHECK(layer_key(entries, k_layer_format) == group->key);
}

TEST_CASE("a hard link changes its layer's key and entries; unlinked keys stay as they were") {
  auto snap = make_snapshot(5);
  // Key of an unlinked one-file layer, computed by hand in the documented form: format line, then
  // "<image path>\0<0 regular> <mode in octal> <digest>\n". Pins that keys without links are
  // those of the images built before links existed.
  auto plan = plan_layers(snap, {});
  const auto& unowned = *std::find_if(plan.begin(), plan.end(),
                                      [](const auto& l) { return l.name == "unowned:/opt/env"; });
  std::string text = std::string(k_layer_format) + "\n" + "opt/env/bin/python3" +
                     std::string(1, '\0') + "0 644 " + oci::sha256_of("python").str() + "\n";
  CHECK(unowned.key == oci::sha256_of(text));

  auto& env = snap.environments[0];
  env.unowned.push_back(file("bin/python3m", 1000, "python"));
  const auto unlinked = keys(plan_layers(snap, {}));
  env.unowned.back().link = "bin/python3";
  auto linked_plan = plan_layers(snap, {});
  const auto linked = keys(linked_plan);
  for (const auto& [name, key] : unlinked) {
    CAPTURE(name);
    CHECK((linked.at(name) != key) == (name == "unowned:/opt/env"));
  }
  const auto& layer = *std::find_if(linked_plan.begin(), linked_plan.end(),
                                    [](const auto& l) { return l.name == "unowned:/opt/env"; });
  auto entries = layer.entries();
  REQUIRE(entries.size() == 2);
  CHECK(entries[0].link.empty());
  CHECK(entries[1].path == "opt/env/bin/python3m");
  CHECK(entries[1].link == "opt/env/bin/python3");  // an image path, as the layer writes it
  CHECK(layer_key(entries, k_layer_format) == layer.key);
  // Another first member is another key.
  env.unowned.insert(env.unowned.begin(), file("bin/python", 1000, "python"));
  env.unowned.back().link = "bin/python";
  CHECK(keys(plan_layers(snap, {})).at("unowned:/opt/env") != linked.at("unowned:/opt/env"));
}

TEST_CASE("a unit much bigger than the others is split into stable parts, links kept together") {
  auto snap = make_snapshot(5);
  auto& env = snap.environments[0];
  env.unowned.clear();
  for (int i = 0; i < 200; ++i)  // 200 MB: 200 / 32 = 6 -> 4 parts
    env.unowned.push_back(
        file("lib/python3.11/m" + std::to_string(i) + ".py", 1'000'000, "m" + std::to_string(i)));
  for (const char* opt : {"", ".opt-1", ".opt-2"})  // near copies: one part, side by side
    env.unowned.push_back(
        file(std::string("lib/python3.11/__pycache__/m7.cpython-311") + opt + ".pyc", 1, opt));
  for (int d = 0; d < 30; ++d)  // light directories: each in one part, whole
    for (const char* name : {"a.py", "b.py", "c.txt"})
      env.unowned.push_back(file("lib/python3.11/d" + std::to_string(d) + "/" + name, 1, name));
  env.unowned.push_back(file("lib/python3.11/zlinked", 1, "l"));
  for (int i = 0; i < 5; ++i) {
    env.unowned.push_back(file("lib/python3.11/zlinked" + std::to_string(i), 1, "l"));
    env.unowned.back().link = "lib/python3.11/zlinked";
  }
  std::sort(env.unowned.begin(), env.unowned.end(),
            [](const auto& a, const auto& b) { return a.path < b.path; });

  auto plan = plan_layers(snap, {});
  std::vector<const PlannedLayer*> parts;
  for (const auto& l : plan)
    if (l.name.starts_with("unowned:/opt/env")) parts.push_back(&l);
  REQUIRE(parts.size() == 4);
  std::set<std::string> seen;
  std::uint64_t bytes = 0;
  for (std::size_t k = 0; k < parts.size(); ++k) {
    CHECK(parts[k]->name == "unowned:/opt/env part " + std::to_string(k + 1) + "/4");
    CHECK(parts[k]->files.size() > 20);  // spread, not all in one
    bytes += parts[k]->bytes;
    for (const auto& f : parts[k]->files) CHECK(seen.insert(f.file->path).second);
    auto entries = parts[k]->entries();
    CHECK(layer_key(entries, k_layer_format) == parts[k]->key);
    // The link group is in one part, as its first member and five links to it.
    std::size_t group = 0;
    for (const auto& e : entries) group += e.path.starts_with("opt/env/lib/python3.11/zlinked");
    CHECK((group == 0 || group == 6));
    for (int d = 0; d < 30; ++d) {
      std::size_t in_dir = 0;
      for (const auto& e : entries)
        in_dir += e.path.starts_with("opt/env/lib/python3.11/d" + std::to_string(d) + "/");
      CHECK((in_dir == 0 || in_dir == 3));
    }
    std::size_t pyc = 0;
    for (const auto& e : entries)
      pyc += e.path.starts_with("opt/env/lib/python3.11/__pycache__/m7");
    CHECK((pyc == 0 || pyc == 3));
  }
  CHECK(seen.size() == env.unowned.size());
  CHECK(bytes == 200'000'099);
  // The parts sit together, right after nothing (the unowned files are the bottom layer).
  CHECK(&plan[0] == parts[0]);
  CHECK(&plan[3] == parts[3]);

  // One file changed: one part's key changes, every other layer's stays.
  const auto before = keys(plan);
  env.unowned[17].digest = oci::sha256_of("changed");
  const auto after = keys(plan_layers(snap, {}));
  std::size_t changed = 0;
  for (const auto& [name, key] : before) changed += after.at(name) != key;
  CHECK(changed == 1);

  // Not split when parts are off, or beyond what the cap leaves after the own layers.
  PlanOptions whole;
  whole.part_bytes = 0;
  CHECK(keys(plan_layers(snap, whole)).count("unowned:/opt/env") == 1);
  PlanOptions tight;
  tight.layer_cap = plan.size() + 1 - 2;  // two layers fewer: 4 parts -> 2
  auto tight_plan = plan_layers(snap, tight);
  CHECK(tight_plan.size() + 1 <= tight.layer_cap);
  CHECK(keys(tight_plan).count("unowned:/opt/env part 2/2") == 1);
}

TEST_CASE("a package of many small files is weighed by its files: own layer, split in parts") {
  auto snap = make_snapshot(5);
  snapshot::Package many;
  many.name = "tzdata";
  many.version = "1";
  for (int i = 0; i < 5000; ++i)  // 50 KB in all, but 5000 files x 16 KiB = 82 MB of weight
    many.files.push_back(file("share/zoneinfo/z" + std::to_string(10000 + i), 10, "z"));
  snap.environments[0].packages.push_back(many);
  auto names = keys(plan_layers(snap, {}));
  CHECK(names.count("pkg:/opt/env:pip:tzdata part 1/2") == 1);
  CHECK(names.count("pkg:/opt/env:pip:tzdata part 2/2") == 1);
  PlanOptions by_bytes;
  by_bytes.file_weight = 0;  // 50 KB: a small package, in a group
  names = keys(plan_layers(snap, by_bytes));
  for (const auto& [name, key] : names) CHECK(name.find("tzdata") == std::string::npos);
}
