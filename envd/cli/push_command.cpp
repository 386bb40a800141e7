// `envd push`: snapshot the environment and build its image, on a remote builder (--builder,
// ENVD_BUILDER or the config's builder) through the envd API, else on the embedded builder under
// $ENVD_HOME/builder, where `envd builder serve --data $ENVD_HOME/builder` can serve it later.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>

#include "envd/cli/commands.hpp"
#include "envd/cli/defaults.hpp"
#include "envd/cli/format.hpp"
#include "envd/cli/progress.hpp"
#include "envd/cli/push_session.hpp"
#include "envd/cli/user_config.hpp"

namespace envd::cli {
namespace {

struct PushArgs {
  ScanArgs scan;
  TargetArgs target;
  bool json = false;
};

int fail(std::string_view what, const Error& e) {
  std::cerr << "envd push: " << what << (what.empty() ? "" : ": ") << e.message() << "\n";
  return exit_code_for(e);
}

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", s);
  return buf;
}

// The progress bar's text for the current phase.
class PushDisplay {
 public:
  explicit PushDisplay(const PushProgress& p) : m_progress(p) {}

  std::string render() {
    switch (m_progress.phase.load()) {
      case 0:
        return hash_progress_text(m_progress.hashing, "hashing");
      case 1: {
        auto now = std::chrono::steady_clock::now();
        if (!m_upload_started) m_upload_started = now;
        double s = std::chrono::duration<double>(now - *m_upload_started).count();
        std::uint64_t done = m_progress.upload_bytes_done.load();
        std::string rate =
            s > 0.2
                ? ", " + human_bytes(static_cast<std::uint64_t>(static_cast<double>(done) / s)) +
                      "/s"
                : "";
        return "uploading: " + human_bytes(done) + "/" +
               human_bytes(m_progress.upload_bytes_total.load()) + rate;
      }
      case 2:
        return "building: " + std::to_string(m_progress.layers_done.load()) + "/" +
               std::to_string(m_progress.layers_total.load()) + " layers";
      default:
        return "finishing";
    }
  }

 private:
  const PushProgress& m_progress;
  std::optional<std::chrono::steady_clock::time_point> m_upload_started;
};

void print_json(const PushOutcome& out) {
  nlohmann::json j = {{"image", out.image},
                      {"tag", out.tag},
                      {"manifest_digest", out.manifest_digest.str()},
                      {"layers", out.layers},
                      {"layers_reused", out.layers_reused},
                      {"bytes_uploaded", out.bytes_uploaded},
                      {"seconds", out.seconds},
                      // Beyond DESIGN.md §5's fields: what scripts and benchmarks also use.
                      {"repository", out.repository},
                      {"builder", out.builder.empty() ? "embedded" : out.builder},
                      {"snapshot_digest", out.snapshot_digest.str()},
                      {"unchanged", out.unchanged},
                      {"blobs_uploaded", out.blobs_uploaded},
                      {"snapshot_bytes", out.snapshot_bytes},
                      {"bytes_built", out.bytes_built},
                      {"files_hashed", out.files_hashed},
                      {"snapshot_seconds", out.snapshot_seconds},
                      {"upload_seconds", out.upload_seconds},
                      {"build_seconds", out.build_seconds}};
  std::cout << j.dump() << std::endl;
}

void print_summary(const PushOutcome& out, const PushTarget& target) {
  auto totals = snapshot::totals(out.snapshot);
  std::cout << "pushed " << out.repository << ":" << out.tag << "\n"
            << "  image " << out.image << "\n"
            << "  " << totals.packages << " packages, " << with_commas(totals.files) << " files, "
            << human_bytes(totals.bytes) << "\n";
  if (out.unchanged) {
    std::cout << "  " << out.layers
              << " layers, unchanged since the last push: nothing uploaded or built";
  } else {
    std::cout << "  " << out.layers << " layers (" << out.layers_reused << " reused, "
              << (out.layers - out.layers_reused) << " new, " << human_bytes(out.bytes_built)
              << " written)";
    if (!out.builder.empty())
      std::cout << "; sent " << human_bytes(out.bytes_uploaded) << " ("
                << with_commas(out.blobs_uploaded) << (out.blobs_uploaded == 1 ? " file" : " files")
                << " and the snapshot)";
  }
  std::cout << " in " << seconds_text(out.seconds) << " s, ";
  if (out.builder.empty()) {
    std::cout << "embedded builder at " << (target.envd_home / "builder").string() << "\n";
  } else {
    std::cout << "builder " << out.builder << "\n";
  }
}

int run_push(const PushArgs& args) {
  // cpp-httplib writes without MSG_NOSIGNAL: a builder closing a connection mid-upload must fail
  // that request (EPIPE), not kill envd.
  ::signal(SIGPIPE, SIG_IGN);
  auto config = load_user_config();
  if (!config) return fail("", config.error());
  auto options = snapshot_options(args.scan, *config);
  if (!options) return fail("find the environment", options.error());
  auto target =
      resolve_push_target(args.target.builder, args.target.compression, *config, envd_home());
  if (!target) return fail("", target.error());

  PushRequest request{std::move(*options),
                      args.target.name.empty() ? config->name : args.target.name};
  PushProgress progress;
  PushDisplay display(progress);
  auto result = [&] {
    ProgressLine line([&display] { return display.render(); });
    progress.on_step = [&line](std::string_view text) {
      line.print("envd push: " + std::string(text));
    };
    return push_once(request, *target, &progress);
  }();
  if (!result) return fail("", result.error());
  if (args.json) {
    print_json(*result);
  } else {
    print_summary(*result, *target);
  }
  return 0;
}

}  // namespace

void add_push_command(CLI::App& app, int& exit_code) {
  auto args = std::make_shared<PushArgs>();
  auto* cmd =
      app.add_subcommand("push", "Snapshot the environment and build its image on the builder");
  add_scan_options(*cmd, args->scan);
  add_target_options(*cmd, args->target);
  cmd->add_flag("--json", args->json, "Print one JSON object with the result on stdout");
  cmd->footer(
      "Uploads only the files the builder lacks (an interrupted push resumes where it stopped) "
      "and prints the image reference. The token for a builder comes from $ENVD_TOKEN, else the "
      "config's token or token_file. Config: $ENVD_CONFIG, else ~/.config/envd/config.yaml "
      "(schemas/envd-config.schema.json). Exit codes: 0 pushed, 1 failed, 2 usage.");
  cmd->callback([args, &exit_code] { exit_code = run_push(*args); });
}

}  // namespace envd::cli
