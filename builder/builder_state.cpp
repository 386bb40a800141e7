// Opening a builder's data directory (see builder_state.hpp).
#include "builder/builder_state.hpp"

namespace envd::builder {

Result<std::unique_ptr<BuilderState>> BuilderState::open(const std::filesystem::path& dir) {
  auto state = std::make_unique<BuilderState>();
  state->dir = dir;
  auto context = [&](const Error& e) {
    return e.with_context("open builder data " + dir.string());
  };
  auto blobs = store::FsBlobStore::create(dir);
  if (!blobs) return context(blobs.error());
  state->blobs = std::move(*blobs);
  auto index = RegistryIndex::open(dir / "registry.sqlite");
  if (!index) return context(index.error());
  state->index = std::move(*index);
  auto layers = LayerCache::open(dir / "layers.sqlite");
  if (!layers) return context(layers.error());
  state->layers = std::move(*layers);
  state->builder = std::make_unique<ImageBuilder>(*state->blobs, *state->index, *state->layers);
  return state;
}

}  // namespace envd::builder
