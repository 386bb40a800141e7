// `envd push`: snapshot the environment and build its image. Without a builder URL (flag,
// ENVD_BUILDER or config) the embedded builder stores the image under $ENVD_HOME/builder, where
// `envd builder serve --data $ENVD_HOME/builder` can serve it later.
#include <CLI/CLI.hpp>
#include <cctype>
#include <cstdlib>
#include <iostream>
#include <nlohmann/json.hpp>

#include "agent/snapshotter.hpp"
#include "builder/builder_state.hpp"
#include "builder/content_source.hpp"
#include "envd/cli/commands.hpp"
#include "envd/cli/defaults.hpp"
#include "envd/cli/format.hpp"
#include "envd/cli/progress.hpp"
#include "envd/util/log.hpp"

namespace envd::cli {
namespace {

struct PushArgs {
  std::vector<std::string> prefixes;
  std::string src;
  bool no_src = false;
  std::string name;
  std::string builder;
  bool json = false;
  std::string compression = "zstd";
  std::vector<std::string> allow_secrets;
};

// "My Env_2" -> "my-env_2": a repository path component (distribution spec name grammar).
std::string repository_component(std::string_view s) {
  std::string out;
  for (char c : s) {
    char l = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    bool ok = (l >= 'a' && l <= 'z') || (l >= '0' && l <= '9');
    if (ok) {
      out += l;
    } else if (!out.empty() && out.back() != '-' && out.back() != '.') {
      out += (l == '.' || l == '_') ? l : '-';
    }
  }
  while (!out.empty() && !std::isalnum(static_cast<unsigned char>(out.back()))) out.pop_back();
  return out.empty() ? "env" : out;
}

int fail(std::string_view what, const Error& e) {
  std::cerr << "envd push: " << what << ": " << e.message() << "\n";
  return exit_code_for(e);
}

int run_push(const PushArgs& args) {
  std::string builder_url = args.builder;
  if (builder_url.empty()) {
    if (const char* v = std::getenv("ENVD_BUILDER"); v != nullptr) builder_url = v;
  }
  if (!builder_url.empty()) {
    std::cerr << "envd push: pushing to a remote builder (" << builder_url
              << ") is not implemented yet; unset ENVD_BUILDER and omit --builder to use the "
                 "embedded builder\n";
    return 1;
  }
  builder::Compression compression = builder::Compression::zstd;
  if (args.compression == "gzip") compression = builder::Compression::gzip;

  auto options = snapshot_options(args.prefixes, args.src, args.no_src, args.allow_secrets);
  if (!options) return fail("find the environment", options.error());

  agent::HashProgress progress;
  auto snap = [&] {
    HashProgressLine line(progress, "hashing");
    return agent::take_snapshot(*options, &progress);
  }();
  if (!snap) return fail("snapshot", snap.error());

  std::string name = args.name;
  std::string tag = "latest";
  if (auto colon = name.rfind(':');
      colon != std::string::npos && name.find('/', colon) == std::string::npos) {
    tag = name.substr(colon + 1);
    name = name.substr(0, colon);
  }
  if (name.empty()) {
    std::string env_name = snap->snapshot.environments.front().name;
    name = "local/" + repository_component(env_name);
  }
  if (name.find('/') == std::string::npos) name = "local/" + name;

  auto state = builder::BuilderState::open(envd_home() / "builder");
  if (!state) return fail("open the embedded builder", state.error());
  builder::BuildOptions build;
  build.repository = name;
  build.tag = tag;
  build.compression = compression;
  build.envd_version = ENVD_VERSION;
  builder::FileContentSource files;
  auto result = (*state)->builder->build(snap->snapshot, files, build);
  if (!result) return fail("build " + name + ":" + tag, result.error());

  double seconds = snap->seconds + result->seconds;
  std::string image = name + "@" + result->manifest_digest.str();
  if (args.json) {
    nlohmann::json j = {{"image", image},
                        {"tag", tag},
                        {"manifest_digest", result->manifest_digest.str()},
                        {"snapshot_digest", result->snapshot_digest.str()},
                        {"layers", result->layers},
                        {"layers_reused", result->layers_reused},
                        {"bytes_uploaded", 0},
                        {"bytes_built", result->bytes_written},
                        {"snapshot_seconds", snap->seconds},
                        {"build_seconds", result->seconds},
                        {"seconds", seconds}};
    std::cout << j.dump() << std::endl;
    return 0;
  }
  auto totals = snapshot::totals(snap->snapshot);
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.2f", seconds);
  std::cout << "pushed " << name << ":" << tag << "\n"
            << "  image " << image << "\n"
            << "  " << totals.packages << " packages, " << with_commas(totals.files) << " files, "
            << human_bytes(totals.bytes) << "\n"
            << "  " << result->layers << " layers (" << result->layers_reused << " reused, "
            << (result->layers - result->layers_reused) << " new, "
            << human_bytes(result->bytes_written) << " written) in " << secs
            << " s, embedded builder at " << (envd_home() / "builder").string() << "\n";
  return 0;
}

}  // namespace

void add_push_command(CLI::App& app, int& exit_code) {
  auto args = std::make_shared<PushArgs>();
  auto* cmd =
      app.add_subcommand("push", "Snapshot the environment and build its image on the builder");
  cmd->add_option("--prefix", args->prefixes,
                  "Environment prefix (repeatable); default: the active environment");
  cmd->add_option("--src", args->src,
                  "Source tree root; default: the git work tree around the current directory");
  cmd->add_flag("--no-src", args->no_src, "Capture no source tree");
  cmd->add_option("--name", args->name,
                  "Image name NAMESPACE/NAME[:TAG]; default: local/<environment name>:latest");
  cmd->add_option("--builder", args->builder,
                  "Builder URL (default: $ENVD_BUILDER; none: the embedded builder)");
  cmd->add_option("--compression", args->compression, "Layer compression")
      ->check(CLI::IsMember({"zstd", "gzip"}));
  cmd->add_flag("--json", args->json, "Print one JSON object with the result on stdout");
  cmd->add_option("--allow-secret", args->allow_secrets,
                  "Allow a source path the secret deny-list blocks (repeatable)");
  cmd->callback([args, &exit_code] { exit_code = run_push(*args); });
}

}  // namespace envd::cli
