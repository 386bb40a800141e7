// Copying an image (manifest or index, its manifests, configs and layers) from a source (a local
// blob store, or another registry) to a registry, skipping blobs the destination already has.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "envd/registry/registry_client.hpp"
#include "envd/store/blob_store.hpp"

namespace envd::registry {

// Where an image is read from. Implementations must be thread-safe: copy_image opens blobs from
// several threads at once.
class ImageSource {
 public:
  virtual ~ImageSource() = default;
  // The manifest `reference` (a tag or a digest) names. Errors: not_found, digest_mismatch, ...
  virtual Result<Manifest> manifest(const std::string& reference) = 0;
  // A reader over the blob's bytes. Errors: not_found, io, ...
  virtual Result<std::unique_ptr<store::BlobReader>> open_blob(const oci::Descriptor& blob) = 0;
  // The repository to try a cross-repository mount from when copying to `dest`; nullopt when
  // the source is not a repository on the same registry.
  virtual std::optional<std::string> mount_source_for(const RegistryClient& /*dest*/) const {
    return std::nullopt;
  }
  // For messages: "local team/env", "127.0.0.1:5000/team/env".
  virtual std::string describe() const = 0;
};

// A manifest a local store holds: its digest and media type.
struct ManifestLocation {
  oci::Digest digest;
  std::string media_type;
};

// An image in a local blob store (e.g. the embedded builder's), with tags resolved by `resolve`
// (reference -> manifest location; not_found when unknown). Manifest bytes are read from the
// store and checked against the digest.
class StoreImageSource : public ImageSource {
 public:
  using Resolver = std::function<Result<ManifestLocation>(const std::string& reference)>;
  StoreImageSource(const store::BlobStore& blobs, std::string name, Resolver resolve);

  Result<Manifest> manifest(const std::string& reference) override;
  Result<std::unique_ptr<store::BlobReader>> open_blob(const oci::Descriptor& blob) override;
  std::string describe() const override { return "local " + m_name; }

 private:
  const store::BlobStore& m_blobs;
  std::string m_name;
  Resolver m_resolve;
};

// An image in a registry repository; blobs are downloaded into `staging` (verified) before they
// are read, and stay there.
class RegistryImageSource : public ImageSource {
 public:
  RegistryImageSource(RegistryClient& client, std::string repository, store::BlobStore& staging);

  Result<Manifest> manifest(const std::string& reference) override;
  Result<std::unique_ptr<store::BlobReader>> open_blob(const oci::Descriptor& blob) override;
  std::optional<std::string> mount_source_for(const RegistryClient& dest) const override;
  std::string describe() const override;

 private:
  RegistryClient& m_client;
  std::string m_repository;
  store::BlobStore& m_staging;
};

struct CopyResult {
  oci::Digest manifest_digest;
  std::string media_type;
  std::size_t manifests = 0;      // pushed: the top one plus an index's manifests
  std::size_t blobs_copied = 0;   // uploaded
  std::size_t blobs_skipped = 0;  // already at the destination
  std::size_t blobs_mounted = 0;  // mounted from the source repository
  std::uint64_t bytes_copied = 0;
};

// Copies the image `source_reference` names to `dest` as `dest_repository`, tagged `dest_tag`
// (empty: pushed by digest only). Blobs go first (dest.options().parallel_transfers at once),
// then an index's manifests by digest, then the top manifest: the tag moves only once everything
// it names is there. Errors: those of the source and of the destination, with context naming the
// blob or manifest; nothing is tagged on failure.
Result<CopyResult> copy_image(ImageSource& source, const std::string& source_reference,
                              RegistryClient& dest, const std::string& dest_repository,
                              const std::string& dest_tag);

}  // namespace envd::registry
