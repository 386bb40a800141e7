// `envd diff`: what changed since the last push of this name from this machine, read before a
// job to know what the cluster will get: packages added, removed, upgraded, downgraded, packages
// whose files changed, unowned and source files. A table, or one JSON object with --json.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <iostream>
#include <nlohmann/json.hpp>

#include "agent/snapshotter.hpp"
#include "envd/cli/commands.hpp"
#include "envd/cli/defaults.hpp"
#include "envd/cli/progress.hpp"
#include "envd/cli/push_session.hpp"
#include "envd/cli/user_config.hpp"
#include "envd/snapshot/snapshot_diff.hpp"

namespace envd::cli {
namespace {

using snapshot::FileChanges;
using snapshot::Presence;
using snapshot::SnapshotDiff;
using json = nlohmann::json;

// Files listed per list in the table; --json lists all.
constexpr std::size_t k_files_shown = 20;

struct DiffArgs {
  ScanArgs scan;
  std::string name;
  bool json = false;
};

int fail(std::string_view what, const Error& e) {
  std::cerr << "envd diff: " << what << (what.empty() ? "" : ": ") << e.message() << "\n";
  return exit_code_for(e);
}

std::string version_text(const std::string& version, const std::string& build) {
  return build.empty() ? version : version + " (" + build + ")";
}

json files_json(const FileChanges& f) {
  return {{"added", f.added}, {"removed", f.removed}, {"modified", f.modified}};
}

json ref_json(const snapshot::PackageRef& p) {
  json j = {{"name", p.name}, {"manager", snapshot::to_string(p.manager)}, {"version", p.version}};
  if (!p.build.empty()) j["build"] = p.build;
  return j;
}

json change_json(const snapshot::VersionChange& c) {
  json j = {{"name", c.name},
            {"manager", snapshot::to_string(c.manager)},
            {"old", c.old_version},
            {"new", c.new_version}};
  if (!c.old_build.empty() || !c.new_build.empty()) {
    j["old_build"] = c.old_build;
    j["new_build"] = c.new_build;
  }
  return j;
}

json diff_json(const SnapshotDiff& d) {
  json envs = json::array();
  for (const auto& e : d.environments) {
    json added = json::array();
    json removed = json::array();
    json upgraded = json::array();
    json downgraded = json::array();
    json changed = json::array();
    for (const auto& p : e.added) added.push_back(ref_json(p));
    for (const auto& p : e.removed) removed.push_back(ref_json(p));
    for (const auto& c : e.upgraded) upgraded.push_back(change_json(c));
    for (const auto& c : e.downgraded) downgraded.push_back(change_json(c));
    for (const auto& c : e.changed) {
      changed.push_back({{"name", c.name},
                         {"manager", snapshot::to_string(c.manager)},
                         {"version", c.version},
                         {"files", files_json(c.files)},
                         {"fields", c.fields}});
    }
    envs.push_back({{"prefix", e.prefix},
                    {"kind", snapshot::to_string(e.kind)},
                    {"status", snapshot::to_string(e.presence)},
                    {"added", added},
                    {"removed", removed},
                    {"upgraded", upgraded},
                    {"downgraded", downgraded},
                    {"files_changed", changed},
                    {"unowned", files_json(e.unowned)},
                    {"other", e.other}});
  }
  json sources = json::array();
  for (const auto& s : d.sources) {
    sources.push_back({{"root", s.root},
                       {"role", snapshot::to_string(s.role)},
                       {"status", snapshot::to_string(s.presence)},
                       {"files", files_json(s.files)},
                       {"other", s.other}});
  }
  return {{"environments", envs}, {"sources", sources}, {"other", d.other}};
}

// Rows padded into columns.
void print_table(const std::vector<std::vector<std::string>>& rows, const std::string& indent) {
  std::vector<std::size_t> width;
  for (const auto& row : rows) {
    width.resize(std::max(width.size(), row.size()));
    for (std::size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line = indent;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(width[i] - row[i].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    std::cout << line << "\n";
  }
}

// "A path", "D path", "M path" lines, at most k_files_shown of each kind.
void print_files(const FileChanges& f, const std::string& indent) {
  auto list = [&](const std::vector<std::string>& paths, char mark) {
    const std::size_t shown = std::min(paths.size(), k_files_shown);
    for (std::size_t i = 0; i < shown; ++i) std::cout << indent << mark << " " << paths[i] << "\n";
    if (shown < paths.size()) {
      std::cout << indent << "  ... and " << (paths.size() - shown) << " more (--json lists all)\n";
    }
  };
  list(f.added, 'A');
  list(f.removed, 'D');
  list(f.modified, 'M');
}

std::string file_counts(const FileChanges& f) {
  std::vector<std::string> parts;
  if (!f.added.empty()) parts.push_back(std::to_string(f.added.size()) + " added");
  if (!f.removed.empty()) parts.push_back(std::to_string(f.removed.size()) + " removed");
  if (!f.modified.empty()) parts.push_back(std::to_string(f.modified.size()) + " modified");
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ", ") + p;
  return out.empty() ? "metadata" : out + (f.count() == 1 ? " file" : " files");
}

void print_human(const SnapshotDiff& d) {
  for (const auto& e : d.environments) {
    std::cout << "environment " << e.prefix << " (" << snapshot::to_string(e.kind) << ")";
    if (e.presence != Presence::both) std::cout << ": " << snapshot::to_string(e.presence);
    std::cout << "\n";
    std::vector<std::vector<std::string>> rows = {{"CHANGE", "PACKAGE", "BEFORE", "AFTER"}};
    for (const auto& p : e.added)
      rows.push_back({"added", p.name, "-", version_text(p.version, p.build)});
    for (const auto& p : e.removed)
      rows.push_back({"removed", p.name, version_text(p.version, p.build), "-"});
    for (const auto& c : e.upgraded) {
      rows.push_back({"upgraded", c.name, version_text(c.old_version, c.old_build),
                      version_text(c.new_version, c.new_build)});
    }
    for (const auto& c : e.downgraded) {
      rows.push_back({"downgraded", c.name, version_text(c.old_version, c.old_build),
                      version_text(c.new_version, c.new_build)});
    }
    for (const auto& c : e.changed)
      rows.push_back({"files", c.name, c.version, c.version + ": " + file_counts(c.files)});
    if (rows.size() > 1) print_table(rows, "  ");
    for (const auto& c : e.changed) {
      if (c.files.empty() && c.fields.empty()) continue;
      std::cout << "  " << c.name << ":\n";
      print_files(c.files, "    ");
      for (const auto& field : c.fields) std::cout << "    " << field << "\n";
    }
    if (!e.unowned.empty()) {
      std::cout << "  files owned by no package:\n";
      print_files(e.unowned, "    ");
    }
    for (const auto& o : e.other) std::cout << "  " << o << "\n";
  }
  for (const auto& s : d.sources) {
    std::cout << "source " << s.root << " (" << snapshot::to_string(s.role) << ")";
    if (s.presence != Presence::both) std::cout << ": " << snapshot::to_string(s.presence);
    std::cout << "\n";
    print_files(s.files, "  ");
    for (const auto& o : s.other) std::cout << "  " << o << "\n";
  }
  for (const auto& o : d.other) std::cout << o << "\n";
}

int run_diff(const DiffArgs& args) {
  auto config = load_user_config();
  if (!config) return fail("", config.error());
  auto options = snapshot_options(args.scan, *config);
  if (!options) return fail("find the environment", options.error());

  agent::HashProgress progress;
  auto now = [&] {
    HashProgressLine line(progress, "hashing");
    return agent::take_snapshot(*options, &progress);
  }();
  if (!now) return fail("snapshot", now.error());
  auto name = resolve_image_name(args.name.empty() ? config->name : args.name, now->snapshot);
  if (!name) return fail("--name", name.error());
  const std::filesystem::path home = envd_home();
  auto last = last_pushed_snapshot(home, name->repository);
  if (!last) return fail("read the last push of " + name->repository, last.error());
  if (!*last) {
    std::cerr << "envd diff: " << name->repository << " was never pushed from this machine (no "
              << "record under " << (home / "pushed").string() << "); run `envd push"
              << (args.name.empty() ? "" : " --name " + args.name) << "` first\n";
    return 1;
  }
  const snapshot::Snapshot& before = **last;
  auto before_digest = snapshot::digest_of(before);
  if (!before_digest) return fail("the last push's snapshot", before_digest.error());
  const SnapshotDiff d = snapshot::diff_snapshots(before, now->snapshot);

  if (args.json) {
    json j = diff_json(d);
    j["repository"] = name->repository;
    j["previous_snapshot_digest"] = before_digest->str();
    j["snapshot_digest"] = now->digest.str();
    j["previous_created"] = before.created;
    j["changed"] = !d.empty();
    j["summary"] = snapshot::summary_line(d);
    std::cout << j.dump() << std::endl;
    return 0;
  }
  const std::string since = name->repository + " (snapshot " + before_digest->str().substr(0, 19) +
                            (before.created.empty() ? "" : ", pushed " + before.created) + ")";
  if (d.empty()) {
    std::cout << "No changes since the last push of " << since << ".\n";
    return 0;
  }
  std::cout << "Changes since the last push of " << since << ":\n";
  print_human(d);
  std::cout << "Summary: " << snapshot::summary_line(d) << "\n";
  return 0;
}

}  // namespace

void add_diff_command(CLI::App& app, int& exit_code) {
  auto args = std::make_shared<DiffArgs>();
  auto* cmd = app.add_subcommand("diff", "Show what changed since the last push of this name");
  add_scan_options(*cmd, args->scan);
  cmd->add_option("--name", args->name,
                  "Image name NAMESPACE/NAME (a tag is ignored: pushes are recorded per name); "
                  "default: the config's name, else local/<environment name>");
  cmd->add_flag("--json", args->json, "Print one JSON object with the differences on stdout");
  cmd->footer(
      "Snapshots the environment now and compares it with the snapshot of the last `envd push` "
      "of this name from this machine (recorded under $ENVD_HOME/pushed): packages added, "
      "removed, upgraded, downgraded, packages whose files changed at the same version, files "
      "owned by no package, source files. Exit codes: 0 compared (with or without changes), 1 "
      "failed or nothing pushed yet, 2 usage.");
  cmd->callback([args, &exit_code] { exit_code = run_diff(*args); });
}

}  // namespace envd::cli
