// Reads the node config YAML through yaml-cpp (whose exceptions stop here) into NodeConfig,
// checking every key and value and naming the line and dotted key of the first problem.
#include "envd/node/node_config.hpp"

#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <functional>
#include <map>
#include <set>

#include "envd/util/atomic_file.hpp"
#include "envd/util/listen_address.hpp"
#include "envd/util/log.hpp"

namespace envd::node {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

constexpr unsigned k_max_replicas = 1000;

// Walks the YAML tree; every error names the source, line and dotted key.
class Reader {
 public:
  Reader(std::string_view source, fs::path base_dir)
      : m_source(source), m_base_dir(std::move(base_dir)) {}

  // "SOURCE:LINE: KEY", what every message about `node` starts with.
  std::string where(const YAML::Node& node, const std::string& key) const {
    std::string out(m_source);
    if (node.Mark().line >= 0) out += ":" + std::to_string(node.Mark().line + 1);
    return out + ": " + key;
  }

  Error error(const YAML::Node& node, const std::string& key, std::string_view msg) const {
    return Error(ErrorCode::invalid_argument, where(node, key) + ": " + std::string(msg));
  }

  using Field =
      std::function<Result<void>(const std::string&, const std::string&, const YAML::Node&)>;

  // Calls `field(key, dotted_key, value)` for each entry of a mapping; the callback rejects
  // unknown keys. Duplicate keys are errors (yaml-cpp would keep both).
  Result<void> each_entry(const YAML::Node& node, const std::string& path,
                          const Field& field) const {
    if (!node.IsMap()) return error(node, path.empty() ? "(top level)" : path, "must be a mapping");
    std::set<std::string> seen;
    for (auto it = node.begin(); it != node.end(); ++it) {
      if (!it->first.IsScalar()) return error(it->first, path, "keys must be strings");
      std::string key = it->first.Scalar();
      std::string full = path.empty() ? key : path + "." + key;
      if (!seen.insert(key).second) return error(it->first, full, "duplicate key");
      ENVD_TRY_VOID(field(key, full, it->second));
    }
    return {};
  }

  Result<std::string> string(const YAML::Node& node, const std::string& key) const {
    if (!node.IsScalar() || node.Scalar().empty())
      return error(node, key, "must be a non-empty string");
    return node.Scalar();
  }

  // A scalar's text, which may be empty (environment values).
  Result<std::string> text(const YAML::Node& node, const std::string& key) const {
    if (node.IsNull()) return std::string();
    if (!node.IsScalar()) return error(node, key, "must be a string");
    return node.Scalar();
  }

  Result<std::uint64_t> integer(const YAML::Node& node, const std::string& key, std::uint64_t min,
                                std::uint64_t max) const {
    std::uint64_t v = 0;
    if (node.IsScalar()) {
      const std::string& s = node.Scalar();
      auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
      if (ec == std::errc() && end == s.data() + s.size() && !s.empty() && v >= min && v <= max)
        return v;
    }
    return error(node, key,
                 "must be an integer from " + std::to_string(min) + " to " + std::to_string(max));
  }

  Result<milliseconds> duration(const YAML::Node& node, const std::string& key) const {
    if (!node.IsScalar()) return error(node, key, "must be a duration (e.g. 30s, 500ms, 2m)");
    auto d = parse_duration(node.Scalar());
    if (!d) return error(node, key, d.error().message());
    return *d;
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

bool is_worker_name(std::string_view name) {
  if (name.empty() || name.size() > 63) return false;
  auto alnum = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
  };
  if (!alnum(name.front())) return false;
  return std::all_of(name.begin(), name.end(),
                     [&](char c) { return alnum(c) || c == '-' || c == '_' || c == '.'; });
}

bool is_env_name(std::string_view name) {
  if (name.empty() || (name.front() >= '0' && name.front() <= '9')) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  });
}

// A token file holds the token itself (trailing newline ignored).
Result<std::string> read_token_file(const fs::path& file) {
  ENVD_TRY(std::string text, read_file(file));
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' '))
    text.pop_back();
  if (text.empty()) return Error(ErrorCode::invalid_argument, file.string() + " is empty");
  struct stat st {};
  if (::stat(file.c_str(), &st) == 0 && (st.st_mode & 077) != 0)
    log::warn("node", "token file is readable by other users", {{"path", file.string()}});
  return text;
}

Result<RegistryConfig> read_registry(const Reader& r, const YAML::Node& node,
                                     const std::string& path) {
  RegistryConfig c;
  ENVD_TRY_VOID(r.each_entry(
      node, path,
      [&](const std::string& key, const std::string& full, const YAML::Node& v) -> Result<void> {
        if (key == "url") {
          ENVD_TRY(c.url, r.string(v, full));
          std::string_view rest = c.url;
          if (rest.starts_with("https://")) {
            c.scheme = registry::Scheme::https;
            rest.remove_prefix(8);
          } else if (rest.starts_with("http://")) {
            c.scheme = registry::Scheme::http;
            rest.remove_prefix(7);
          } else {
            return r.error(v, full, "must be an http:// or https:// URL");
          }
          while (rest.ends_with('/')) rest.remove_suffix(1);
          if (rest.empty() || rest.find('/') != std::string_view::npos)
            return r.error(v, full, "must be a registry's base URL: scheme://HOST[:PORT]");
          if (auto hp = registry::split_host_port(rest, 0); !hp)
            return r.error(v, full, hp.error().message());
          c.host = std::string(rest);
        } else if (key == "username") {
          ENVD_TRY(c.username, r.string(v, full));
        } else if (key == "token_file") {
          ENVD_TRY(auto s, r.string(v, full));
          c.token_file = r.path(s);
          c.token_file_key = r.where(v, full);
        } else if (key == "ca_file") {
          ENVD_TRY(auto s, r.string(v, full));
          c.ca_file = r.path(s);
        } else if (key == "watch") {
          ENVD_TRY(auto s, r.string(v, full));
          if (s == "auto")
            c.watch = TagWatch::automatic;
          else if (s == "envd")
            c.watch = TagWatch::envd;
          else if (s == "poll")
            c.watch = TagWatch::poll;
          else
            return r.error(v, full, "must be auto, envd or poll");
        } else {
          return r.unknown(v, full);
        }
        return {};
      }));
  if (c.url.empty()) return r.error(node, path + ".url", "missing");
  if (!c.username.empty() && c.token_file.empty())
    return r.error(node, path + ".username", "needs token_file (the password or token)");
  return c;
}

Result<Readiness> read_readiness(const Reader& r, const YAML::Node& node, const std::string& path) {
  Readiness ready;
  ENVD_TRY_VOID(r.each_entry(
      node, path,
      [&](const std::string& key, const std::string& full, const YAML::Node& v) -> Result<void> {
        if (key == "after") {
          ENVD_TRY(ready.after, r.duration(v, full));
        } else if (key == "command") {
          ENVD_TRY(ready.command, r.strings(v, full));
        } else if (key == "interval") {
          ENVD_TRY(ready.interval, r.duration(v, full));
          if (ready.interval.count() == 0) return r.error(v, full, "must be more than 0");
        } else if (key == "timeout") {
          ENVD_TRY(ready.timeout, r.duration(v, full));
        } else {
          return r.unknown(v, full);
        }
        return {};
      }));
  if (ready.timeout <= ready.after)
    return r.error(node, path + ".timeout", "must be longer than readiness.after");
  return ready;
}

Result<WorkerConfig> read_worker(const Reader& r, const YAML::Node& node, const std::string& path) {
  WorkerConfig w;
  bool has_name = false, has_image = false, has_command = false;
  ENVD_TRY_VOID(r.each_entry(
      node, path,
      [&](const std::string& key, const std::string& full, const YAML::Node& v) -> Result<void> {
        if (key == "name") {
          ENVD_TRY(w.spec.name, r.string(v, full));
          if (!is_worker_name(w.spec.name))
            return r.error(v, full,
                           "must be 1-63 letters, digits, '-', '_' or '.', starting with a letter "
                           "or digit");
          has_name = true;
        } else if (key == "image") {
          ENVD_TRY(w.image, r.string(v, full));
          auto ref = registry::parse_reference(w.image);
          if (!ref) return r.error(v, full, ref.error().message());
          w.image = ref->str();
          has_image = true;
        } else if (key == "command") {
          ENVD_TRY(w.command, r.strings(v, full));
          has_command = true;
        } else if (key == "replicas") {
          ENVD_TRY(auto n, r.integer(v, full, 0, k_max_replicas));
          w.spec.replicas = static_cast<unsigned>(n);
        } else if (key == "restart") {
          ENVD_TRY(auto s, r.string(v, full));
          auto policy = parse_restart_policy(s);
          if (!policy) return r.error(v, full, "must be always, on-failure or never");
          w.spec.restart = *policy;
        } else if (key == "environment") {
          std::map<std::string, std::string> env;
          auto read_env = r.each_entry(
              v, full,
              [&](const std::string& name, const std::string& f,
                  const YAML::Node& value) -> Result<void> {
                if (!is_env_name(name))
                  return r.error(value, f, "not a variable name ([A-Za-z_][A-Za-z0-9_]*)");
                ENVD_TRY(env[name], r.text(value, f));
                return {};
              });
          if (!read_env) return read_env.error();
          for (auto& [name, value] : env) w.environment.push_back(name + "=" + value);
        } else if (key == "stop_grace_period") {
          ENVD_TRY(w.spec.stop_grace, r.duration(v, full));
        } else if (key == "readiness") {
          ENVD_TRY(w.spec.readiness, read_readiness(r, v, full));
        } else {
          return r.unknown(v, full);
        }
        return {};
      }));
  if (!has_name) return r.error(node, path + ".name", "missing");
  if (!has_image) return r.error(node, path + ".image", "missing");
  if (!has_command) return r.error(node, path + ".command", "missing");
  return w;
}

Result<NodeConfig> read_config(const Reader& r, const YAML::Node& root) {
  NodeConfig c;
  if (root.IsNull()) return c;  // an empty file: all defaults, no workers
  ENVD_TRY_VOID(r.each_entry(
      root, "",
      [&](const std::string& key, const std::string& full, const YAML::Node& v) -> Result<void> {
        if (key == "data_dir") {
          ENVD_TRY(auto s, r.string(v, full));
          c.data_dir = r.path(s);
        } else if (key == "registries") {
          if (!v.IsSequence()) return r.error(v, full, "must be a list");
          for (std::size_t i = 0; i < v.size(); ++i) {
            std::string item = full + "[" + std::to_string(i) + "]";
            ENVD_TRY(auto reg, read_registry(r, v[i], item));
            for (const auto& other : c.registries)
              if (other.host == reg.host)
                return r.error(v[i], item + ".url", "a second entry for host " + reg.host);
            c.registries.push_back(std::move(reg));
          }
        } else if (key == "cache_quota") {
          if (!v.IsScalar()) return r.error(v, full, "must be a size (e.g. 50GB, 20GiB)");
          auto size = parse_size(v.Scalar());
          if (!size) return r.error(v, full, size.error().message());
          c.cache_quota = *size;
        } else if (key == "cache_grace") {
          ENVD_TRY(auto d, r.duration(v, full));
          c.cache_grace = std::chrono::duration_cast<std::chrono::seconds>(d);
        } else if (key == "gc_interval") {
          ENVD_TRY(c.gc_interval, r.duration(v, full));
          if (c.gc_interval < std::chrono::seconds(1))
            return r.error(v, full, "must be at least 1s");
        } else if (key == "isolation") {
          ENVD_TRY(auto s, r.string(v, full));
          if (s == "auto")
            c.isolation = Isolation::automatic;
          else if (s == "bwrap")
            c.isolation = Isolation::bwrap;
          else if (s == "none")
            c.isolation = Isolation::none;
          else
            return r.error(v, full, "must be auto, bwrap or none");
        } else if (key == "assembly") {
          ENVD_TRY(auto s, r.string(v, full));
          auto a = parse_assembly(s);
          if (!a) return r.error(v, full, "must be auto or hardlink");
          c.assembly = *a;
        } else if (key == "listen") {
          ENVD_TRY(auto s, r.string(v, full));
          auto hp = parse_listen_address(s);
          if (!hp) return r.error(v, full, hp.error().message());
          std::tie(c.listen_host, c.listen_port) = *hp;
        } else if (key == "poll_interval") {
          ENVD_TRY(c.poll_interval, r.duration(v, full));
          if (c.poll_interval < milliseconds(100))
            return r.error(v, full, "must be at least 100ms");
        } else if (key == "parallel_downloads") {
          ENVD_TRY(auto n, r.integer(v, full, 1, 64));
          c.parallel_downloads = static_cast<unsigned>(n);
        } else if (key == "workers") {
          if (!v.IsSequence()) return r.error(v, full, "must be a list");
          for (std::size_t i = 0; i < v.size(); ++i) {
            std::string item = full + "[" + std::to_string(i) + "]";
            ENVD_TRY(auto w, read_worker(r, v[i], item));
            for (const auto& other : c.workers)
              if (other.spec.name == w.spec.name)
                return r.error(v[i], item + ".name", "a second worker named " + w.spec.name);
            c.workers.push_back(std::move(w));
          }
        } else {
          return r.unknown(v, full);
        }
        return {};
      }));
  return c;
}

}  // namespace

Result<milliseconds> parse_duration(std::string_view text) {
  auto bad = [&] {
    return Error(ErrorCode::invalid_argument,
                 "\"" + std::string(text) + "\" is not a duration (e.g. 30s, 500ms, 2m, 1h)");
  };
  std::uint64_t n = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc() || end == text.data()) return bad();
  std::string_view unit(end, static_cast<std::size_t>(text.data() + text.size() - end));
  std::uint64_t scale = 0;
  if (unit.empty() || unit == "s")
    scale = 1000;
  else if (unit == "ms")
    scale = 1;
  else if (unit == "m")
    scale = 60'000;
  else if (unit == "h")
    scale = 3'600'000;
  else
    return bad();
  constexpr std::uint64_t k_limit = 10ull * 365 * 24 * 3'600'000;  // ten years
  if (n > k_limit / scale) return bad();
  return milliseconds(static_cast<std::int64_t>(n * scale));
}

Result<std::uint64_t> parse_size(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return Error(ErrorCode::invalid_argument,
                 "\"" + std::string(text) + "\" is not a size: " + std::string(why));
  };
  std::uint64_t n = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec == std::errc::result_out_of_range) return bad("too large");
  if (ec != std::errc() || end == text.data())
    return bad("expected bytes or a number with a unit (kB MB GB TB KiB MiB GiB TiB)");
  std::string_view unit(end, static_cast<std::size_t>(text.data() + text.size() - end));
  while (unit.starts_with(' ')) unit.remove_prefix(1);
  static const std::map<std::string_view, std::uint64_t> k_units{{"", 1},
                                                                 {"B", 1},
                                                                 {"kB", 1000},
                                                                 {"KB", 1000},
                                                                 {"MB", 1000'000},
                                                                 {"GB", 1000'000'000},
                                                                 {"TB", 1000'000'000'000},
                                                                 {"KiB", 1ull << 10},
                                                                 {"MiB", 1ull << 20},
                                                                 {"GiB", 1ull << 30},
                                                                 {"TiB", 1ull << 40}};
  auto it = k_units.find(unit);
  if (it == k_units.end())
    return bad("unknown unit \"" + std::string(unit) + "\" (kB MB GB TB KiB MiB GiB TiB)");
  if (n > UINT64_MAX / it->second) return bad("too large");
  return n * it->second;
}

Result<NodeConfig> parse_node_config(std::string_view yaml, std::string_view source,
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

Result<void> read_tokens(NodeConfig& config) {
  for (auto& reg : config.registries) {
    if (reg.token_file.empty()) continue;
    auto token = read_token_file(reg.token_file);
    if (!token) return token.error().with_context(reg.token_file_key);
    reg.token = std::move(*token);
  }
  return {};
}

Result<NodeConfig> load_node_config(const std::filesystem::path& file) {
  auto text = read_file(file);
  if (!text) return text.error().with_context("read node config");
  ENVD_TRY(auto config, parse_node_config(*text, file.string(), file.parent_path()));
  ENVD_TRY_VOID(read_tokens(config));
  return config;
}

}  // namespace envd::node
