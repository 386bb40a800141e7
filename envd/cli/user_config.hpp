// The user's envd configuration (YAML, schemas/envd-config.schema.json):
// `~/.config/envd/config.yaml` or $ENVD_CONFIG. Builder URL, token or token file, default image
// name, ignore patterns, secret allow-list, layer compression, CA file. Flags override environment
// variables, which override it.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "envd/util/error.hpp"

namespace envd::cli {

struct UserConfig {
  std::filesystem::path file;        // the file read; empty when there was none
  std::string builder;               // http(s)://HOST[:PORT]; empty: none configured
  std::string token;                 // bearer token written in the file
  std::filesystem::path token_file;  // or the file holding it (read by config_token)
  std::string name;                  // default image name NAMESPACE/NAME[:TAG] (or NAME[:TAG])
  std::vector<std::string> ignore;   // gitignore-syntax patterns, for source trees
  std::vector<std::string> allow_secrets;  // source paths the secret deny-list may not block
  std::string compression;                 // "zstd" | "gzip"; empty: the builder's default
  std::filesystem::path ca_file;           // PEM bundle for an https builder
};

// $ENVD_CONFIG when set, else $XDG_CONFIG_HOME/envd/config.yaml, else ~/.config/envd/config.yaml.
std::filesystem::path user_config_path();

// Parses config YAML. `source` names the document in errors, which give its line and the key:
// "config.yaml:3: compression: must be zstd or gzip, not \"lz4\"". Relative paths (token_file,
// ca_file) are resolved against `base_dir`; "~/" against $HOME. Unknown keys are errors, naming
// the key, so that a typo cannot drop a setting silently. Errors: invalid_argument.
Result<UserConfig> parse_user_config(std::string_view yaml, std::string_view source,
                                     const std::filesystem::path& base_dir);

// Reads user_config_path(). A missing file is an empty config, unless $ENVD_CONFIG names it (the
// user asked for that file: not_found). Errors: as parse_user_config; not_found, io,
// permission_denied for the file.
Result<UserConfig> load_user_config();

// Reads `file` (missing: not_found). Errors: as parse_user_config, and the file's.
Result<UserConfig> load_user_config_file(const std::filesystem::path& file);

// The token the config gives: `token`, else the content of `token_file` (surrounding whitespace
// trimmed), else "". Errors: not_found / permission_denied / io for the token file, and
// invalid_argument when it is empty; each naming the file and the config.
Result<std::string> config_token(const UserConfig& config);

}  // namespace envd::cli
