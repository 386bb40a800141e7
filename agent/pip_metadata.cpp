// Reads the pip-installed distributions of one site-packages directory into PackageRecords:
// *.dist-info (PEP 376/627), *.egg-info, and editable installs (PEP 610 direct_url.json, PEP 660
// .pth files and setuptools finder modules, legacy .egg-link).
#include "agent/pip_metadata.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <set>
#include <string_view>
#include <system_error>

#include "envd/util/atomic_file.hpp"
#include "envd/util/json_detail.hpp"

namespace envd::agent {
namespace {

namespace fs = std::filesystem;
using Parts = std::vector<std::string>;

std::string trim(std::string_view s) {
  auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return {};
  return std::string(s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1));
}
char lower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}
std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = lower(c);
  return out;
}
// PEP 503 (https://peps.python.org/pep-0503/#normalized-names): lowercase, runs of -_. -> '-'.
std::string pep503(std::string_view name) {
  std::string out;
  for (char c : lower(name)) {
    if (c != '-' && c != '_' && c != '.')
      out += c;
    else if (out.empty() || out.back() != '-')
      out += '-';
  }
  return out;
}
// Lines without their '\r\n' / '\n'.
std::vector<std::string_view> lines(std::string_view text) {
  std::vector<std::string_view> out;
  for (std::size_t pos = 0; pos < text.size();) {
    auto eol = std::min(text.find('\n', pos), text.size());
    auto line = text.substr(pos, eol - pos);
    out.push_back(line.ends_with("\r") ? line.substr(0, line.size() - 1) : line);
    pos = eol + 1;
  }
  return out;
}

// PEP 376 metadata files are UTF-8; NUL or a broken sequence means the file is not what it claims.
bool valid_utf8_text(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : 3;
    if (c == 0 || (c >= 0x80 && (c < 0xC0 || c > 0xF7)) || s.size() - i <= n) return false;
    for (std::size_t k = 1; k <= n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += n + 1;
  }
  return true;
}

// Reads a regular file only: a FIFO named METADATA would block the scan.
Result<std::string> read_text(const fs::path& path) {
  std::error_code ec;
  auto status = fs::status(path, ec);
  if (ec) return unexpected(Error::from_errno("stat " + path.string(), ec.value()));
  if (!fs::is_regular_file(status))
    return unexpected(ErrorCode::invalid_argument, path.string() + ": not a regular file");
  return read_file(path);
}

bool is_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}
bool entry_exists(const fs::path& p) {
  std::error_code ec;
  return fs::exists(fs::symlink_status(p, ec));
}

// Resolves "", "." and ".." lexically onto `base`. nullopt when a relative path climbs above
// `base`'s start; for an absolute path ".." at "/" stays at "/" as POSIX does.
std::optional<Parts> resolve(Parts base, std::string_view rel, bool absolute) {
  for (std::size_t pos = 0; pos <= rel.size();) {
    auto slash = std::min(rel.find('/', pos), rel.size());
    auto part = rel.substr(pos, slash - pos);
    pos = slash + 1;
    if (part.empty() || part == ".") continue;
    if (part != "..")
      base.emplace_back(part);
    else if (!base.empty())
      base.pop_back();
    else if (!absolute)
      return std::nullopt;
  }
  return base;
}
std::string join(const Parts& parts, std::size_t from = 0) {
  std::string out;
  for (std::size_t i = from; i < parts.size(); ++i) (out.empty() ? out : out += '/') += parts[i];
  return out;
}
std::string absolute_normal(std::string_view path) {
  return "/" + join(*resolve({}, path, true));
}

struct NameVersion {
  std::string name, version;
};

// Core metadata is RFC 822 style; the headers end at the first blank line and the body after it
// may hold anything (https://packaging.python.org/en/latest/specifications/core-metadata/).
NameVersion parse_headers(std::string_view text) {
  NameVersion nv;
  for (auto line : lines(text)) {
    if (line.empty()) break;
    auto colon = line.find(':');
    if (line[0] == ' ' || line[0] == '\t' || colon == std::string_view::npos) continue;
    auto key = lower(trim(line.substr(0, colon)));
    if (key == "name" && nv.name.empty()) nv.name = trim(line.substr(colon + 1));
    if (key == "version" && nv.version.empty()) nv.version = trim(line.substr(colon + 1));
  }
  return nv;
}

// "foo-1.0" (dist-info; PEP 427 escaping keeps '-' out of both parts) or "Foo-1.0-py3.11"
// (egg-info): name before the first '-', version up to the next.
NameVersion from_stem(std::string_view stem) {
  auto dash = std::min(stem.find('-'), stem.size());
  auto rest = stem.substr(std::min(dash + 1, stem.size()));
  return {std::string(stem.substr(0, dash)), std::string(rest.substr(0, rest.find('-')))};
}

// PEP 376 RECORD (https://peps.python.org/pep-0376/#record) is CSV as Python's csv module writes
// it: ',' separated, '"' quoting with '""' for a quote, so a path may contain commas. An
// unterminated quote sets `bad_line` and drops that row, as csv would swallow the rest.
struct CsvRow {
  std::size_t line;
  std::vector<std::string> fields;
};
std::vector<CsvRow> parse_csv(std::string_view text, std::optional<std::size_t>& bad_line) {
  std::vector<CsvRow> rows;
  CsvRow row{1, {}};
  std::string field;
  bool quoted = false, started = false;
  std::size_t line = 1;
  for (std::size_t i = 0; i <= text.size(); ++i) {
    char c = i < text.size() ? text[i] : '\n';
    if (quoted && i == text.size()) {
      bad_line = row.line;
      break;
    }
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"')
        field += text[++i];
      else if (c == '"')
        quoted = false;
      else
        field += c;
      line += c == '\n' ? 1 : 0;
    } else if (c == '"' && field.empty()) {
      quoted = started = true;
    } else if (c == ',') {
      row.fields.push_back(std::exchange(field, {}));
      started = true;
    } else if (c == '\n') {
      if (started) row.fields.push_back(std::exchange(field, {}));
      if (!row.fields.empty()) rows.push_back(std::move(row));
      row = CsvRow{++line, {}};
      started = false;
    } else if (c != '\r') {
      field += c;
      started = true;
    }
  }
  return rows;
}

// A RECORD hash "sha256=<urlsafe base64, no padding>" as a Digest; nullopt for other algorithms
// or a malformed value.
std::optional<oci::Digest> parse_record_hash(std::string_view value) {
  constexpr std::string_view k_alphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  if (!value.starts_with("sha256=")) return std::nullopt;
  value.remove_prefix(7);
  while (value.ends_with("=")) value.remove_suffix(1);
  if (value.size() != 43) return std::nullopt;  // ceil(32 * 8 / 6)
  std::array<std::uint8_t, 32> bytes{};
  std::uint32_t acc = 0;
  std::size_t bits = 0, n = 0;
  for (char c : value) {
    auto v = k_alphabet.find(c);
    if (v == std::string_view::npos) return std::nullopt;
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    if ((bits += 6) >= 8 && n < bytes.size())
      bytes[n++] = static_cast<std::uint8_t>(acc >> (bits -= 8));
    acc &= (1u << bits) - 1;
  }
  return oci::Digest::from_bytes(bytes);
}

// "file:///a%20b" (or file://localhost/...) -> "/a b"; nullopt for other schemes, remote hosts.
std::optional<std::string> file_url_path(std::string_view url) {
  if (!url.starts_with("file://")) return std::nullopt;
  url.remove_prefix(url.starts_with("file://localhost/") ? 16 : 7);
  if (!url.starts_with("/")) return std::nullopt;
  url = url.substr(0, url.find_first_of("?#"));
  constexpr std::string_view k_hex = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < url.size(); ++i) {
    auto hi = i + 2 < url.size() ? k_hex.find(lower(url[i + 1])) : k_hex.npos;
    auto lo = i + 2 < url.size() ? k_hex.find(lower(url[i + 2])) : k_hex.npos;
    if (url[i] == '%' && hi != k_hex.npos && lo != k_hex.npos) {
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else {
      out += url[i];
    }
  }
  if (out.find('\0') != std::string::npos) return std::nullopt;
  return absolute_normal(out);
}

// Where conda-build, Anaconda's build root and pip's temporary build dirs put sources. A
// direct_url.json naming one of these was written on a build machine: it is not the user's source.
bool is_build_farm_path(std::string_view p) {
  return p.starts_with("/home/conda/feedstock_root/") || p.starts_with("/croot/") ||
         p.starts_with("/opt/conda/conda-bld/") || p.starts_with("/tmp/pip-") ||
         p.find("/conda-bld/") != std::string_view::npos ||
         p.find("/feedstock_root/") != std::string_view::npos;
}

struct DirectUrl {
  std::string url;
  bool editable = false;
};

// PEP 610 (https://peps.python.org/pep-0610/): url, plus dir_info.editable for `pip install -e`.
std::optional<DirectUrl> read_direct_url(const fs::path& file, Diagnostics& diag) {
  auto text = read_text(file);
  if (!text && text.error().code() != ErrorCode::not_found)
    diag.warn(file.string(), text.error().message());
  if (!text) return std::nullopt;
  auto doc = json::parse(*text, file.string());
  if (!doc || !doc->is_object()) {
    diag.warn(file.string(), doc ? "not a JSON object (PEP 610)" : doc.error().message());
    return std::nullopt;
  }
  DirectUrl out;
  try {
    if (auto url = doc->find("url"); url != doc->end() && url->is_string())
      out.url = url->get<std::string>();
    if (auto info = doc->find("dir_info"); info != doc->end() && info->is_object())
      out.editable = info->value("editable", false);
  } catch (const nlohmann::json::exception& e) {
    diag.warn(file.string(), std::string("unexpected content: ") + e.what());
  }
  if (out.url.empty()) diag.warn(file.string(), "no \"url\" string (PEP 610)");
  return out;
}

// One scan of one site-packages directory.
class SiteReader {
 public:
  SiteReader(Parts prefix, Parts canonical, Parts site, Diagnostics& diag)
      : m_prefix(std::move(prefix)),
        m_canonical(std::move(canonical)),
        m_site(std::move(site)),
        m_site_rel(join(m_site)),
        m_site_abs(abs(m_site_rel)),
        m_diag(diag) {}

  const fs::path& site_abs() const { return m_site_abs; }

  PackageRecord dist_info(const std::string& name) {
    const std::string rel = m_site_rel + "/" + name;
    const fs::path dir = m_site_abs / name;
    const std::string_view stem = std::string_view(name).substr(0, name.size() - 10);
    PackageRecord rec = start(rel, name_version(dir / "METADATA", stem));
    std::set<std::string> paths;
    read_record(dir / "RECORD", rec, paths);
    // PEP 376: INSTALLER names the tool; REQUESTED marks a user-requested install.
    if (auto installer = read_text(dir / "INSTALLER")) rec.meta.installer = trim(*installer);
    rec.meta.requested = entry_exists(dir / "REQUESTED");
    // The dist-info's own files belong to the package even where RECORD omits them (RECORD lists
    // itself without a hash; INSTALLER, REQUESTED, direct_url.json may be written after it).
    add_tree(rel, paths);
    auto du = read_direct_url(dir / "direct_url.json", m_diag);
    if (du) rec.meta.direct_url = redact_url_credentials(du->url);
    auto src = du && du->editable ? file_url_path(du->url) : std::nullopt;
    if (src && local_source(*src, dir / "direct_url.json")) rec.meta.editable_root = *src;
    // Without a usable direct_url.json the .pth files the package installed say where its source
    // is; a non-editable direct_url.json (archive, VCS, plain directory) rules that out.
    if (!rec.meta.editable_root && (!du || du->editable))
      rec.meta.editable_root = editable_from_pth(paths);
    rec.paths.assign(paths.begin(), paths.end());
    return rec;
  }

  // A directory, or a single file holding the PKG-INFO itself. installed-files.txt lines are
  // relative to the egg-info directory (pip's legacy `setup.py install --record`).
  PackageRecord egg_info(const std::string& name, bool is_directory) {
    const std::string rel = m_site_rel + "/" + name;
    const fs::path path = m_site_abs / name;
    const std::string_view stem = std::string_view(name).substr(0, name.size() - 9);
    PackageRecord rec = start(rel, name_version(is_directory ? path / "PKG-INFO" : path, stem));
    std::set<std::string> paths;
    if (!is_directory) paths.insert(rel);
    if (is_directory) {
      Parts base = m_site;
      base.push_back(name);
      if (auto files = read_text(path / "installed-files.txt"))
        for (auto line : lines(*files))
          if (auto p = trim(line); !p.empty())
            if (auto r = to_prefix_rel(base, p, path / "installed-files.txt")) paths.insert(*r);
      add_tree(rel, paths);
    }
    rec.paths.assign(paths.begin(), paths.end());
    return rec;
  }

  // setuptools `develop` writes NAME.egg-link: the sys.path entry, then the relative path from it
  // to the project (setup.py) directory; the project's NAME.egg-info lives in the former
  // (https://setuptools.pypa.io/en/latest/deprecated/python_eggs.html). A package of that name
  // already read from a dist-info or egg-info just gains the link.
  void egg_link(const std::string& name, std::vector<PackageRecord>& out) {
    const fs::path file = m_site_abs / name;
    auto text = read_text(file);
    if (!text) return m_diag.warn(file.string(), text.error().message());
    const std::string stem = name.substr(0, name.size() - 9);
    auto link = lines(*text);
    fs::path egg_path = link.empty() ? "" : trim(link[0]);
    if (egg_path.empty()) return m_diag.warn(file.string(), "empty .egg-link; ignored");
    if (egg_path.is_relative()) egg_path = m_site_abs / egg_path;
    std::string root =
        absolute_normal((egg_path / (link.size() > 1 ? trim(link[1]) : "")).string());
    auto rec = std::find_if(out.begin(), out.end(),
                            [&](const auto& r) { return pep503(r.meta.name) == pep503(stem); });
    if (rec == out.end()) {
      out.push_back(start(m_site_rel + "/" + name, {stem, ""}));
      rec = out.end() - 1;
      std::error_code ec;
      for (fs::directory_iterator d(egg_path, ec); !ec && d != fs::directory_iterator();
           d.increment(ec)) {
        auto info = d->path().filename().string();
        auto info_stem = std::string_view(info).substr(0, info.size() - 9);
        if (!info.ends_with(".egg-info") || pep503(from_stem(info_stem).name) != pep503(stem))
          continue;
        auto nv = name_version(is_dir(d->path()) ? d->path() / "PKG-INFO" : d->path(), info_stem);
        rec->meta.name = nv.name;
        rec->meta.version = nv.version;
      }
      if (rec->meta.version.empty())
        m_diag.warn(file.string(),
                    "no " + stem + ".egg-info in " + egg_path.string() + "; version unknown");
    }
    auto pos = std::lower_bound(rec->paths.begin(), rec->paths.end(), m_site_rel + "/" + name);
    if (pos == rec->paths.end() || *pos != m_site_rel + "/" + name)
      rec->paths.insert(pos, m_site_rel + "/" + name);
    if (!rec->meta.editable_root && local_source(root, file)) rec->meta.editable_root = root;
  }

 private:
  fs::path abs(std::string_view rel) const { return fs::path("/" + join(m_prefix)) / rel; }

  static PackageRecord start(const std::string& record_path, NameVersion nv) {
    PackageRecord rec;
    rec.meta.manager = snapshot::PackageManager::pip;
    rec.meta.name = std::move(nv.name);
    rec.meta.version = std::move(nv.version);
    rec.record_path = record_path;
    return rec;
  }

  // The prefix (as given, or its real path) that absolute `a` is in or at; nullptr if none.
  const Parts* prefix_of(const Parts& a) const {
    for (const Parts* root : {&m_prefix, &m_canonical})
      if (a.size() >= root->size() && std::equal(root->begin(), root->end(), a.begin()))
        return root;
    return nullptr;
  }

  // A RECORD / installed-files.txt entry, relative to `base` (prefix-relative) or absolute, as a
  // prefix-relative path. Entries outside the prefix are dropped with a warning.
  std::optional<std::string> to_prefix_rel(const Parts& base, std::string_view entry,
                                           const fs::path& listed_in) const {
    const bool absolute = entry.starts_with("/");
    auto parts = entry.find('\0') != std::string_view::npos
                     ? std::nullopt
                     : resolve(absolute ? Parts{} : base, entry, absolute);
    if (parts && !absolute && !parts->empty()) return join(*parts);
    const Parts* root = parts && absolute ? prefix_of(*parts) : nullptr;
    if (root && parts->size() > root->size()) return join(*parts, root->size());
    m_diag.warn(listed_in.string(), "entry \"" + std::string(entry) +
                                        "\" is outside the prefix; not counted as the package's");
    return std::nullopt;
  }

  // Every non-directory entry under `rel_dir`; symlinks are not followed.
  void add_tree(const std::string& rel_dir, std::set<std::string>& out) const {
    const fs::path root = abs(rel_dir);
    std::error_code ec, type_ec;
    fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec);
    for (; !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
      if (it->symlink_status(type_ec).type() != fs::file_type::directory)
        out.insert(rel_dir + "/" + it->path().lexically_relative(root).generic_string());
    if (ec) m_diag.warn(root.string(), "cannot list: " + ec.message());
  }

  // Name and version from an RFC 822 metadata file, else from the directory stem (warned).
  NameVersion name_version(const fs::path& file, std::string_view stem) const {
    auto text = read_text(file);
    NameVersion nv;
    if (!text)
      m_diag.warn(file.string(), text.error().message() + "; name and version from the dir name");
    else if (!valid_utf8_text(*text))
      m_diag.warn(file.string(), "not UTF-8 text; name and version from the directory name");
    else if (nv = parse_headers(*text); nv.name.empty() || nv.version.empty())
      m_diag.warn(file.string(), "no Name or Version header; taken from the directory name");
    auto fallback = from_stem(stem);
    if (nv.name.empty()) nv.name = fallback.name;
    if (nv.version.empty()) nv.version = fallback.version;
    return nv;
  }

  void read_record(const fs::path& file, PackageRecord& rec, std::set<std::string>& paths) {
    auto text = read_text(file);
    if (!text) return m_diag.warn(file.string(), text.error().message());
    if (!valid_utf8_text(*text))
      return m_diag.warn(file.string(), "not UTF-8 text (PEP 376 RECORD); ignored");
    std::optional<std::size_t> bad_line;
    for (const auto& row : parse_csv(*text, bad_line)) {
      const std::string at_line = "line " + std::to_string(row.line) + ": ";
      if (row.fields[0].empty()) {
        m_diag.warn(file.string(), at_line + "empty path; skipped");
        continue;
      }
      auto rel = to_prefix_rel(m_site, row.fields[0], file);
      if (!rel) continue;
      paths.insert(*rel);
      const std::string hash = row.fields.size() > 1 ? row.fields[1] : "";
      if (auto digest = parse_record_hash(hash))
        rec.expected.insert_or_assign(*rel, *digest);
      else if (hash.starts_with("sha256="))
        m_diag.warn(file.string(), at_line + "bad sha256");
    }
    if (bad_line)
      m_diag.warn(file.string(),
                  "line " + std::to_string(*bad_line) + ": unterminated quote; rest ignored");
  }

  // A directory that is the user's source on this machine: it exists, and is no build-farm path.
  bool local_source(const std::string& dir, const fs::path& evidence) const {
    if (!is_build_farm_path(dir) && is_dir(dir)) return true;
    m_diag.warn(evidence.string(),
                "editable source " + dir + " is a build path or missing here; not local source");
    return false;
  }

  // The project root for a directory a .pth puts on sys.path (src/, the package directory, or
  // setuptools' build/__editable__.* link tree): the nearest of it and two parents holding a
  // project file, else the directory itself.
  static std::string project_root(const std::string& dir) {
    fs::path p(dir);
    for (int up = 0; up < 3 && p.has_relative_path(); ++up, p = p.parent_path())
      for (const char* marker : {"pyproject.toml", "setup.py", "setup.cfg"})
        if (entry_exists(p / marker)) return p.string();
    return dir;
  }

  // PEP 660 (https://peps.python.org/pep-0660/) leaves the mechanism to the build backend: a .pth
  // with a path line (setuptools static/strict, hatchling's _NAME.pth) or an import line loading
  // a setuptools finder module. The package's .pth files are the top-level ones its RECORD lists.
  // Paths inside the prefix are ordinary .pth use, not an editable source.
  std::optional<std::string> editable_from_pth(const std::set<std::string>& paths) {
    for (const auto& pth : paths) {
      if (!pth.ends_with(".pth") || pth.rfind('/') != m_site_rel.size() ||
          !pth.starts_with(m_site_rel))
        continue;
      auto text = read_text(abs(pth));
      std::vector<std::string> candidates;
      for (auto line : text ? lines(*text) : std::vector<std::string_view>{}) {
        if (line.starts_with("/")) candidates.push_back(trim(line));
        for (auto at = line.find("__editable___"); line.starts_with("import") && at != line.npos;
             at = line.find("__editable___", at + 1)) {
          auto module = line.substr(at, line.find_first_of("; .\t", at) - at);
          if (module.ends_with("_finder")) finder_mapping(module, candidates);
        }
      }
      for (const auto& c : candidates) {
        auto parts = resolve({}, c, true);
        if (prefix_of(*parts)) continue;
        if (auto dir = "/" + join(*parts); local_source(dir, abs(pth))) return project_root(dir);
      }
    }
    return std::nullopt;
  }

  // setuptools' generated finder (setuptools/command/editable_wheel.py, _FINDER_TEMPLATE) has a
  // line "MAPPING = {'pkg': '/src/pkg'}" (newer: "MAPPING: dict[str, str] = {...}"), a Python
  // dict repr whose values are the package directories.
  void finder_mapping(std::string_view module, std::vector<std::string>& out) const {
    auto text = read_text(m_site_abs / (std::string(module) + ".py"));
    auto at = text ? text->find("\nMAPPING") : std::string::npos;
    if (at == std::string::npos) return;
    bool value = false;
    for (std::size_t i = text->find('{', at); i < text->size(); ++i) {
      char c = (*text)[i];
      if (c == '}' || c == '\n') break;
      value = c == ':' ? true : c == ',' ? false : value;
      if (c != '\'' && c != '"') continue;
      std::string s;
      for (++i; i < text->size() && (*text)[i] != c; ++i)
        s += (*text)[i] == '\\' && i + 1 < text->size() ? (*text)[++i] : (*text)[i];
      if (value && s.starts_with("/")) out.push_back(s);
    }
  }

  Parts m_prefix, m_canonical, m_site;
  std::string m_site_rel;
  fs::path m_site_abs;
  Diagnostics& m_diag;
};

}  // namespace

std::string redact_url_credentials(const std::string& text) {
  // Userinfo is everything before the last '@' of the authority (RFC 3986 §3.2). All of it is
  // masked, because a lone "user" is often a token.
  std::string out;
  std::size_t pos = 0;
  for (auto sep = text.find("://"); sep != std::string::npos; sep = text.find("://", pos)) {
    auto begin = sep + 3;
    auto end = std::min(text.find_first_of("/?#\\ \t\r\n\"'<>", begin), text.size());
    auto at = std::string_view(text).substr(begin, end - begin).rfind('@');
    out.append(text, pos, begin - pos);
    if (at != std::string_view::npos) out += "***";
    pos = at != std::string_view::npos ? begin + at : begin;
  }
  return out.append(text, pos);
}

Result<std::vector<PackageRecord>> read_site_packages(const fs::path& prefix,
                                                      const std::string& site_packages,
                                                      Diagnostics& diagnostics) {
  std::error_code ec;
  const fs::path abs_prefix = fs::absolute(prefix, ec);
  auto site = resolve({}, site_packages, false);
  if (ec || !site || site->empty() || site_packages.starts_with("/"))
    return unexpected(ErrorCode::invalid_argument,
                      "site-packages \"" + site_packages + "\" is not a directory in the prefix");
  // RECORD may name files by absolute path, through the prefix as given or its real path.
  auto lexical = *resolve({}, abs_prefix.string(), true);
  const fs::path canonical = fs::weakly_canonical(abs_prefix, ec);
  SiteReader reader(lexical, ec ? lexical : *resolve({}, canonical.string(), true), *site,
                    diagnostics);

  std::vector<std::string> names;
  fs::directory_iterator it(reader.site_abs(), ec);
  if (ec) return unexpected(Error::from_errno("list " + reader.site_abs().string(), ec.value()));
  for (; !ec && it != fs::directory_iterator(); it.increment(ec))
    names.push_back(it->path().filename().string());
  if (ec) diagnostics.warn(reader.site_abs().string(), "listing stopped: " + ec.message());
  std::sort(names.begin(), names.end());

  std::vector<PackageRecord> out;
  for (const auto& name : names) {
    bool dir = is_dir(reader.site_abs() / name);
    if (name.ends_with(".dist-info") && dir) out.push_back(reader.dist_info(name));
    if (name.ends_with(".egg-info")) out.push_back(reader.egg_info(name, dir));
  }
  // After the others, so that a link to a project already read gains its editable root.
  for (const auto& name : names)
    if (name.ends_with(".egg-link")) reader.egg_link(name, out);

  std::sort(out.begin(), out.end(), [](const PackageRecord& a, const PackageRecord& b) {
    auto la = lower(a.meta.name), lb = lower(b.meta.name);
    return la != lb ? la < lb : a.record_path < b.record_path;
  });
  return out;
}

}  // namespace envd::agent
