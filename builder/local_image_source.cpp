// Resolves references of the builder's store through its registry index.
#include "builder/local_image_source.hpp"

#include "builder/registry_index.hpp"

namespace envd::builder {

std::unique_ptr<registry::StoreImageSource> local_image_source(BuilderState& state,
                                                               const std::string& repository) {
  RegistryIndex& index = *state.index;
  return std::make_unique<registry::StoreImageSource>(
      *state.blobs, repository,
      [&index, repository](const std::string& reference) -> Result<registry::ManifestLocation> {
        ENVD_TRY(auto found, index.resolve(repository, reference));
        if (!found)
          return unexpected(ErrorCode::not_found,
                            "no image " + repository +
                                (reference.starts_with("sha256:") ? "@" : ":") + reference +
                                " in the builder store");
        return registry::ManifestLocation{found->digest, found->media_type};
      });
}

}  // namespace envd::builder
