// Matching package records against the files on disk. Ownership: the first record that claims a
// path owns it; conda records are read before pip's, and a pip dist-info whose RECORD conda lists
// is conda's own (conda's rule for telling pip-installed packages apart).
#include "agent/prefix_scanner.hpp"

#include <algorithm>
#include <cctype>
#include <future>
#include <optional>
#include <string_view>
#include <unordered_set>

#include "agent/conda_meta.hpp"
#include "agent/pip_metadata.hpp"
#include "agent/python_install.hpp"
#include "envd/util/phase_timer.hpp"

namespace envd::agent {
namespace {

using snapshot::Environment;
using snapshot::EnvironmentKind;
using snapshot::FileType;

// Reads the package records of a prefix: conda-meta first, then each site-packages directory.
Result<std::vector<PackageRecord>> read_records(const std::filesystem::path& prefix,
                                                EnvironmentKind kind, bool with_site_packages,
                                                Diagnostics& diagnostics) {
  std::vector<PackageRecord> records;
  std::unordered_set<std::string> conda_files;
  if (kind == EnvironmentKind::conda) {
    ENVD_TRY(records, read_conda_meta(prefix, diagnostics));
    for (const auto& r : records)
      for (const auto& p : r.paths) conda_files.insert(p);
  }
  if (!with_site_packages) return records;
  for (const auto& site : site_packages_dirs(prefix)) {
    ENVD_TRY(auto pip, read_site_packages(prefix, site, diagnostics));
    for (auto& r : pip) {
      bool conda_owned = std::any_of(r.paths.begin(), r.paths.end(), [&](const std::string& p) {
        return p.ends_with("/RECORD") && conda_files.count(p) != 0;
      });
      if (!conda_owned) records.push_back(std::move(r));
    }
  }
  return records;
}

// Distributes hashed `files` over `records`; what no record claims is unowned. Hard links are
// found over the whole prefix: packages and unowned files share the prefix as their root.
void assemble(Environment& env, std::vector<WalkedFile>& files, std::vector<PackageRecord>& records,
              ScanContext& ctx) {
  const std::filesystem::path prefix(env.prefix);
  log::PhaseTimer t("snapshot", "assemble");
  // `files` is sorted by path: a binary search finds a recorded path without building an index of
  // ~50k entries (allocations and fresh pages cost more here than the comparisons).
  auto index_of = [&](const std::string& path) -> std::optional<std::size_t> {
    auto it =
        std::lower_bound(files.begin(), files.end(), path,
                         [](const WalkedFile& f, const std::string& p) { return f.path < p; });
    if (it == files.end() || it->path != path) return std::nullopt;
    return static_cast<std::size_t>(it - files.begin());
  };
  std::vector<int> owner(files.size(), -1);
  std::vector<std::size_t> owned_count(records.size(), 0);
  for (std::size_t r = 0; r < records.size(); ++r) {
    std::size_t missing = 0;
    std::string first_missing;
    for (const auto& p : records[r].paths) {
      auto i = index_of(p);
      if (!i) {
        if (missing++ == 0) first_missing = p;
        continue;
      }
      if (owner[*i] < 0) {
        owner[*i] = static_cast<int>(r);
        ++owned_count[r];
      }
    }
    if (missing > 0 && !env.partial) {
      ctx.diagnostics.warn((prefix / records[r].record_path).string(),
                           records[r].meta.name + " " + records[r].meta.version + ": " +
                               std::to_string(missing) + " recorded file(s) missing, e.g. " +
                               first_missing);
    }
  }

  // Each list gets its final size up front: growing them would copy ~50k entries into fresh pages.
  std::vector<snapshot::Package> packages(records.size());
  std::size_t owned_total = 0;
  for (std::size_t r = 0; r < records.size(); ++r) {
    packages[r] = std::move(records[r].meta);
    packages[r].files.reserve(owned_count[r]);
    owned_total += owned_count[r];
  }
  env.unowned.reserve(env.unowned.size() + files.size() - owned_total);
  HardLinkFinder links;  // the entries stay where they are put below: every list is reserved
  for (std::size_t i = 0; i < files.size(); ++i) {
    auto entry = to_file_entry(std::move(files[i]));
    if (owner[i] < 0) {
      env.unowned.push_back(std::move(entry));
      links.note(files[i], env.unowned.back());
      continue;
    }
    auto& rec = records[static_cast<std::size_t>(owner[i])];
    auto& pkg = packages[static_cast<std::size_t>(owner[i])];
    if (auto it = rec.expected.find(entry.path);
        it != rec.expected.end() && entry.digest && !(*entry.digest == it->second)) {
      pkg.modified.push_back(entry.path);
    }
    pkg.files.push_back(std::move(entry));
    links.note(files[i], pkg.files.back());
  }
  links.finish();
  std::sort(packages.begin(), packages.end(), snapshot::package_before);
  env.packages = std::move(packages);
}

std::string canonical_string(const std::filesystem::path& p) {
  std::error_code ec;
  auto c = std::filesystem::canonical(p, ec);
  return (ec ? p : c).string();
}

// The part of `base` a venv needs (DESIGN.md §2: "the base interpreter a venv points to").
Result<Environment> scan_partial(const std::filesystem::path& base, bool with_site_packages,
                                 ScanContext& ctx) {
  Environment env;
  auto kind = detect_environment_kind(base);
  env.kind = kind ? *kind : EnvironmentKind::prefix;
  if (env.kind == EnvironmentKind::venv) env.kind = EnvironmentKind::prefix;
  env.prefix = base.string();
  env.name = base.filename().string();
  env.python_version = python_version_of(base);
  env.partial = true;
  ENVD_TRY(auto paths, base_interpreter_paths(base, with_site_packages, ctx.diagnostics));
  auto files = stat_paths(base, paths, ctx.diagnostics);
  {
    log::PhaseTimer t("snapshot", "hash");
    ENVD_TRY_VOID(hash_files(base, files, ctx.cache, ctx.hash_options, ctx.progress));
  }
  ENVD_TRY(auto records,
           read_records(base, EnvironmentKind::prefix, with_site_packages, ctx.diagnostics));
  assemble(env, files, records, ctx);
  return env;
}

}  // namespace

bool is_system_prefix(const std::filesystem::path& prefix) {
  return prefix == "/usr" || prefix == "/usr/local" || prefix == "/";
}

Result<std::vector<Environment>> scan_environment(const std::filesystem::path& prefix_in,
                                                  ScanContext& ctx) {
  auto context = [&](const Error& e) { return e.with_context("scan " + prefix_in.string()); };
  auto kind = detect_environment_kind(prefix_in);
  if (!kind) return kind.error();
  const std::filesystem::path prefix = canonical_string(prefix_in);
  if (is_system_prefix(prefix)) {
    // A system interpreter (Debian's /usr/bin/python3): capture its part of /usr, not all of it.
    auto env = scan_partial(prefix, true, ctx);
    if (!env) return context(env.error());
    return std::vector<Environment>{std::move(*env)};
  }

  Environment env;
  env.kind = *kind;
  env.prefix = prefix.string();
  env.name = prefix.filename().string();
  env.python_version = python_version_of(prefix);
  std::vector<Environment> out;
  std::optional<std::filesystem::path> base;
  if (env.kind == EnvironmentKind::venv) {
    auto cfg = read_pyvenv_cfg(prefix);
    if (!cfg) return context(cfg.error());
    env.system_site_packages = cfg->include_system_site_packages;
    auto b = base_prefix_of(prefix, *cfg);
    if (!b) return context(b.error());
    base = *b;
    env.base_prefix = b->string();
  }
  // The package records are read on a thread of their own meanwhile: it fills the gaps the
  // syscall-bound walk leaves on the cores.
  auto records_later = std::async(std::launch::async, [&] {
    log::PhaseTimer t("snapshot", "package records");
    return read_records(prefix, env.kind, true, ctx.diagnostics);
  });
  auto files = [&] {
    log::PhaseTimer t("snapshot", "walk and hash");
    return walk_and_hash(prefix, ctx.cache, ctx.walk_options, ctx.hash_options, ctx.progress,
                         ctx.diagnostics);
  }();
  if (!files) return context(files.error());
  ctx.cache.start_save();  // this prefix's entries are final: written while the rest goes on
  auto records = records_later.get();
  if (!records) return context(records.error());
  assemble(env, *files, *records, ctx);
  out.push_back(std::move(env));
  if (base) {
    auto base_env = scan_partial(*base, out.front().system_site_packages, ctx);
    if (!base_env) return base_env.error().with_context("scan base interpreter " + base->string());
    out.push_back(std::move(*base_env));
  }
  return out;
}

}  // namespace envd::agent
