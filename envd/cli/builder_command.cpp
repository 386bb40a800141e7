// `envd builder serve`: the builder as a service: the OCI Distribution API and the envd API
// (/envd/v1/) over a builder data directory (by default the embedded builder's, so that it serves
// what `envd push` built). Runs until SIGTERM or SIGINT, then stops cleanly (exit 0).
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <iostream>

#include "builder/auth.hpp"
#include "builder/builder_config.hpp"
#include "builder/builder_state.hpp"
#include "builder/envd_api.hpp"
#include "builder/mirror_sync.hpp"
#include "builder/registry_server.hpp"
#include "envd/cli/commands.hpp"
#include "envd/cli/defaults.hpp"
#include "envd/cli/stop_signals.hpp"
#include "envd/util/listen_address.hpp"
#include "envd/util/log.hpp"

namespace envd::cli {
namespace {

struct ServeArgs {
  std::string listen;
  std::string data;
  std::string config;
};

int fail(std::string_view what, const Error& e) {
  std::cerr << "envd builder serve: " << what << ": " << e.message() << "\n";
  return exit_code_for(e);
}

int run_serve(const ServeArgs& args) {
  StopSignals stop_signals;  // before any thread exists
  // A blob batch keeps each verified blob's file open until its group commits (up to 256 per
  // request in flight): the usual soft limit of 1024 open files is too low for a few at once.
  if (rlimit files{}; ::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = std::min<rlim_t>(files.rlim_max, 65536);
    ::setrlimit(RLIMIT_NOFILE, &files);
  }

  builder::BuilderConfig config;
  if (!args.config.empty()) {
    auto loaded = builder::load_builder_config(args.config);
    if (!loaded) return fail("config", loaded.error());
    config = std::move(*loaded);
  }
  if (!args.listen.empty()) {
    auto address = parse_listen_address(args.listen);
    if (!address) {
      std::cerr << "envd builder serve: --listen: " << address.error().message() << "\n";
      return 2;
    }
    std::tie(config.listen_host, config.listen_port) = *address;
  }
  std::filesystem::path data = !args.data.empty()         ? std::filesystem::path(args.data)
                               : !config.data_dir.empty() ? config.data_dir
                                                          : envd_home() / "builder";

  // Before anything is created: a refused address must not leave a data directory behind.
  if (auto auth = builder::Authenticator::create(config.auth, config.listen_host); !auth)
    return fail("start", auth.error());
  auto state = builder::BuilderState::open(data);
  if (!state) return fail("open the builder data", state.error());
  builder::MirrorSyncOptions mirror_options;
  mirror_options.mirrors = config.mirrors;
  mirror_options.user_agent = std::string("envd/") + ENVD_VERSION;
  auto mirrors = builder::MirrorSync::create(**state, mirror_options);
  if (!mirrors) return fail("config", mirrors.error());
  std::shared_ptr<builder::MirrorSync> mirror_sync = std::move(*mirrors);
  builder::ServerOptions options;
  options.host = config.listen_host;
  options.port = config.listen_port;
  options.limits = config.limits;
  options.auth = config.auth;
  options.tls = config.tls;
  options.upload_dir = data / "uploads";
  // Tag watchers wake when an OCI client pushes a tag, not only when a build moves one. The API
  // exists only once the server does; requests start after start(), when the slot is set.
  auto api_slot = std::make_shared<std::shared_ptr<builder::EnvdApi>>();
  options.on_tag_changed = [api_slot, mirror_sync](const std::string& repository) {
    if (*api_slot) (*api_slot)->tags_changed();
    mirror_sync->notify(repository);
  };
  auto server = builder::RegistryServer::create(*(*state)->blobs, *(*state)->index, options);
  if (!server) return fail("start", server.error());

  builder::EnvdApiOptions api_options;
  api_options.limits = config.limits;
  api_options.compression = config.compression;
  api_options.plan.layer_cap = config.layer_cap;
  api_options.envd_version = ENVD_VERSION;
  api_options.on_image_built = [mirror_sync](const std::string& repository, const std::string&) {
    mirror_sync->notify(repository);
  };
  auto api = builder::add_envd_api(**server, **state, api_options);
  *api_slot = api;

  auto port = (*server)->start();
  if (!port) return fail("start", port.error());
  const std::string& host = config.listen_host;
  std::string shown = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  std::cout << "envd builder listening on " << (config.tls ? "https" : "http") << "://" << shown
            << ":" << *port << " (data " << data.string() << ")" << std::endl;

  log::info("builder", "stopping", {{"signal", stop_signals.wait()}});
  api->shutdown();  // ends long polls first, so that the server's stop does not wait for them
  (*server)->stop();
  return 0;
}

}  // namespace

void add_builder_command(CLI::App& app, int& exit_code) {
  auto* builder = app.add_subcommand("builder", "Run the builder service");
  builder->require_subcommand(1);
  auto args = std::make_shared<ServeArgs>();
  auto* serve = builder->add_subcommand(
      "serve", "Serve the OCI Distribution API and the envd API over a builder data directory");
  serve->footer(
      "Serves /v2/ (OCI Distribution API) and /envd/v1/ (envd API) until SIGTERM or SIGINT, then "
      "exits 0. Prints \"envd builder listening on URL (data DIR)\" on stdout once listening. "
      "Without tokens in the config only loopback addresses are allowed.");
  serve->add_option("--listen", args->listen,
                    "HOST:PORT to listen on ([IPv6]:PORT; port 0: any free port, printed); "
                    "default: the config's listen, else 127.0.0.1:5000");
  serve->add_option("--data", args->data,
                    "Builder data directory; default: the config's data_dir, else "
                    "$ENVD_HOME/builder (what `envd push` builds into without --builder)");
  serve
      ->add_option("--config", args->config,
                   "Builder config YAML (schemas/builder-config.schema.json): tokens, TLS, "
                   "limits, compression, layer cap")
      ->check(CLI::ExistingFile);
  serve->callback([args, &exit_code] { exit_code = run_serve(*args); });
  add_builder_mirror_command(*builder, exit_code);
}

}  // namespace envd::cli
