// Reads the pip-installed distributions of one site-packages directory into PackageRecords:
// *.dist-info (PEP 376/627), *.egg-info, and editable installs (PEP 610 direct_url.json, PEP 660
// .pth files and setuptools finder modules, legacy .egg-link).
#include "agent/pip_metadata.hpp"

#include "agent/pip_text.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <exception>
#include <optional>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>

#include "envd/util/json_detail.hpp"

namespace envd::agent {
namespace {

namespace fs = std::filesystem;
using namespace pip_text;

// Warnings held back, so that metadata directories read in parallel report in listing order.
class Warnings {
 public:
  void warn(std::string path, std::string message) {
    m_items.emplace_back(std::move(path), std::move(message));
  }
  void replay(Diagnostics& diag) {
    for (auto& [path, message] : m_items) diag.warn(std::move(path), std::move(message));
    m_items.clear();
  }

 private:
  std::vector<std::pair<std::string, std::string>> m_items;
};

struct DirectUrl {
  std::string url;
  bool editable = false;
};

// PEP 610 (https://peps.python.org/pep-0610/): url, plus dir_info.editable for `pip install -e`.
std::optional<DirectUrl> read_direct_url(const fs::path& file, Warnings& diag) {
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

// One scan of one site-packages directory. A copy per thread; warnings go to report_to()'s sink.
class SiteReader {
 public:
  SiteReader(Parts prefix, Parts canonical, Parts site, Warnings& diag)
      : m_prefix(std::move(prefix)),
        m_canonical(std::move(canonical)),
        m_site(std::move(site)),
        m_prefix_abs("/" + join(m_prefix)),
        m_roots{Root{join(m_prefix), m_prefix.size()}, Root{join(m_canonical), m_canonical.size()}},
        m_site_rel(join(m_site)),
        m_site_abs(abs(m_site_rel)),
        m_diag(&diag) {}

  const fs::path& site_abs() const { return m_site_abs; }
  void report_to(Warnings& sink) { m_diag = &sink; }

  PackageRecord dist_info(const std::string& name) {
    const std::string rel = m_site_rel + "/" + name;
    const fs::path dir = m_site_abs / name;
    const std::string_view stem = std::string_view(name).substr(0, name.size() - 10);
    PackageRecord rec = start(rel, name_version(dir / "METADATA", stem));
    std::vector<std::string> paths;
    read_record(dir / "RECORD", rec, paths);
    // PEP 376: INSTALLER names the tool; REQUESTED marks a user-requested install.
    if (auto installer = read_text(dir / "INSTALLER", m_buffer))
      rec.meta.installer = trim(*installer);
    rec.meta.requested = entry_exists(dir / "REQUESTED");
    // The dist-info's own files belong to the package even where RECORD omits them (RECORD lists
    // itself without a hash; INSTALLER, REQUESTED, direct_url.json may be written after it).
    const std::size_t listed = paths.size();
    add_tree(rel, paths);
    sort_unique(paths, listed);
    auto du = read_direct_url(dir / "direct_url.json", *m_diag);
    if (du) rec.meta.direct_url = redact_url_credentials(du->url);
    auto src = du && du->editable ? file_url_path(du->url) : std::nullopt;
    if (src && local_source(*src, dir / "direct_url.json")) rec.meta.editable_root = *src;
    // Without a usable direct_url.json the .pth files the package installed say where its source
    // is; a non-editable direct_url.json (archive, VCS, plain directory) rules that out.
    if (!rec.meta.editable_root && (!du || du->editable))
      rec.meta.editable_root = editable_from_pth(paths);
    rec.paths = std::move(paths);
    return rec;
  }

  // A directory, or a single file holding the PKG-INFO itself. installed-files.txt lines are
  // relative to the egg-info directory (pip's legacy `setup.py install --record`).
  PackageRecord egg_info(const std::string& name, bool is_directory) {
    const std::string rel = m_site_rel + "/" + name;
    const fs::path path = m_site_abs / name;
    const std::string_view stem = std::string_view(name).substr(0, name.size() - 9);
    PackageRecord rec = start(rel, name_version(is_directory ? path / "PKG-INFO" : path, stem));
    std::vector<std::string> paths;
    if (!is_directory) paths.push_back(rel);
    if (is_directory) {
      if (auto files = read_text(path / "installed-files.txt"))
        for (auto line : lines(*files))
          if (auto p = trim(line); !p.empty())
            if (auto r = to_prefix_rel(rel, m_site.size() + 1, p, path / "installed-files.txt"))
              paths.push_back(std::move(*r));
      const std::size_t listed = paths.size();
      add_tree(rel, paths);
      sort_unique(paths, listed);
    }
    rec.paths = std::move(paths);
    return rec;
  }

  // setuptools `develop` writes NAME.egg-link: the sys.path entry, then the relative path from it
  // to the project (setup.py) directory; the project's NAME.egg-info lives in the former
  // (https://setuptools.pypa.io/en/latest/deprecated/python_eggs.html). A package of that name
  // already read from a dist-info or egg-info just gains the link.
  void egg_link(const std::string& name, std::vector<PackageRecord>& out) {
    const fs::path file = m_site_abs / name;
    auto text = read_text(file);
    if (!text) return m_diag->warn(file.string(), text.error().message());
    const std::string stem = name.substr(0, name.size() - 9);
    auto link = lines(*text);
    fs::path egg_path = link.empty() ? "" : trim(link[0]);
    if (egg_path.empty()) return m_diag->warn(file.string(), "empty .egg-link; ignored");
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
        m_diag->warn(file.string(),
                     "no " + stem + ".egg-info in " + egg_path.string() + "; version unknown");
    }
    auto pos = std::lower_bound(rec->paths.begin(), rec->paths.end(), m_site_rel + "/" + name);
    if (pos == rec->paths.end() || *pos != m_site_rel + "/" + name)
      rec->paths.insert(pos, m_site_rel + "/" + name);
    if (!rec->meta.editable_root && local_source(root, file)) rec->meta.editable_root = root;
  }

 private:
  fs::path abs(std::string_view rel) const { return fs::path(m_prefix_abs) / rel; }

  // Sorts and deduplicates `v`, whose first `head` entries (RECORD's, usually sorted already)
  // are followed by a few others (the metadata directory's files).
  static void sort_unique(std::vector<std::string>& v, std::size_t head) {
    const auto mid = v.begin() + static_cast<std::ptrdiff_t>(head);
    if (!std::is_sorted(v.begin(), mid)) std::sort(v.begin(), mid);
    std::sort(mid, v.end());
    std::inplace_merge(v.begin(), mid, v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
  }

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

  // A RECORD / installed-files.txt entry, relative to `base` (prefix-relative, `depth` parts) or
  // absolute, as a prefix-relative path. Entries outside the prefix are dropped with a warning.
  std::optional<std::string> to_prefix_rel(const std::string& base, std::size_t depth,
                                           std::string_view entry,
                                           const fs::path& listed_in) const {
    const bool absolute = entry.starts_with("/");
    std::string out;
    out.reserve(base.size() + entry.size() + 1);
    if (!absolute)
      out = base;
    else
      depth = 0;
    bool ok =
        entry.find('\0') == std::string_view::npos && append_normal(out, depth, entry, absolute);
    if (ok && !absolute && depth > 0) return out;
    // prefix_of() on strings: the first root that `out` is in or at.
    for (const Root& root : m_roots) {
      if (!ok || !absolute) break;
      bool inside =
          root.depth == 0 || (out.starts_with(root.path) &&
                              (out.size() == root.path.size() || out[root.path.size()] == '/'));
      if (!inside) continue;
      if (depth > root.depth) return root.depth == 0 ? out : out.substr(root.path.size() + 1);
      break;
    }
    m_diag->warn(listed_in.string(), "entry \"" + std::string(entry) +
                                         "\" is outside the prefix; not counted as the package's");
    return std::nullopt;
  }

  // Every non-directory entry under `rel_dir`; symlinks are not followed.
  void add_tree(const std::string& rel_dir, std::vector<std::string>& out) const {
    const fs::path root = abs(rel_dir);
    std::string rel = rel_dir;
    if (int err = list_tree(AT_FDCWD, root.c_str(), rel, out))
      m_diag->warn(root.string(), "cannot list: " + std::generic_category().message(err));
  }

  // Name and version from an RFC 822 metadata file, else from the directory stem (warned).
  NameVersion name_version(const fs::path& file, std::string_view stem) {
    auto text = read_text(file, m_buffer);
    NameVersion nv;
    if (!text)
      m_diag->warn(file.string(), text.error().message() + "; name and version from the dir name");
    else if (!valid_utf8_text(*text))
      m_diag->warn(file.string(), "not UTF-8 text; name and version from the directory name");
    else if (nv = parse_headers(*text); nv.name.empty() || nv.version.empty())
      m_diag->warn(file.string(), "no Name or Version header; taken from the directory name");
    auto fallback = from_stem(stem);
    if (nv.name.empty()) nv.name = fallback.name;
    if (nv.version.empty()) nv.version = fallback.version;
    return nv;
  }

  // Appends RECORD's paths to `paths` and fills rec.expected (the last valid sha256 of a path).
  void read_record(const fs::path& file, PackageRecord& rec, std::vector<std::string>& paths) {
    auto text = read_text(file, m_buffer);
    if (!text) return m_diag->warn(file.string(), text.error().message());
    if (!valid_utf8_text(*text))
      return m_diag->warn(file.string(), "not UTF-8 text (PEP 376 RECORD); ignored");
    auto at_line = [](std::size_t line) { return "line " + std::to_string(line) + ": "; };
    // A row a line, and room for the metadata directory's own files: no regrowth, no slack.
    paths.reserve(paths.size() +
                  static_cast<std::size_t>(std::count(text->begin(), text->end(), '\n')) + 16);
    auto bad_line = for_each_csv_row(
        *text, [&](std::size_t line, std::string_view path, std::string_view hash) {
          if (path.empty())
            return m_diag->warn(file.string(), at_line(line) + "empty path; skipped");
          auto rel = to_prefix_rel(m_site_rel, m_site.size(), path, file);
          if (!rel) return;
          // RECORD is mostly sorted: the end is then the place, else the hint is ignored.
          if (auto digest = parse_record_hash(hash))
            rec.expected.insert_or_assign(rec.expected.end(), *rel, *digest);
          else if (hash.starts_with("sha256="))
            m_diag->warn(file.string(), at_line(line) + "bad sha256");
          paths.push_back(std::move(*rel));
        });
    if (bad_line)
      m_diag->warn(file.string(), at_line(*bad_line) + "unterminated quote; rest ignored");
  }

  // A directory that is the user's source on this machine: it exists, and is no build-farm path.
  bool local_source(const std::string& dir, const fs::path& evidence) const {
    if (!is_build_farm_path(dir) && is_dir(dir)) return true;
    m_diag->warn(evidence.string(),
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
  std::optional<std::string> editable_from_pth(const std::vector<std::string>& paths) {
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

  // The prefix as given and its real path, '/'-joined without the leading '/', and their depths.
  struct Root {
    std::string path;
    std::size_t depth;
  };

  Parts m_prefix, m_canonical, m_site;
  std::string m_prefix_abs;
  std::array<Root, 2> m_roots;
  std::string m_site_rel;
  fs::path m_site_abs;
  Warnings* m_diag;
  std::string m_buffer;  // for read_text()
};

// Runs job(reader, i) for i in [0, n) on up to `k_max_threads` threads, each with its own copy of
// `reader`. The first exception a job throws is rethrown here once all threads have stopped.
template <class Job>
void parallel_for(std::size_t n, const SiteReader& reader, Job job) {
  constexpr std::size_t k_max_threads = 4, k_min_per_thread = 8;
  const std::size_t threads =
      std::min({k_max_threads, std::max<std::size_t>(1, std::thread::hardware_concurrency()),
                (n + k_min_per_thread - 1) / k_min_per_thread});
  std::atomic<std::size_t> next{0};
  std::exception_ptr failure;
  std::atomic_flag failed;
  auto work = [&] {
    SiteReader own(reader);
    try {
      for (std::size_t i; (i = next.fetch_add(1)) < n;) job(own, i);
    } catch (...) {
      next = n;
      if (!failed.test_and_set()) failure = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  for (std::size_t t = 1; t < threads; ++t) {
    try {
      pool.emplace_back(work);
    } catch (...) {
      break;  // no more threads to be had: fewer do the work
    }
  }
  work();
  for (auto& t : pool) t.join();
  if (failure) std::rethrow_exception(failure);
}

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
  Warnings held;
  SiteReader reader(lexical, ec ? lexical : *resolve({}, canonical.string(), true), *site, held);

  struct Entry {
    std::string name;
    bool dir;
  };
  std::vector<Entry> names;
  fs::directory_iterator it(reader.site_abs(), ec);
  if (ec) return unexpected(Error::from_errno("list " + reader.site_abs().string(), ec.value()));
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
    std::error_code type_ec;  // the listing's file type; stat only for symlinks
    names.push_back({it->path().filename().string(), it->is_directory(type_ec)});
  }
  if (ec) diagnostics.warn(reader.site_abs().string(), "listing stopped: " + ec.message());
  std::sort(names.begin(), names.end(),
            [](const Entry& a, const Entry& b) { return a.name < b.name; });

  std::vector<const Entry*> infos;
  for (const auto& e : names)
    if ((e.name.ends_with(".dist-info") && e.dir) || e.name.ends_with(".egg-info"))
      infos.push_back(&e);
  std::vector<PackageRecord> out(infos.size());
  std::vector<Warnings> warnings(infos.size());
  parallel_for(infos.size(), reader, [&](SiteReader& r, std::size_t i) {
    r.report_to(warnings[i]);
    const Entry& e = *infos[i];
    out[i] = e.name.ends_with(".dist-info") ? r.dist_info(e.name) : r.egg_info(e.name, e.dir);
  });
  for (auto& w : warnings) w.replay(diagnostics);
  // After the others, so that a link to a project already read gains its editable root.
  for (const auto& e : names) {
    if (!e.name.ends_with(".egg-link")) continue;
    reader.egg_link(e.name, out);
    held.replay(diagnostics);
  }

  std::sort(out.begin(), out.end(), [](const PackageRecord& a, const PackageRecord& b) {
    auto la = lower(a.meta.name), lb = lower(b.meta.name);
    return la != lb ? la < lb : a.record_path < b.record_path;
  });
  return out;
}

}  // namespace envd::agent
