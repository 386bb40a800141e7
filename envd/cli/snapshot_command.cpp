// `envd snapshot`: scan the environment(s) and source tree, print a summary (or --json), write the
// whole document with -o.
#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "agent/snapshotter.hpp"
#include "envd/cli/commands.hpp"
#include "envd/cli/defaults.hpp"
#include "envd/cli/format.hpp"
#include "envd/cli/progress.hpp"
#include "envd/util/atomic_file.hpp"
#include "envd/util/log.hpp"

namespace envd::cli {
namespace {

struct SnapshotArgs {
  ScanArgs scan;
  std::string output;
  bool json = false;
};

void print_summary(const agent::SnapshotOutcome& out) {
  const auto& snap = out.snapshot;
  std::cout << "snapshot " << out.digest.str() << "\n";
  for (const auto& env : snap.environments) {
    std::size_t conda = 0, pip = 0, editable = 0;
    for (const auto& p : env.packages) {
      (p.manager == snapshot::PackageManager::conda ? conda : pip) += 1;
      if (p.editable_root) ++editable;
    }
    std::uint64_t files = env.unowned.size();
    for (const auto& p : env.packages) files += p.files.size();
    std::cout << "  " << snapshot::to_string(env.kind) << (env.partial ? " (base interpreter)" : "")
              << "  " << env.prefix;
    if (!env.python_version.empty()) std::cout << "  Python " << env.python_version;
    std::cout << "\n    " << env.packages.size() << " packages (" << conda << " conda, " << pip
              << " pip";
    if (editable > 0) std::cout << ", " << editable << " editable";
    std::cout << "), " << with_commas(files) << " files (" << with_commas(env.unowned.size())
              << " unowned)\n";
  }
  for (const auto& src : snap.sources) {
    std::cout << "  " << snapshot::to_string(src.role) << "  " << src.root;
    if (src.git_commit) std::cout << "  git " << src.git_commit->substr(0, 12);
    if (src.dirty) std::cout << " (dirty)";
    std::cout << "\n    " << with_commas(src.files.size()) << " files\n";
  }
  auto t = snapshot::totals(snap);
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.2f", out.seconds);
  std::cout << with_commas(t.files) << " files, " << human_bytes(t.bytes) << " in " << secs
            << " s (read " << with_commas(out.files_hashed) << " files, "
            << human_bytes(out.bytes_hashed) << "; the rest from the stat cache)";
  if (!out.warnings.empty()) std::cout << "; " << out.warnings.size() << " warnings on stderr";
  std::cout << "\n";
}

void print_json(const agent::SnapshotOutcome& out) {
  auto t = snapshot::totals(out.snapshot);
  nlohmann::json envs = nlohmann::json::array();
  for (const auto& env : out.snapshot.environments) {
    envs.push_back({{"kind", std::string(snapshot::to_string(env.kind))},
                    {"prefix", env.prefix},
                    {"packages", env.packages.size()}});
  }
  nlohmann::json j = {{"snapshot_digest", out.digest.str()},
                      {"environments", envs},
                      {"files", t.files},
                      {"bytes", t.bytes},
                      {"seconds", out.seconds}};
  std::cout << j.dump() << std::endl;
}

int run_snapshot(const SnapshotArgs& args) {
  auto options = snapshot_options(args.scan);
  if (!options) {
    std::cerr << "envd snapshot: " << options.error().message() << "\n";
    return exit_code_for(options.error());
  }

  agent::HashProgress progress;
  Result<agent::SnapshotOutcome> outcome = [&] {
    HashProgressLine line(progress, "hashing");
    return agent::take_snapshot(*options, &progress);
  }();
  if (!outcome) {
    log::error("snapshot", "snapshot failed", {{"error", outcome.error().message()}});
    std::cerr << "envd snapshot: " << outcome.error().message() << "\n";
    return exit_code_for(outcome.error());
  }
  if (!args.output.empty()) {
    auto doc = snapshot::to_json(outcome->snapshot);
    if (!doc) {
      std::cerr << "envd snapshot: " << doc.error().message() << "\n";
      return 1;
    }
    if (auto w = write_file_atomic(args.output, *doc); !w) {
      std::cerr << "envd snapshot: write " << args.output << ": " << w.error().message() << "\n";
      return 1;
    }
  }
  if (args.json) {
    print_json(*outcome);
  } else {
    print_summary(*outcome);
  }
  return 0;
}

}  // namespace

void add_snapshot_command(CLI::App& app, int& exit_code) {
  auto args = std::make_shared<SnapshotArgs>();
  auto* cmd = app.add_subcommand(
      "snapshot",
      "Inventory the Python environment(s) and source tree: every file by SHA-256, grouped by "
      "package");
  add_scan_options(*cmd, args->scan);
  cmd->add_option("-o,--output", args->output, "Write the whole snapshot document (JSON) to FILE");
  cmd->add_flag("--json", args->json, "Print one JSON object with the summary on stdout");
  cmd->callback([args, &exit_code] { exit_code = run_snapshot(*args); });
}

void add_version_command(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("version", "Print the envd version");
  cmd->callback([&exit_code] {
    std::cout << "envd " << ENVD_VERSION << "\n";
    exit_code = 0;
  });
}

}  // namespace envd::cli
