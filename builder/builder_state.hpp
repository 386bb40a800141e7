// A builder's state in one data directory, shared by the embedded builder (`envd push` without a
// builder URL, under $ENVD_HOME/builder) and `envd builder serve --data DIR`:
//   DIR/blobs/sha256/..  DIR/ingest/  content-addressed blobs (FsBlobStore)
//   DIR/registry.sqlite              repositories, manifests, tags, upload sessions
//   DIR/layers.sqlite                layer cache
//   DIR/uploads/                     upload session data
#pragma once

#include <filesystem>
#include <memory>

#include "builder/image_builder.hpp"
#include "builder/layer_cache.hpp"
#include "builder/registry_index.hpp"
#include "envd/store/fs_blob_store.hpp"

namespace envd::builder {

struct BuilderState {
  std::filesystem::path dir;
  std::unique_ptr<store::FsBlobStore> blobs;
  std::unique_ptr<RegistryIndex> index;
  std::unique_ptr<LayerCache> layers;
  std::unique_ptr<ImageBuilder> builder;

  // Opens (creating as needed) the state in `dir`. Errors: io / permission_denied naming the file.
  static Result<std::unique_ptr<BuilderState>> open(const std::filesystem::path& dir);
};

}  // namespace envd::builder
