// An image of the builder's own store (blobs + registry index) as a registry::ImageSource: what
// `envd builder mirror`, mirroring by config and the node's local references read from.
#pragma once

#include <memory>
#include <string>

#include "builder/builder_state.hpp"
#include "envd/registry/image_copy.hpp"

namespace envd::builder {

// Images of `repository` (NAMESPACE/NAME) in `state`; tags and digests resolve through its index
// (not_found naming the image when unknown). `state` must outlive the source. Thread-safe.
std::unique_ptr<registry::StoreImageSource> local_image_source(BuilderState& state,
                                                               const std::string& repository);

}  // namespace envd::builder
