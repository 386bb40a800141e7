// The node daemon's configuration file (YAML, schemas/node-config.schema.json): data dir,
// registries and their credentials, cache quota, isolation, the status endpoint, and the workers
// to keep running (image, command, replicas, restart policy, environment, grace, readiness).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "envd/node/env_assembly.hpp"
#include "envd/node/sandbox.hpp"
#include "envd/node/supervisor.hpp"
#include "envd/registry/reference.hpp"
#include "envd/util/error.hpp"

namespace envd::node {

// How a registry's tags are watched for moves.
enum class TagWatch {
  automatic,  // the envd builder's long poll when the registry answers it, else polling
  envd,       // the envd builder's long poll only
  poll,       // ask for the manifest digest every poll_interval
};

struct RegistryConfig {
  std::string url;   // as written: "https://builder.example.com:5000"
  std::string host;  // as image references name it: "builder.example.com:5000"
  registry::Scheme scheme = registry::Scheme::https;
  std::string username;  // with a token: sent as Basic credentials (e.g. docker-registry)
  std::string token;     // read from token_file by read_tokens(); "" when none
  std::filesystem::path token_file;
  std::string token_file_key;     // "node.yaml:7: registries[0].token_file", for messages
  std::filesystem::path ca_file;  // PEM CA certificates for this registry; empty: the system's
  TagWatch watch = TagWatch::automatic;
};

struct WorkerConfig {
  WorkerSpec spec;                       // name, replicas, restart, stop grace, readiness
  std::string image;                     // a reference: HOST/NAMESPACE/NAME[:TAG|@DIGEST]
  std::vector<std::string> command;      // argv, run in the image's environment
  std::vector<std::string> environment;  // KEY=VALUE, sorted by key; override the image's Env
};

struct NodeConfig {
  std::filesystem::path data_dir;  // empty: the caller's default ($ENVD_HOME/node)
  std::vector<RegistryConfig> registries;
  std::optional<std::uint64_t> cache_quota;  // bytes; nullopt: no eviction
  std::chrono::seconds cache_grace{600};     // content this recent is never evicted
  std::chrono::milliseconds gc_interval{300000};
  Isolation isolation = Isolation::automatic;
  Assembly assembly = Assembly::automatic;  // overlay mounts where permitted (env_assembly.hpp)
  std::string listen_host = "127.0.0.1";    // status endpoint
  int listen_port = 5001;
  std::chrono::milliseconds poll_interval{30000};  // tag polling for non-envd registries
  unsigned parallel_downloads = 4;
  std::vector<WorkerConfig> workers;
};

// "30s", "500ms", "2m", "1h", or a bare number of seconds. Errors: invalid_argument.
Result<std::chrono::milliseconds> parse_duration(std::string_view text);
// "1073741824", "50GB", "20GiB" (kB MB GB TB: powers of 1000; KiB MiB GiB TiB: of 1024).
// Errors: invalid_argument (also on overflow).
Result<std::uint64_t> parse_size(std::string_view text);

// Parses config YAML. `source` names the document in errors ("node.yaml:12: workers[0].replicas:
// must be an integer from 0 to 1000"); relative paths (data_dir, token_file, ca_file) are
// resolved against `base_dir`. Reads no file. Unknown and duplicate keys are errors, so a typo
// cannot silently drop a setting. Errors: invalid_argument naming line and key.
Result<NodeConfig> parse_node_config(std::string_view yaml, std::string_view source,
                                     const std::filesystem::path& base_dir);

// Reads each registry's token_file into its token. Errors: not_found / permission_denied / io,
// invalid_argument (an empty file), each naming the file and the config line and key.
Result<void> read_tokens(NodeConfig& config);

// Reads and parses a config file (paths relative to its directory), then read_tokens().
// Errors: as those two, and not_found / io for the file itself.
Result<NodeConfig> load_node_config(const std::filesystem::path& file);

}  // namespace envd::node
