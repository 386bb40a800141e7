// Layer cache: a layer's content key -> the blob built for it, in SQLite, so a rebuild reuses
// every unchanged layer without reading its files.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>

#include "builder/layer_writer.hpp"
#include "envd/oci/digest.hpp"
#include "envd/util/error.hpp"

namespace envd::builder {

// Thread-safe (one SQLite connection behind a mutex; lookups and inserts are tiny).
class LayerCache {
 public:
  // Opens or creates the database. Errors: io naming the file.
  static Result<std::unique_ptr<LayerCache>> open(const std::filesystem::path& db_path);
  ~LayerCache();

  // The layer built for `key` with `compression`, if any. Errors: io.
  Result<std::optional<BuiltLayer>> find(const oci::Digest& key, Compression compression);
  Result<void> put(const oci::Digest& key, Compression compression, const BuiltLayer& layer);

 private:
  LayerCache() = default;
  struct Db;
  std::unique_ptr<Db> m_db;
};

}  // namespace envd::builder
