// Orchestration of one snapshot (see snapshotter.hpp). Kept free of output: the CLI renders it.
#include "agent/snapshotter.hpp"

#include <fcntl.h>
#include <gnu/libc-version.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <set>

#include "agent/prefix_scanner.hpp"
#include "agent/source_listing.hpp"
#include "agent/stat_cache.hpp"
#include "envd/util/phase_timer.hpp"

namespace envd::agent {
namespace {

std::int64_t real_clock_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// File timestamps advance in steps of the coarse clock (a jiffy, 1-10 ms), so a file written
// within one step before the scan could change again without its stat changing.
std::int64_t timestamp_granularity_ns() {
  timespec res{};
  if (::clock_getres(CLOCK_REALTIME_COARSE, &res) != 0) return 10'000'000;
  return std::max<std::int64_t>(static_cast<std::int64_t>(res.tv_sec) * 1000000000 + res.tv_nsec,
                                1'000'000);
}

std::string rfc3339_now() {
  auto t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return {};
  return buf;
}

// The first bytes of a file, to tell a private key from a certificate.
std::string read_head(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return {};
  std::string buf(4096, '\0');
  ssize_t n = ::read(fd, buf.data(), buf.size());
  ::close(fd);
  buf.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  return buf;
}

bool is_within(const std::filesystem::path& inner, const std::filesystem::path& outer) {
  auto rel = inner.lexically_relative(outer);
  return !rel.empty() && *rel.begin() != "..";
}

Result<snapshot::SourceTree> scan_source(const std::filesystem::path& root,
                                         snapshot::SourceRole role, const SnapshotOptions& options,
                                         ScanContext& ctx) {
  SourceOptions source_options;
  source_options.extra_ignores = options.extra_ignores;
  ENVD_TRY(auto listing, list_source_tree(root, source_options, ctx.diagnostics));
  for (const auto& p : listing.paths) {
    auto rule =
        secret_rule_for(p, secret_rule_needs_head(p) ? read_head(listing.root / p) : std::string());
    if (rule && !secret_allowed(p, options.secret_allow)) {
      return Error(ErrorCode::permission_denied,
                   (listing.root / p).string() + ": blocked by secret rule \"" + *rule +
                       "\"; exclude it with .envdignore, or allow it with --allow-secret " + p);
    }
  }
  auto files = stat_paths(listing.root, listing.paths, ctx.diagnostics);
  ENVD_TRY_VOID(hash_files(listing.root, files, ctx.cache, ctx.hash_options, ctx.progress));
  snapshot::SourceTree tree;
  tree.root = listing.root.string();
  tree.role = role;
  tree.git_commit = listing.git_commit;
  tree.dirty = listing.dirty;
  tree.ignored = listing.ignored;
  tree.files.reserve(files.size());
  HardLinkFinder links;  // among the listed files only: ignored ones are no members
  for (auto& f : files) {
    tree.files.push_back(to_file_entry(std::move(f)));
    links.note(f, tree.files.back());
  }
  links.finish();
  return tree;
}

}  // namespace

snapshot::Platform current_platform() {
  snapshot::Platform p;
  p.os = "linux";
  utsname u{};
  std::string machine = ::uname(&u) == 0 ? u.machine : "unknown";
  if (machine == "x86_64") {
    p.arch = "amd64";
  } else if (machine == "aarch64") {
    p.arch = "arm64";
  } else if (machine == "ppc64le" || machine == "s390x" || machine == "riscv64") {
    p.arch = machine;
  } else {
    p.arch = machine;
  }
  p.libc = std::string("glibc ") + gnu_get_libc_version();
  return p;
}

Result<SnapshotOutcome> take_snapshot(const SnapshotOptions& options, HashProgress* progress) {
  auto started = std::chrono::steady_clock::now();
  if (options.prefixes.empty())
    return Error(ErrorCode::invalid_argument, "no environment prefix given");
  auto clock = options.clock ? options.clock : std::function<std::int64_t()>(real_clock_ns);

  std::unique_ptr<StatCache> cache;
  if (options.state_dir.empty()) {
    cache = StatCache::in_memory();
  } else {
    log::PhaseTimer t("snapshot", "load stat cache");
    ENVD_TRY(cache, StatCache::open(stat_cache_path(options.state_dir)));
  }
  HashProgress local_progress;
  Diagnostics diagnostics;
  HashOptions hash_options;
  hash_options.threads = options.threads;
  // Both bounds sit two timestamp steps before the scan starts: a write from then on moves a
  // file's ctime to or past them.
  hash_options.racy_after_ns = clock() - 2 * timestamp_granularity_ns();
  hash_options.settled_before_ns = hash_options.racy_after_ns;
  WalkOptions walk_options;
  walk_options.threads = options.threads;
  ScanContext ctx{*cache, hash_options, walk_options, progress ? *progress : local_progress,
                  diagnostics};

  SnapshotOutcome out{snapshot::Snapshot{}, oci::sha256_of(""), 0, 0, 0, {}};
  auto& snap = out.snapshot;
  snap.platform = current_platform();
  for (const auto& prefix : options.prefixes) {
    ENVD_TRY(auto envs, scan_environment(prefix, ctx));
    for (auto& e : envs) {
      bool duplicate = std::any_of(snap.environments.begin(), snap.environments.end(),
                                   [&](const auto& x) { return x.prefix == e.prefix; });
      if (duplicate) continue;  // e.g. two venvs on one base interpreter
      snap.environments.push_back(std::move(e));
    }
  }

  std::vector<std::filesystem::path> source_roots;
  if (options.src) {
    ENVD_TRY(auto tree, scan_source(*options.src, snapshot::SourceRole::src, options, ctx));
    source_roots.emplace_back(tree.root);
    snap.sources.push_back(std::move(tree));
  }
  for (const auto& env : snap.environments) {
    for (const auto& pkg : env.packages) {
      if (!pkg.editable_root) continue;
      std::filesystem::path root(*pkg.editable_root);
      bool covered = std::any_of(source_roots.begin(), source_roots.end(),
                                 [&](const auto& r) { return root == r || is_within(root, r); });
      if (covered) continue;
      auto tree = scan_source(root, snapshot::SourceRole::editable, options, ctx);
      if (!tree) return tree.error().with_context("editable package " + pkg.name);
      source_roots.emplace_back(tree->root);
      snap.sources.push_back(std::move(*tree));
    }
  }
  std::sort(snap.sources.begin(), snap.sources.end(),
            [](const auto& a, const auto& b) { return a.root < b.root; });

  cache->start_save();  // written while the document is digested
  snap.created = rfc3339_now();
  snap.host = host_name();
  snap.envd_version = options.envd_version;
  {
    log::PhaseTimer t("snapshot", "digest");
    ENVD_TRY(out.digest, snapshot::digest_of(snap));
  }
  {
    log::PhaseTimer t("snapshot", "save stat cache (wait)");
    ENVD_TRY_VOID(cache->save());
  }
  out.files_hashed = ctx.progress.files_hashed.load();
  out.bytes_hashed = ctx.progress.bytes_hashed.load();
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  out.warnings = diagnostics.list();
  return out;
}

}  // namespace envd::agent
