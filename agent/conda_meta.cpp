// Reads a conda prefix's conda-meta/*.json records (conda, mamba, micromamba, pixi/rattler) into
// PackageRecords: identity, channel and subdir, requested flag, owned paths, expected digests.
#include "agent/conda_meta.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <optional>
#include <set>
#include <string_view>
#include <system_error>
#include <unordered_map>

#include "envd/util/atomic_file.hpp"
#include "envd/util/json_detail.hpp"

namespace envd::agent {
namespace {

// `Json`, not `json`: envd::json (the parse/dump wrappers) is a namespace in scope here.
using Json = nlohmann::json;
namespace fs = std::filesystem;

// conda's platform subdirs (conda/base/constants.py KNOWN_SUBDIRS): a channel URL ending in one of
// these names a subdir, not the channel.
constexpr std::array<std::string_view, 19> k_known_subdirs = {
    "noarch",        "linux-32",      "linux-64",
    "linux-aarch64", "linux-armv6l",  "linux-armv7l",
    "linux-ppc64",   "linux-ppc64le", "linux-riscv64",
    "linux-s390x",   "osx-64",        "osx-arm64",
    "win-32",        "win-64",        "win-arm64",
    "zos-z",         "freebsd-64",    "emscripten-wasm32",
    "wasi-wasm32",
};

bool is_known_subdir(std::string_view s) {
  return std::find(k_known_subdirs.begin(), k_known_subdirs.end(), s) != k_known_subdirs.end();
}

// Where the path part of a URL starts ("https://host/a" -> 12); 0 for a bare channel name.
std::size_t path_start(std::string_view url) {
  auto scheme = url.find("://");
  if (scheme == std::string_view::npos) return 0;
  auto slash = url.find('/', scheme + 3);
  return slash == std::string_view::npos ? url.size() : slash;
}

// Channel URLs may carry credentials: "user:password@" in the authority, and anaconda.org-style
// tokens as a "/t/<token>" path segment. Both are replaced by "***" before anything is stored,
// because snapshots are uploaded and end up in image metadata.
std::string redact_channel(std::string_view url) {
  std::string out(url);
  auto scheme = out.find("://");
  if (scheme != std::string::npos) {
    auto authority_end = path_start(out);
    auto at = out.rfind('@', authority_end == 0 ? std::string::npos : authority_end - 1);
    if (at != std::string::npos && at > scheme + 3 && at < authority_end)
      out.replace(scheme + 3, at - (scheme + 3), "***");
  }
  for (auto pos = out.find("/t/", path_start(out)); pos != std::string::npos;
       pos = out.find("/t/", pos + 1)) {
    auto begin = pos + 3;
    auto end = out.find('/', begin);
    if (end == std::string::npos) end = out.size();
    if (end > begin) out.replace(begin, end - begin, "***");
  }
  return out;
}

struct Channel {
  std::string channel;
  std::string subdir;
};

// conda writes the channel with the subdir ("https://conda.anaconda.org/conda-forge/osx-arm64"),
// rattler without it and with a trailing slash ("https://conda.anaconda.org/conda-forge/"); both
// become "https://conda.anaconda.org/conda-forge". Redaction runs after the subdir is cut so a
// channel named "t" cannot make the subdir look like a token.
Channel split_channel(std::string_view raw, std::string_view record_subdir) {
  Channel out;
  std::string_view ch = raw;
  auto start = path_start(ch);
  while (ch.size() > start && ch.back() == '/') ch.remove_suffix(1);
  auto slash = ch.rfind('/');
  if (slash != std::string_view::npos && slash >= start && (start > 0 || slash > 0)) {
    auto last = ch.substr(slash + 1);
    if ((!record_subdir.empty() && last == record_subdir) || is_known_subdir(last)) {
      out.subdir = std::string(last);
      ch = ch.substr(0, slash);
    }
  }
  out.channel = redact_channel(ch);
  if (!record_subdir.empty()) out.subdir = std::string(record_subdir);
  return out;
}

// "https://host/chan/linux-64/pkg-1-0.conda" -> "linux-64"; empty when the URL does not say.
std::string subdir_from_url(std::string_view url) {
  auto file = url.rfind('/');
  if (file == std::string_view::npos || file == 0) return {};
  auto dir = url.substr(0, file);
  auto last = dir.substr(dir.rfind('/') + 1);
  return is_known_subdir(last) ? std::string(last) : std::string();
}

// A string field: absent or null gives "", any other non-string is a broken record.
Result<std::string> string_field(const Json& record, const char* key) {
  auto it = record.find(key);
  if (it == record.end() || it->is_null()) return std::string();
  if (!it->is_string())
    return Error(ErrorCode::invalid_argument, std::string("\"") + key + "\" is not a string");
  return it->get<std::string>();
}

// conda writes requested_spec = "None" (Python's str(None)) for dependencies; micromamba may write
// ""; newer conda writes a requested_specs list.
bool is_requested(const Json& record) {
  if (auto it = record.find("requested_spec"); it != record.end() && it->is_string()) {
    const auto& spec = it->get_ref<const std::string&>();
    if (!spec.empty() && spec != "None") return true;
  }
  if (auto it = record.find("requested_specs"); it != record.end() && it->is_array()) {
    for (const auto& spec : *it)
      if (spec.is_string() && !spec.get_ref<const std::string&>().empty()) return true;
  }
  return false;
}

// index.json says "noarch": "python"; link.json's object form {"type": "python"} is accepted too in
// case a writer copied that instead.
bool is_noarch_python(const Json& record) {
  auto it = record.find("noarch");
  if (it == record.end()) return false;
  if (it->is_string()) return it->get_ref<const std::string&>() == "python";
  if (it->is_object()) {
    auto type = it->find("type");
    return type != it->end() && type->is_string() &&
           type->get_ref<const std::string&>() == "python";
  }
  return false;
}

// Normalises a record path to "a/b/c"; nullopt for paths that could escape the prefix.
std::optional<std::string> normalise_path(std::string_view path) {
  if (path.empty() || path.front() == '/' || path.find('\0') != std::string_view::npos)
    return std::nullopt;
  std::string out;
  std::size_t start = 0;
  while (start <= path.size()) {
    auto end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    auto part = path.substr(start, end - start);
    start = end + 1;
    if (part.empty() || part == ".") continue;
    if (part == "..") return std::nullopt;
    if (!out.empty()) out += '/';
    out += part;
  }
  if (!snapshot::is_safe_relative_path(out)) return std::nullopt;
  return out;
}

enum class DigestProblem { none, malformed };

// The digest a file must have in the prefix (conda/models/records.py PathDataV1): only
// hardlinked/copied files have content of their own; softlinks, directories, generated entry
// points and pyc files have no recorded digest worth checking. A file with a
// prefix_placeholder is rewritten at install time, so the package's `sha256` is of the wrong
// bytes; only `sha256_in_prefix` (computed after the rewrite) is trustworthy for it.
std::optional<oci::Digest> expected_digest(const Json& entry, DigestProblem& problem) {
  problem = DigestProblem::none;
  auto type = entry.find("path_type");
  if (type != entry.end() && !(type->is_string() && *type == "hardlink")) return std::nullopt;
  const Json* value = nullptr;
  if (auto it = entry.find("sha256_in_prefix"); it != entry.end() && it->is_string()) {
    value = &*it;
  } else if (!entry.contains("prefix_placeholder")) {
    if (auto it2 = entry.find("sha256"); it2 != entry.end() && it2->is_string()) value = &*it2;
  }
  if (value == nullptr) return std::nullopt;
  std::string hex = value->get<std::string>();
  std::transform(hex.begin(), hex.end(), hex.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  auto digest = oci::Digest::parse("sha256:" + hex);
  if (!digest) {
    problem = DigestProblem::malformed;
    return std::nullopt;
  }
  return *digest;
}

// Maps a paths_data path to the prefix-relative path. conda records noarch: python paths as the
// package stores them ("site-packages/pip/__init__.py", "python-scripts/pip") while `files` has
// where they were linked ("lib/python3.13t/site-packages/pip/__init__.py", "bin/pip"), see
// conda/core/path_actions.py LinkPathAction and conda/common/path.py get_python_noarch_target_path.
class NoarchMapper {
 public:
  explicit NoarchMapper(const std::set<std::string>& files) {
    for (const auto& f : files) {
      auto pos = f.find("/site-packages/");
      if (pos == std::string::npos) continue;
      m_by_suffix.emplace(f.substr(pos + 1), f);
      if (m_site_packages.empty()) m_site_packages = f.substr(0, pos + 1);
    }
  }

  // nullopt when a site-packages path cannot be placed (no `files` entry tells where it went).
  std::optional<std::string> map(const std::string& path) const {
    constexpr std::string_view sp = "site-packages/";
    constexpr std::string_view scripts = "python-scripts/";
    if (path.starts_with(sp)) {
      if (auto it = m_by_suffix.find(path); it != m_by_suffix.end()) return it->second;
      if (m_site_packages.empty()) return std::nullopt;
      return m_site_packages + path;
    }
    if (path.starts_with(scripts)) return "bin/" + path.substr(scripts.size());
    return path;
  }

 private:
  std::unordered_map<std::string, std::string> m_by_suffix;
  std::string m_site_packages;  // "lib/python3.13t/", the directory holding site-packages
};

// Collects per-record path problems so a record produces one warning, not one per path.
struct PathProblems {
  std::size_t unsafe = 0;
  std::string first_unsafe;
  std::size_t unmapped = 0;
  std::string first_unmapped;
  std::size_t bad_digests = 0;
  std::size_t non_strings = 0;

  void add_unsafe(std::string_view p) {
    if (unsafe++ == 0) first_unsafe = std::string(p);
  }
  std::string describe() const {
    std::string out;
    auto add = [&out](const std::string& s) { out += (out.empty() ? "" : "; ") + s; };
    if (unsafe > 0)
      add("dropped " + std::to_string(unsafe) + " unsafe path(s) (absolute or with ..), e.g. \"" +
          first_unsafe + "\"");
    if (unmapped > 0)
      add("dropped " + std::to_string(unmapped) +
          " noarch path(s) with no matching `files` entry, e.g. \"" + first_unmapped + "\"");
    if (bad_digests > 0)
      add("ignored " + std::to_string(bad_digests) + " malformed sha256 value(s)");
    if (non_strings > 0) add("ignored " + std::to_string(non_strings) + " malformed path entries");
    return out;
  }
};

// One record. Errors (invalid_argument) describe why the whole record is unusable.
Result<PackageRecord> parse_record(const Json& record, const std::string& record_path,
                                   PathProblems& problems) {
  if (!record.is_object())
    return Error(ErrorCode::invalid_argument, "top level is not a JSON object");
  PackageRecord out;
  out.record_path = record_path;
  auto& meta = out.meta;
  meta.manager = snapshot::PackageManager::conda;
  meta.installer = "conda";
  ENVD_TRY(meta.name, string_field(record, "name"));
  ENVD_TRY(meta.version, string_field(record, "version"));
  if (meta.name.empty()) return Error(ErrorCode::invalid_argument, "missing \"name\"");
  if (meta.version.empty()) return Error(ErrorCode::invalid_argument, "missing \"version\"");
  ENVD_TRY(meta.build, string_field(record, "build"));
  ENVD_TRY(auto subdir, string_field(record, "subdir"));
  ENVD_TRY(auto channel, string_field(record, "channel"));
  ENVD_TRY(auto url, string_field(record, "url"));
  if (channel.empty()) {
    // Records without "channel" still have the package URL: its directory is channel/subdir.
    auto file = url.rfind('/');
    if (file != std::string::npos) channel = url.substr(0, file);
  }
  if (channel.empty()) {
    ENVD_TRY(channel, string_field(record, "schannel"));
  }
  auto split = split_channel(channel, subdir);
  meta.channel = std::move(split.channel);
  meta.subdir = split.subdir.empty() ? subdir_from_url(url) : std::move(split.subdir);
  meta.requested = is_requested(record);

  // `files` is always prefix-relative and lists everything conda linked, so it is the owned set;
  // paths_data adds digests and, when `files` is missing, the paths themselves.
  std::set<std::string> raw_files;
  if (auto it = record.find("files"); it != record.end() && !it->is_null()) {
    if (!it->is_array()) return Error(ErrorCode::invalid_argument, "\"files\" is not a list");
    for (const auto& f : *it) {
      if (f.is_string())
        raw_files.insert(f.get<std::string>());
      else
        ++problems.non_strings;
    }
  }
  std::set<std::string> owned;
  for (const auto& f : raw_files) {
    if (auto p = normalise_path(f))
      owned.insert(*p);
    else
      problems.add_unsafe(f);
  }

  const Json* entries = nullptr;
  if (auto pd = record.find("paths_data"); pd != record.end() && pd->is_object()) {
    if (auto paths = pd->find("paths"); paths != pd->end() && paths->is_array()) entries = &*paths;
  }
  if (entries != nullptr) {
    const bool noarch_python = is_noarch_python(record);
    NoarchMapper mapper(raw_files);
    for (const auto& entry : *entries) {
      std::string raw;
      if (entry.is_object()) {
        auto p = entry.find("_path");
        if (p == entry.end()) p = entry.find("path");
        if (p != entry.end() && p->is_string()) raw = p->get<std::string>();
      }
      if (raw.empty()) {
        ++problems.non_strings;
        continue;
      }
      if (noarch_python && !raw_files.contains(raw)) {
        auto mapped = mapper.map(raw);
        if (!mapped) {
          if (problems.unmapped++ == 0) problems.first_unmapped = raw;
          continue;
        }
        raw = std::move(*mapped);
      }
      auto path = normalise_path(raw);
      if (!path) {
        if (!raw_files.contains(raw)) problems.add_unsafe(raw);  // else counted already
        continue;
      }
      owned.insert(*path);
      DigestProblem problem;
      if (auto digest = expected_digest(entry, problem))
        out.expected.insert_or_assign(*path, std::move(*digest));
      else if (problem == DigestProblem::malformed)
        ++problems.bad_digests;
    }
  }

  // The record belongs to its package: removing the package removes it.
  owned.insert(record_path);
  out.paths.assign(owned.begin(), owned.end());
  return out;
}

}  // namespace

Result<std::vector<PackageRecord>> read_conda_meta(const std::filesystem::path& prefix,
                                                   Diagnostics& diagnostics) {
  const fs::path meta_dir = prefix / "conda-meta";
  std::error_code ec;
  auto status = fs::status(meta_dir, ec);
  if (ec || !fs::is_directory(status)) {
    if (ec && ec != std::errc::no_such_file_or_directory && ec != std::errc::not_a_directory)
      return Error(ErrorCode::io, "stat " + meta_dir.string() + ": " + ec.message());
    return Error(ErrorCode::not_found, meta_dir.string() + ": no conda-meta directory");
  }

  // Listed first and sorted so records are read, and warnings emitted, in a stable order.
  std::vector<fs::path> candidates;
  fs::directory_iterator it(meta_dir, ec);
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
    // history, pinned, frozen, state and other files are not package records.
    if (it->path().extension() == ".json") candidates.push_back(it->path());
  }
  if (ec) {
    auto code = ec == std::errc::permission_denied ? ErrorCode::permission_denied : ErrorCode::io;
    return Error(code, "list " + meta_dir.string() + ": " + ec.message());
  }
  std::sort(candidates.begin(), candidates.end());

  std::vector<PackageRecord> records;
  for (const auto& file : candidates) {
    const std::string record_path = "conda-meta/" + file.filename().string();
    auto skip = [&](const std::string& why) {
      diagnostics.warn(file.string(), record_path + ": " + why + "; package skipped");
    };
    // A FIFO or device named *.json would block or never end; only regular files are read.
    if (!fs::is_regular_file(fs::status(file, ec))) {
      skip("not a regular file");
      continue;
    }
    auto text = read_file(file);
    if (!text) {
      skip(text.error().message());
      continue;
    }
    auto parsed = envd::json::parse(*text, record_path);
    if (!parsed) {
      diagnostics.warn(file.string(), parsed.error().message() + "; package skipped");
      continue;
    }
    PathProblems problems;
    Result<PackageRecord> record = Error(ErrorCode::internal, "not parsed");
    try {
      record = parse_record(*parsed, record_path, problems);
    } catch (const nlohmann::json::exception& e) {
      // parse_record checks types before reading; this guards against a missed case.
      record = Error(ErrorCode::invalid_argument, e.what());
    }
    if (!record) {
      skip(record.error().message());
      continue;
    }
    if (auto text_problems = problems.describe(); !text_problems.empty())
      diagnostics.warn(file.string(), record_path + ": " + text_problems);
    records.push_back(std::move(*record));
  }

  std::stable_sort(records.begin(), records.end(),
                   [](const auto& a, const auto& b) { return a.meta.name < b.meta.name; });
  // Two records for one name means an interrupted or hand-edited transaction; both are kept (each
  // owns its files) but the user should know.
  for (std::size_t i = 1; i < records.size(); ++i) {
    if (records[i].meta.name == records[i - 1].meta.name)
      diagnostics.warn((prefix / records[i].record_path).string(),
                       records[i].record_path + ": package \"" + records[i].meta.name +
                           "\" also recorded in " + records[i - 1].record_path);
  }
  return records;
}

}  // namespace envd::agent
