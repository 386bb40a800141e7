// The deterministic layer plan: which snapshot files go into which layer. Each package is a unit;
// units at or above a size threshold get their own layer, smaller ones fall into stable groups
// (by a hash of the unit's name, so a change to one package changes only its group); each
// environment's unowned files, each source tree and the snapshot document are units of their own.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "builder/layer_writer.hpp"
#include "envd/oci/digest.hpp"
#include "envd/snapshot/snapshot.hpp"

namespace envd::builder {

struct PlanOptions {
  std::size_t layer_cap = 64;                       // the manifest never has more layers
  std::uint64_t own_layer_bytes = 8 * 1000 * 1000;  // units this big get their own layer
  std::size_t groups = 16;                          // stable groups for the small units
};

struct PlannedLayer {
  std::string name;                 // "pkg:numpy", "group:3", "unowned:/opt/env", "src:/home/u/p"
  std::vector<LayerEntry> entries;  // sorted by path, with `source` set to the file's own path
  std::uint64_t bytes = 0;
  // Digest over everything that decides the layer's bytes (paths, types, modes, content digests,
  // symlink targets, the layer format version): equal keys give equal layers.
  oci::Digest key = oci::sha256_of("");
};

// Pure and deterministic: the same snapshot and options give the same plan on any machine.
// The snapshot document's own layer is not included (the image builder adds it last).
std::vector<PlannedLayer> plan_layers(const snapshot::Snapshot& snapshot,
                                      const PlanOptions& options);

// The content key of a list of entries (see PlannedLayer::key), also used for the metadata layer.
oci::Digest layer_key(const std::vector<LayerEntry>& entries, std::string_view format);

}  // namespace envd::builder
