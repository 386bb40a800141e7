// ImagePuller: pulls an image (from an envd builder, any OCI registry, or the local
// embedded-builder store) into a NodeStore: resolve the reference, verify manifest and config,
// fetch layers in parallel while unpacking them, resume partial downloads with Range, assemble the
// environment.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "envd/node/env_assembly.hpp"
#include "envd/node/layer_unpacker.hpp"
#include "envd/node/node_store.hpp"
#include "envd/oci/digest.hpp"
#include "envd/oci/image.hpp"
#include "envd/registry/image_copy.hpp"
#include "envd/registry/reference.hpp"
#include "envd/registry/registry_client.hpp"
#include "envd/util/error.hpp"

namespace envd::node {

// Opens the image source for a reference without a host (NAMESPACE/NAME[:TAG|@DIGEST]): the
// local store the embedded builder wrote under $ENVD_HOME. Built by the caller (envd/node may not
// depend on builder/). Must be thread-safe, as ImageSource requires.
using LocalSourceFactory =
    std::function<Result<std::unique_ptr<registry::ImageSource>>(const registry::Reference& ref)>;

struct PullerOptions {
  // Credentials by host, TLS, plain-http hosts, parallel_transfers (layers fetched and unpacked
  // at once), retries, stall timeout.
  registry::ClientOptions client;
  // Empty: local references fail with failed_precondition.
  LocalSourceFactory local_source;
  UnpackLimits limits;
  // The platform chosen from an OCI index or Docker manifest list; empty arch: this machine's
  // (amd64, arm64, ...).
  std::string os = "linux";
  std::string architecture;
  // automatic: an environment whose layers allow it is an overlay of them (nothing assembled at
  // pull time) when this process can mount one (enter_private_mount_namespace() first), else a
  // tree of hardlinks; pull() and ensure() mount it. hardlink: a tree, also for an environment an
  // earlier pull left as an overlay (built then).
  Assembly assembly = Assembly::automatic;
};

// Counters a progress display reads while pull() runs (any thread).
struct PullProgress {
  std::atomic<std::uint64_t> layers_total{0};
  std::atomic<std::uint64_t> layers_done{0};     // present, fetched or unpacked
  std::atomic<std::uint64_t> bytes_to_fetch{0};  // compressed sizes of layers not yet present
  std::atomic<std::uint64_t> bytes_fetched{0};   // over the network (or read from a local source)
};

struct PulledImage {
  std::string reference;  // canonical: [HOST/]REPOSITORY:TAG or @DIGEST
  oci::Digest manifest_digest;
  oci::ImageConfig config;  // Env, WorkingDir, Cmd, labels, diff_ids
  std::filesystem::path env_dir;
  std::filesystem::path rootfs;  // holds the image's files in this process (see assembly)
  // overlay: rootfs is a mount point, mounted in this process's private mount namespace (seen by
  // the processes it starts, not by others); hardlink: a tree every process sees.
  AssemblyKind assembly = AssemblyKind::hardlink;
  std::vector<LayerRecord> layers;
  std::size_t layers_fetched = 0;   // downloaded by this call (not found in the store)
  std::uint64_t bytes_fetched = 0;  // manifest, config and layer bytes downloaded by this call
  double seconds = 0;
};

// Thread-safe: any number of pull() calls at once, from threads and processes sharing the data
// dir; however many want the same image or layer, it is downloaded once and unpacked once (per
// digest lock files). Errors name the reference, then the layer, then the entry:
// "pull 127.0.0.1:5000/team/env:v3: layer sha256:ab.. (2/7): fetch blob ..: ...". Codes:
// invalid_argument (bad reference, bad manifest/config, refused layer entry), not_found,
// permission_denied, digest_mismatch (bytes, sizes or diff_ids that do not match),
// unavailable (network, after retries), failed_precondition (local reference without a local
// source), io.
class ImagePuller {
 public:
  static Result<std::unique_ptr<ImagePuller>> create(NodeStore& store, PullerOptions options);
  ~ImagePuller();
  ImagePuller(const ImagePuller&) = delete;
  ImagePuller& operator=(const ImagePuller&) = delete;

  NodeStore& store();

  // Resolves `reference` (always asking the registry or local store: a tag may have moved),
  // fetches what the store lacks, unpacks it, assembles the environment (ensure_rootfs: mounted
  // or built as PullerOptions::assembly says), records the image.
  // When everything is present it only costs the manifest request.
  Result<PulledImage> pull(const std::string& reference, PullProgress* progress = nullptr);

  // Pull if needed: the recorded image when `reference` was pulled before and its environment
  // is present (no network), else pull().
  Result<PulledImage> ensure(const std::string& reference, PullProgress* progress = nullptr);

  // The manifest digest `reference` names now (for an index: the chosen platform's manifest, so
  // it compares with PulledImage::manifest_digest). One manifest request; for polling a tag.
  Result<oci::Digest> resolve(const std::string& reference);

  // See NodeStore::pin and NodeStore::gc. Unpin: destroy (or release()) the lease.
  Result<ImageLease> pin(const oci::Digest& manifest);
  Result<GcResult> gc(const GcOptions& options);

 private:
  struct Impl;
  explicit ImagePuller(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> m_impl;
};

// This machine's architecture as OCI names it ("amd64", "arm64", ...).
std::string host_architecture();

}  // namespace envd::node
