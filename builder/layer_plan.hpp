// The deterministic layer plan: which snapshot files go into which layer. Each package is a unit;
// units at or above a weight threshold (bytes, and 16 KiB per file) get their own layer, smaller
// ones fall into stable groups (by a hash of the unit's name, so a change to one package changes
// only its group); each environment's unowned files, each source tree and the snapshot document
// are units of their own.
// A unit with a layer of its own that is much bigger than the others (a base interpreter's
// unowned files, a large package) is split into parts, so that building and pulling it run on
// all cores instead of one.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "builder/layer_writer.hpp"
#include "envd/oci/digest.hpp"
#include "envd/snapshot/snapshot.hpp"

namespace envd::builder {

struct PlanOptions {
  std::size_t layer_cap = 64;                       // the manifest never has more layers
  std::uint64_t own_layer_bytes = 8 * 1000 * 1000;  // units this heavy get their own layer
  std::size_t groups = 16;                          // stable groups for the small units
  // A unit's weight is its bytes plus file_weight per file: creating a file costs a node about
  // what writing 16 KiB does (a package of 12,000 small files took longer to unpack than one of
  // 74 MB in 1,200 files). A unit with its own layer is split into
  // bit_floor(min(weight / part_bytes, max_parts)) layers (1 = not split) as far as the cap
  // leaves room after the own layers. Each directory goes whole to one part, picked by a hash of
  // its path; one heavier than half a part is spread by the start of each name up to the first
  // '.'; a hard link goes with its group's first member. A change to one file changes one part,
  // and the count only changes when the weight crosses a power of two.
  std::uint64_t part_bytes = 32 * 1000 * 1000;
  std::uint64_t file_weight = 16 * 1024;
  std::size_t max_parts = 8;
};

// The format of content layers' keys; bump when the tar written for the same entries changes,
// so cached layers are rebuilt.
inline constexpr std::string_view k_layer_format = "envd-layer-v1";

// One file of a planned layer: a file of the snapshot and the index of its root in
// PlannedLayer::roots. Points into the snapshot given to plan_layers.
struct PlannedFile {
  const snapshot::FileEntry* file = nullptr;
  std::uint32_t root = 0;
};

// A root the files of a layer are under: an environment prefix or a source tree root.
struct PlannedRoot {
  std::string root;          // absolute, as in the snapshot: "/opt/env"
  std::string image_prefix;  // its files' image path prefix: "opt/env/" ("" for "/")
};

struct PlannedLayer {
  // "pkg:numpy", "group:3", "unowned:/opt/env", "src:/home/u/p"; a part of a split unit adds
  // " part K/N" (K from 1).
  std::string name;
  // The files, sorted by image path and unique. They point into the snapshot given to
  // plan_layers, which must outlive the plan; entries() makes the LayerEntry list from them only
  // for the layers that are built (a rebuild needs the keys of all layers, the entries of few).
  std::vector<PlannedFile> files;
  std::vector<PlannedRoot> roots;
  std::uint64_t bytes = 0;
  // Digest over everything that decides the layer's bytes (paths, types, modes, content digests,
  // symlink targets, hard links, the layer format version): equal keys give equal layers. Equal
  // to layer_key(entries(), k_layer_format).
  oci::Digest key = oci::sha256_of("");

  // The layer's entries, sorted by path, with `source` set to the file's own path. Pure.
  std::vector<LayerEntry> entries() const;
};

// Pure and deterministic: the same snapshot and options give the same plan on any machine.
// The snapshot document's own layer is not included (the image builder adds it last).
std::vector<PlannedLayer> plan_layers(const snapshot::Snapshot& snapshot,
                                      const PlanOptions& options);

// The content key of a list of entries (see PlannedLayer::key). Pure.
oci::Digest layer_key(const std::vector<LayerEntry>& entries, std::string_view format);

}  // namespace envd::builder
