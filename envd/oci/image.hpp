// OCI image model: media types, descriptors, image manifest and config, and reading any manifest a
// registry may receive (OCI or Docker schema 2, image or index).
// Spec: https://github.com/opencontainers/image-spec/blob/v1.1.0/manifest.md
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "envd/oci/digest.hpp"
#include "envd/util/error.hpp"

namespace envd::oci {

namespace media_type {
inline constexpr std::string_view k_manifest = "application/vnd.oci.image.manifest.v1+json";
inline constexpr std::string_view k_index = "application/vnd.oci.image.index.v1+json";
inline constexpr std::string_view k_config = "application/vnd.oci.image.config.v1+json";
inline constexpr std::string_view k_layer_tar = "application/vnd.oci.image.layer.v1.tar";
inline constexpr std::string_view k_layer_gzip = "application/vnd.oci.image.layer.v1.tar+gzip";
inline constexpr std::string_view k_layer_zstd = "application/vnd.oci.image.layer.v1.tar+zstd";
inline constexpr std::string_view k_docker_manifest =
    "application/vnd.docker.distribution.manifest.v2+json";
inline constexpr std::string_view k_docker_manifest_list =
    "application/vnd.docker.distribution.manifest.list.v2+json";
inline constexpr std::string_view k_docker_config =
    "application/vnd.docker.container.image.v1+json";
inline constexpr std::string_view k_docker_layer_gzip =
    "application/vnd.docker.image.rootfs.diff.tar.gzip";
}  // namespace media_type

// Annotation/label keys envd writes.
inline constexpr std::string_view k_label_snapshot_digest = "dev.envd.snapshot.digest";
inline constexpr std::string_view k_label_envd_version = "dev.envd.version";

struct Descriptor {
  std::string media_type;
  Digest digest;
  std::uint64_t size = 0;
  std::map<std::string, std::string> annotations;
  friend bool operator==(const Descriptor&, const Descriptor&) = default;
};

// The parts of the image config envd writes and reads.
// https://github.com/opencontainers/image-spec/blob/v1.1.0/config.md
struct ImageConfig {
  std::string architecture;      // amd64
  std::string os;                // linux
  std::vector<std::string> env;  // "KEY=value"
  std::string working_dir;
  std::vector<std::string> cmd;
  std::map<std::string, std::string> labels;
  std::vector<Digest> diff_ids;  // rootfs.diff_ids, one per layer, uncompressed tar digests
  friend bool operator==(const ImageConfig&, const ImageConfig&) = default;
};

struct ImageManifest {
  Descriptor config;
  std::vector<Descriptor> layers;
  std::map<std::string, std::string> annotations;
  friend bool operator==(const ImageManifest&, const ImageManifest&) = default;
};

// Canonical JSON (sorted keys, no whitespace, no timestamps): the same value gives the same bytes,
// hence the same digest, on every machine. Pure.
std::string serialize(const ImageConfig& config);
std::string serialize(const ImageManifest& manifest);  // schemaVersion 2, OCI media type

// Errors: invalid_argument naming the field.
Result<ImageConfig> parse_config(std::string_view json);

// What a registry needs to know about a pushed manifest: its media type (from the document, else
// from the Content-Type it came with) and every descriptor it references (config and layers of
// an image; manifests of an index), which must exist before it is accepted.
struct ManifestInfo {
  std::string media_type;
  bool is_index = false;
  std::optional<Descriptor> config;
  std::vector<Descriptor> layers;     // image
  std::vector<Descriptor> manifests;  // index
};

// Accepts OCI image manifest / index and Docker schema 2 manifest / manifest list.
// Errors: invalid_argument (not JSON, unknown media type, schemaVersion != 2, bad descriptor).
Result<ManifestInfo> parse_manifest(std::string_view bytes, std::string_view content_type = {});

}  // namespace envd::oci
