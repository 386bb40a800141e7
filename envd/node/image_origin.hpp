// Internal to the puller (envd_node): where an image's manifests and blobs come from, a registry
// repository or the embedded builder's local store, and which manifest of an index is this
// platform's.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "envd/oci/image.hpp"
#include "envd/registry/image_copy.hpp"
#include "envd/registry/reference.hpp"
#include "envd/registry/registry_client.hpp"
#include "envd/util/error.hpp"

namespace envd::node::detail {

// Where manifests and blobs come from: a registry repository or a local store.
class Origin {
 public:
  virtual ~Origin() = default;
  virtual Result<registry::Manifest> manifest(const std::string& reference) = 0;
  // Streams the blob into `writer` after the bytes it already holds, then commits it (verified).
  virtual Result<registry::FetchResult> fetch(const oci::Descriptor& blob,
                                              store::BlobWriter& writer) = 0;
};

// A repository of `client`'s registry (which must outlive the origin).
std::unique_ptr<Origin> registry_origin(registry::RegistryClient& client, std::string repository);

// A local image source (the embedded builder's store). A blob longer than its descriptor says is
// refused with digest_mismatch.
std::unique_ptr<Origin> local_origin(std::unique_ptr<registry::ImageSource> source);

struct Resolved {
  registry::Manifest manifest;  // an image manifest
  oci::ManifestInfo info;
  std::uint64_t bytes = 0;  // manifest bytes received (index included)
};

// The image manifest `ref` names; an index is resolved to the manifest for `os`/`arch` (fetched,
// and checked against the index's digest, only when `fetch_child`). Errors: those of the origin,
// invalid_argument (not a manifest, an index naming an index), not_found (no manifest for the
// platform), digest_mismatch.
Result<Resolved> resolve_manifest(Origin& origin, const registry::Reference& ref,
                                  const std::string& os, const std::string& arch, bool fetch_child);

}  // namespace envd::node::detail
