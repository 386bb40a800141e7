// Reads the user config YAML through yaml-cpp (whose exceptions stop here), checking every key and
// value and naming the line and key of the first problem (yaml-cpp marks count lines from 0).
#include "envd/cli/user_config.hpp"

#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <optional>
#include <set>

#include "envd/registry/http_transport.hpp"
#include "envd/registry/reference.hpp"
#include "envd/util/atomic_file.hpp"

namespace envd::cli {
namespace {

namespace fs = std::filesystem;

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::string(v) : std::string();
}

class Reader {
 public:
  Reader(std::string_view source, fs::path base_dir)
      : m_source(source), m_base_dir(std::move(base_dir)) {}

  Error error(const YAML::Node& node, std::string_view key, std::string_view msg) const {
    std::string where(m_source);
    if (node.Mark().line >= 0) where += ":" + std::to_string(node.Mark().line + 1);
    return Error(ErrorCode::invalid_argument,
                 where + ": " + std::string(key) + ": " + std::string(msg));
  }

  Result<std::string> string(const YAML::Node& node, std::string_view key) const {
    if (!node.IsScalar() || node.Scalar().empty())
      return error(node, key, "must be a non-empty string");
    return node.Scalar();
  }

  Result<std::vector<std::string>> strings(const YAML::Node& node, std::string_view key) const {
    if (!node.IsSequence()) return error(node, key, "must be a list of strings");
    std::vector<std::string> out;
    for (std::size_t i = 0; i < node.size(); ++i) {
      ENVD_TRY(auto s, string(node[i], std::string(key) + "[" + std::to_string(i) + "]"));
      out.push_back(std::move(s));
    }
    return out;
  }

  // "~/x" under $HOME; relative paths under the config's directory.
  Result<fs::path> path(const YAML::Node& node, std::string_view key) const {
    auto read = string(node, key);
    if (!read) return read.error();
    const std::string& text = *read;
    if (text.starts_with('~') && (text.size() == 1 || text[1] == '/')) {
      std::string home = env_or_empty("HOME");
      if (home.empty()) return error(node, key, "starts with ~ but $HOME is not set");
      return (fs::path(home) / text.substr(std::min<std::size_t>(text.size(), 2)))
          .lexically_normal();
    }
    fs::path p(text);
    return p.is_absolute() ? p.lexically_normal() : (m_base_dir / p).lexically_normal();
  }

 private:
  std::string_view m_source;
  fs::path m_base_dir;
};

// "NAMESPACE/NAME[:TAG]" or "NAME[:TAG]", as --name takes it.
bool valid_image_name(std::string_view name) {
  std::string_view repo = name;
  if (auto colon = name.rfind(':');
      colon != std::string_view::npos && name.find('/', colon) == std::string_view::npos) {
    if (!registry::is_valid_tag(name.substr(colon + 1))) return false;
    repo = name.substr(0, colon);
  }
  return registry::is_valid_repository(repo);
}

Result<UserConfig> read_config(const Reader& r, const YAML::Node& root) {
  UserConfig c;
  if (root.IsNull()) return c;  // an empty file: nothing configured
  if (!root.IsMap()) return r.error(root, "(top level)", "must be a mapping of keys to values");
  std::set<std::string> seen;
  std::optional<YAML::Node> token_key;  // where `token` was given, for the both-given error
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (!it->first.IsScalar()) return r.error(it->first, "(key)", "keys must be strings");
    const std::string key = it->first.Scalar();
    const YAML::Node v = it->second;  // a copy: it-> yields a temporary
    if (!seen.insert(key).second) return r.error(it->first, key, "given twice");
    if (key == "builder") {
      ENVD_TRY(c.builder, r.string(v, key));
      while (c.builder.ends_with('/')) c.builder.pop_back();
      auto url = registry::parse_url(c.builder);
      if (!url || url->target != "/")
        return r.error(
            v, key,
            "must be an http:// or https:// URL without a path, not \"" + v.Scalar() + "\"");
    } else if (key == "token") {
      ENVD_TRY(c.token, r.string(v, key));
      token_key = it->first;
    } else if (key == "token_file") {
      ENVD_TRY(c.token_file, r.path(v, key));
    } else if (key == "name") {
      ENVD_TRY(c.name, r.string(v, key));
      if (!valid_image_name(c.name))
        return r.error(v, key,
                       "\"" + c.name +
                           "\" is not an image name NAMESPACE/NAME[:TAG] (lowercase letters, "
                           "digits and . _ - inside components)");
    } else if (key == "ignore") {
      ENVD_TRY(c.ignore, r.strings(v, key));
    } else if (key == "allow_secrets") {
      ENVD_TRY(c.allow_secrets, r.strings(v, key));
    } else if (key == "compression") {
      ENVD_TRY(c.compression, r.string(v, key));
      if (c.compression != "zstd" && c.compression != "gzip")
        return r.error(v, key, "must be zstd or gzip, not \"" + c.compression + "\"");
    } else if (key == "ca_file") {
      ENVD_TRY(c.ca_file, r.path(v, key));
      std::error_code ec;
      if (!fs::is_regular_file(c.ca_file, ec))
        return r.error(v, key, c.ca_file.string() + " is not a readable file");
    } else {
      return r.error(it->first, key,
                     "unknown key (known: builder, token, token_file, name, ignore, "
                     "allow_secrets, compression, ca_file)");
    }
  }
  if (token_key && !c.token_file.empty())
    return r.error(*token_key, "token", "give either token or token_file, not both");
  return c;
}

std::string trimmed(std::string s) {
  auto space = [](char ch) { return ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t'; };
  while (!s.empty() && space(s.back())) s.pop_back();
  std::size_t start = 0;
  while (start < s.size() && space(s[start])) ++start;
  return s.substr(start);
}

}  // namespace

fs::path user_config_path() {
  if (auto p = env_or_empty("ENVD_CONFIG"); !p.empty()) return p;
  if (auto x = env_or_empty("XDG_CONFIG_HOME"); !x.empty())
    return fs::path(x) / "envd" / "config.yaml";
  std::string home = env_or_empty("HOME");
  return fs::path(home.empty() ? "/" : home) / ".config" / "envd" / "config.yaml";
}

Result<UserConfig> parse_user_config(std::string_view yaml, std::string_view source,
                                     const fs::path& base_dir) {
  Reader reader(source, base_dir);
  try {
    YAML::Node root = YAML::Load(std::string(yaml));
    return read_config(reader, root);
  } catch (const YAML::Exception& e) {
    std::string where(source);
    if (e.mark.line >= 0) where += ":" + std::to_string(e.mark.line + 1);
    return Error(ErrorCode::invalid_argument, where + ": not valid YAML: " + e.msg);
  }
}

Result<UserConfig> load_user_config_file(const fs::path& file) {
  auto text = read_file(file);
  if (!text) return text.error().with_context("read envd config");
  fs::path base = fs::absolute(file).parent_path();
  ENVD_TRY(auto config, parse_user_config(*text, file.string(), base));
  config.file = file;
  return config;
}

Result<UserConfig> load_user_config() {
  fs::path file = user_config_path();
  bool named = !env_or_empty("ENVD_CONFIG").empty();
  std::error_code ec;
  if (!named && !fs::exists(file, ec)) return UserConfig{};
  auto config = load_user_config_file(file);
  if (!config && named && config.error().code() == ErrorCode::not_found)
    return config.error().with_context("ENVD_CONFIG");
  return config;
}

Result<std::string> config_token(const UserConfig& config) {
  if (!config.token.empty() || config.token_file.empty()) return config.token;
  std::string where = config.file.empty() ? "config" : config.file.string();
  auto text = read_file(config.token_file);
  if (!text) return text.error().with_context(where + ": token_file");
  std::string token = trimmed(std::move(*text));
  if (token.empty())
    return Error(ErrorCode::invalid_argument,
                 where + ": token_file: " + config.token_file.string() + " is empty");
  return token;
}

}  // namespace envd::cli
