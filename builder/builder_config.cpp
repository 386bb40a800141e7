// Reads the builder config YAML through yaml-cpp (whose exceptions stop here) into BuilderConfig,
// checking every key and value and naming the line and key of the first problem.
#include "builder/builder_config.hpp"

#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <charconv>
#include <functional>
#include <map>

#include "builder/registry_index.hpp"
#include "envd/util/atomic_file.hpp"
#include "envd/util/listen_address.hpp"
#include "envd/util/log.hpp"

namespace envd::builder {
namespace {

namespace fs = std::filesystem;

// Walks the YAML tree; every error names the source, line and dotted key.
class Reader {
 public:
  Reader(std::string_view source, fs::path base_dir)
      : m_source(source), m_base_dir(std::move(base_dir)) {}

  Error error(const YAML::Node& node, const std::string& key, std::string_view msg) const {
    std::string where(m_source);
    if (node.Mark().line >= 0) where += ":" + std::to_string(node.Mark().line + 1);
    return Error(ErrorCode::invalid_argument, where + ": " + key + ": " + std::string(msg));
  }

  // Calls `field(key_path, value)` for each entry of a mapping; unknown keys are the callback's
  // to reject.
  Result<void> each_entry(const YAML::Node& node, const std::string& path,
                          const std::function<Result<void>(const std::string&, const std::string&,
                                                           const YAML::Node&)>& field) const {
    if (!node.IsMap()) return error(node, path.empty() ? "(top level)" : path, "must be a mapping");
    for (auto it = node.begin(); it != node.end(); ++it) {
      if (!it->first.IsScalar()) return error(it->first, path, "keys must be strings");
      std::string key = it->first.Scalar();
      std::string full = path.empty() ? key : path + "." + key;
      ENVD_TRY_VOID(field(key, full, it->second));
    }
    return {};
  }

  Result<std::string> string(const YAML::Node& node, const std::string& key) const {
    if (!node.IsScalar() || node.Scalar().empty())
      return error(node, key, "must be a non-empty string");
    return node.Scalar();
  }

  Result<std::uint64_t> positive(const YAML::Node& node, const std::string& key) const {
    std::uint64_t v = 0;
    if (node.IsScalar()) {
      const std::string& s = node.Scalar();
      auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
      if (ec == std::errc() && end == s.data() + s.size() && !s.empty() && v > 0) return v;
    }
    return error(node, key, "must be a positive integer");
  }

  Result<std::vector<std::string>> strings(const YAML::Node& node, const std::string& key) const {
    if (!node.IsSequence() || node.size() == 0)
      return error(node, key, "must be a non-empty list of strings");
    std::vector<std::string> out;
    for (std::size_t i = 0; i < node.size(); ++i) {
      ENVD_TRY(auto s, string(node[i], key + "[" + std::to_string(i) + "]"));
      out.push_back(std::move(s));
    }
    return out;
  }

  fs::path path(const std::string& text) const {
    fs::path p(text);
    return p.is_absolute() ? p : (m_base_dir / p).lexically_normal();
  }

  Error unknown(const YAML::Node& node, const std::string& key) const {
    return error(node, key, "unknown key");
  }

 private:
  std::string_view m_source;
  fs::path m_base_dir;
};

// A token file holds the token itself; only its hash is kept.
Result<std::string> hash_token_file(const fs::path& file, const std::string& token_name) {
  ENVD_TRY(std::string text, read_file(file));
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' '))
    text.pop_back();
  if (text.empty())
    return Error(ErrorCode::invalid_argument,
                 "token " + token_name + ": " + file.string() + " is empty");
  struct stat st {};
  if (::stat(file.c_str(), &st) == 0 && (st.st_mode & 077) != 0)
    log::warn("builder", "token file is readable by other users",
              {{"path", file.string()}, {"token", token_name}});
  return token_hash(text);
}

Result<TokenGrant> read_token(const Reader& r, const YAML::Node& node, const std::string& path) {
  TokenGrant t;
  std::optional<fs::path> token_file;
  bool has_namespaces = false;
  ENVD_TRY_VOID(r.each_entry(
      node, path,
      [&](const std::string& key, const std::string& full, const YAML::Node& v) -> Result<void> {
        if (key == "name") {
          ENVD_TRY(t.name, r.string(v, full));
        } else if (key == "sha256") {
          ENVD_TRY(t.sha256_hex, r.string(v, full));
          bool hex = t.sha256_hex.size() == 64 &&
                     t.sha256_hex.find_first_not_of("0123456789abcdef") == std::string::npos;
          if (!hex)
            return r.error(v, full, "must be 64 lowercase hex digits (sha256 of the token)");
        } else if (key == "token_file") {
          ENVD_TRY(auto s, r.string(v, full));
          token_file = r.path(s);
        } else if (key == "namespaces") {
          ENVD_TRY(t.namespaces, r.strings(v, full));
          for (auto& ns : t.namespaces) {
            std::string trimmed = ns;
            while (trimmed.ends_with('/')) trimmed.pop_back();
            if (ns != "*" && !is_valid_repository(trimmed))
              return r.error(v, full, "\"" + ns + "\" is neither \"*\" nor a repository prefix");
          }
          has_namespaces = true;
        } else if (key == "access") {
          ENVD_TRY(auto s, r.string(v, full));
          if (s != "pull" && s != "push") return r.error(v, full, "must be pull or push");
          t.access = s == "push" ? Access::push : Access::pull;
        } else {
          return r.unknown(v, full);
        }
        return {};
      }));
  if (t.name.empty()) return r.error(node, path + ".name", "missing");
  if (!has_namespaces) return r.error(node, path + ".namespaces", "missing");
  if (t.sha256_hex.empty() == !token_file.has_value())
    return r.error(node, path, "needs exactly one of sha256 and token_file");
  if (token_file) {
    auto hash = hash_token_file(*token_file, t.name);
    if (!hash) return hash.error().with_context(path + ".token_file");
    t.sha256_hex = std::move(*hash);
  }
  return t;
}

Result<void> read_limits(const Reader& r, const YAML::Node& node, Limits& limits) {
  return r.each_entry(
      node, "limits",
      [&](const std::string& key, const std::string& full, const YAML::Node& v) -> Result<void> {
        std::map<std::string, std::uint64_t*> sizes{
            {"blob_bytes", &limits.blob_bytes},
            {"manifest_bytes", &limits.manifest_bytes},
            {"snapshot_bytes", &limits.snapshot_bytes},
            {"batch_bytes", &limits.batch_bytes},
            {"upload_session_bytes", &limits.upload_session_bytes}};
        if (auto it = sizes.find(key); it != sizes.end()) {
          ENVD_TRY(*it->second, r.positive(v, full));
        } else if (key == "concurrent_builds") {
          ENVD_TRY(auto n, r.positive(v, full));
          if (n > 1024) return r.error(v, full, "must be at most 1024");
          limits.concurrent_builds = static_cast<unsigned>(n);
        } else {
          return r.unknown(v, full);
        }
        return {};
      });
}

Result<MirrorConfig> read_mirror(const Reader& r, const YAML::Node& node, const std::string& path) {
  MirrorConfig m;
  ENVD_TRY_VOID(r.each_entry(
      node, path,
      [&](const std::string& key, const std::string& full, const YAML::Node& v) -> Result<void> {
        if (key == "url") {
          ENVD_TRY(m.url, r.string(v, full));
          if (!m.url.starts_with("https://") && !m.url.starts_with("http://"))
            return r.error(v, full, "must be an http:// or https:// URL");
        } else if (key == "prefix") {
          ENVD_TRY(m.prefix, r.string(v, full));
          if (!is_valid_repository(m.prefix)) return r.error(v, full, "must be a repository path");
        } else if (key == "username") {
          ENVD_TRY(m.username, r.string(v, full));
        } else if (key == "token_file") {
          ENVD_TRY(auto s, r.string(v, full));
          m.token_file = r.path(s);
        } else {
          return r.unknown(v, full);
        }
        return {};
      }));
  if (m.url.empty()) return r.error(node, path + ".url", "missing");
  return m;
}

Result<BuilderConfig> read_config(const Reader& r, const YAML::Node& root) {
  BuilderConfig c;
  if (root.IsNull()) return c;  // an empty file: all defaults
  std::optional<YAML::Node> tokens_node;
  auto read = r.each_entry(
      root, "",
      [&](const std::string& key, const std::string& full, const YAML::Node& v) -> Result<void> {
        if (key == "listen") {
          ENVD_TRY(auto s, r.string(v, full));
          auto hp = parse_listen_address(s);
          if (!hp) return r.error(v, full, hp.error().message());
          std::tie(c.listen_host, c.listen_port) = *hp;
        } else if (key == "data_dir") {
          ENVD_TRY(auto s, r.string(v, full));
          c.data_dir = r.path(s);
        } else if (key == "tokens") {
          if (!v.IsSequence()) return r.error(v, full, "must be a list");
          for (std::size_t i = 0; i < v.size(); ++i) {
            ENVD_TRY(auto t, read_token(r, v[i], full + "[" + std::to_string(i) + "]"));
            for (const auto& other : c.auth.tokens)
              if (other.name == t.name)
                return r.error(v[i], full, "duplicate token name " + t.name);
            c.auth.tokens.push_back(std::move(t));
          }
        } else if (key == "tls") {
          TlsConfig tls;
          ENVD_TRY_VOID(r.each_entry(
              v, full,
              [&](const std::string& k, const std::string& f, const YAML::Node& x) -> Result<void> {
                if (k != "cert" && k != "key") return r.unknown(x, f);
                ENVD_TRY(auto s, r.string(x, f));
                (k == "cert" ? tls.cert : tls.key) = r.path(s);
                return {};
              }));
          if (tls.cert.empty() || tls.key.empty())
            return r.error(v, full, "needs both cert and key");
          c.tls = std::move(tls);
        } else if (key == "limits") {
          ENVD_TRY_VOID(read_limits(r, v, c.limits));
        } else if (key == "compression") {
          ENVD_TRY(auto s, r.string(v, full));
          if (s != "zstd" && s != "gzip") return r.error(v, full, "must be zstd or gzip");
          c.compression = s == "zstd" ? Compression::zstd : Compression::gzip;
        } else if (key == "layer_cap") {
          ENVD_TRY(auto n, r.positive(v, full));
          if (n < 2 || n > 1000) return r.error(v, full, "must be between 2 and 1000");
          c.layer_cap = static_cast<std::size_t>(n);
        } else if (key == "mirrors") {
          if (!v.IsSequence()) return r.error(v, full, "must be a list");
          for (std::size_t i = 0; i < v.size(); ++i) {
            ENVD_TRY(auto m, read_mirror(r, v[i], full + "[" + std::to_string(i) + "]"));
            c.mirrors.push_back(std::move(m));
          }
        } else {
          return r.unknown(v, full);
        }
        return {};
      });
  if (!read) return read.error();
  return c;
}

}  // namespace

Result<BuilderConfig> parse_builder_config(std::string_view yaml, std::string_view source,
                                           const std::filesystem::path& base_dir) {
  Reader reader(source, base_dir);
  try {
    YAML::Node root = YAML::Load(std::string(yaml));
    return read_config(reader, root);
  } catch (const YAML::Exception& e) {
    std::string where(source);
    if (e.mark.line >= 0) where += ":" + std::to_string(e.mark.line + 1);
    return Error(ErrorCode::invalid_argument, where + ": " + e.msg);
  }
}

Result<BuilderConfig> load_builder_config(const std::filesystem::path& file) {
  auto text = read_file(file);
  if (!text) return text.error().with_context("read builder config");
  return parse_builder_config(*text, file.string(), file.parent_path());
}

}  // namespace envd::builder
