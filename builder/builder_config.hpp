// The builder's configuration file (YAML, schemas/builder-config.schema.json): listen address,
// data directory, access tokens, TLS, limits, layer compression and cap, mirrors.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "builder/auth.hpp"
#include "builder/layer_writer.hpp"
#include "envd/util/error.hpp"

namespace envd::builder {

// Sizes are bytes.
struct Limits {
  std::uint64_t blob_bytes = 64ULL << 30;             // largest blob accepted by an upload
  std::uint64_t manifest_bytes = 4ULL << 20;          // largest manifest accepted
  std::uint64_t snapshot_bytes = 256ULL << 20;        // largest snapshot document accepted
  std::uint64_t batch_bytes = 4ULL << 30;             // largest envd API blob batch request
  std::uint64_t upload_session_bytes = 128ULL << 30;  // bytes all open upload sessions may hold
  unsigned concurrent_builds = 2;                     // image builds run at once
};

struct TlsConfig {
  std::filesystem::path cert;  // PEM certificate chain
  std::filesystem::path key;   // PEM private key
};

// An external OCI registry that built images are copied to.
struct MirrorConfig {
  std::string url;     // https://registry.example.com
  std::string prefix;  // repository path prepended there ("" for none): PREFIX/NAMESPACE/NAME
  std::string username;
  std::filesystem::path token_file;  // password or token, read when mirroring
};

struct BuilderConfig {
  std::string listen_host = "127.0.0.1";
  int listen_port = 5000;
  std::filesystem::path data_dir;  // empty: the caller's default ($ENVD_HOME/builder)
  AuthConfig auth;                 // token_file entries already read and hashed
  std::optional<TlsConfig> tls;
  Limits limits;
  Compression compression = Compression::zstd;
  std::size_t layer_cap = 64;
  std::vector<MirrorConfig> mirrors;
};

// Parses config YAML. `source` names the document in errors ("config.yaml:12: limits.blob_bytes:
// must be a positive integer"); relative paths (data_dir, token_file, tls, mirrors) are resolved
// against `base_dir`, and token files are read and hashed here. Unknown keys are errors, so a
// typo cannot silently drop a setting. Errors: invalid_argument naming line and key; not_found /
// permission_denied / io for an unreadable token file.
Result<BuilderConfig> parse_builder_config(std::string_view yaml, std::string_view source,
                                           const std::filesystem::path& base_dir);

// Reads and parses a config file (paths relative to its directory).
// Errors: as parse_builder_config, and not_found / io for the file itself.
Result<BuilderConfig> load_builder_config(const std::filesystem::path& file);

}  // namespace envd::builder
