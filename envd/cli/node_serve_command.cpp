// `envd node serve`: the node daemon (DESIGN.md §7) in the foreground: keeps the configured
// workers running in their images, rolls them when a tag moves, serves the status endpoint.
// Runs until SIGTERM or SIGINT, then stops the workers gracefully and exits 0.

#include <CLI/CLI.hpp>
#include <iostream>
#include <mutex>

#include "builder/builder_state.hpp"
#include "builder/local_image_source.hpp"
#include "envd/cli/commands.hpp"
#include "envd/cli/defaults.hpp"
#include "envd/cli/stop_signals.hpp"
#include "envd/node/node_config.hpp"
#include "envd/node/node_daemon.hpp"
#include "envd/node/overlay_mount.hpp"
#include "envd/util/listen_address.hpp"
#include "envd/util/log.hpp"

namespace envd::cli {
namespace {

namespace fs = std::filesystem;

struct ServeArgs {
  std::string config;
  std::string data;
  std::string listen;
};

int fail(std::string_view what, const Error& e) {
  std::cerr << "envd node serve: " << what << ": " << e.message() << "\n";
  return exit_code_for(e);
}

// An image in the embedded builder's store, keeping the store open as long as it is used.
class LocalSource final : public registry::ImageSource {
 public:
  LocalSource(std::shared_ptr<builder::BuilderState> state,
              std::unique_ptr<registry::StoreImageSource> source)
      : m_state(std::move(state)), m_source(std::move(source)) {}
  Result<registry::Manifest> manifest(const std::string& reference) override {
    return m_source->manifest(reference);
  }
  Result<std::unique_ptr<store::BlobReader>> open_blob(const oci::Descriptor& blob) override {
    return m_source->open_blob(blob);
  }
  std::string describe() const override { return m_source->describe(); }

 private:
  std::shared_ptr<builder::BuilderState> m_state;
  std::unique_ptr<registry::StoreImageSource> m_source;
};

// References without a host name the store `envd push` wrote under $ENVD_HOME/builder; it is
// opened on first use (a node that pulls only from registries never creates it).
node::LocalSourceFactory local_source_factory() {
  struct Shared {
    std::mutex mutex;
    std::shared_ptr<builder::BuilderState> state;
  };
  auto shared = std::make_shared<Shared>();
  return
      [shared](const registry::Reference& ref) -> Result<std::unique_ptr<registry::ImageSource>> {
        std::lock_guard lock(shared->mutex);
        if (!shared->state) {
          fs::path dir = envd_home() / "builder";
          std::error_code ec;
          if (!fs::is_directory(dir, ec))
            return Error(ErrorCode::not_found,
                         "no local builder store at " + dir.string() + " (envd push writes one)");
          auto state = builder::BuilderState::open(dir);
          if (!state) return state.error();
          shared->state = std::move(*state);
        }
        auto source = builder::local_image_source(*shared->state, ref.repository);
        return std::unique_ptr<registry::ImageSource>(
            std::make_unique<LocalSource>(shared->state, std::move(source)));
      };
}

int run_serve(const ServeArgs& args) {
  StopSignals stop_signals;  // before any thread exists

  node::NodeConfig config;
  if (!args.config.empty()) {
    auto loaded = node::load_node_config(args.config);
    if (!loaded) return fail("config", loaded.error());
    config = std::move(*loaded);
  } else {
    log::warn("node", "no --config: no workers to run");
  }
  if (!args.listen.empty()) {
    auto address = parse_listen_address(args.listen);
    if (!address) {
      std::cerr << "envd node serve: --listen: " << address.error().message() << "\n";
      return 2;
    }
    std::tie(config.listen_host, config.listen_port) = *address;
  }
  if (!args.data.empty())
    config.data_dir = fs::absolute(args.data).lexically_normal();
  else if (config.data_dir.empty())
    config.data_dir = envd_home() / "node";

  // Before any thread exists: overlay mounts of environments live in a mount namespace of the
  // daemon's own, which its workers inherit.
  if (config.assembly == node::Assembly::automatic) {
    if (auto entered = node::enter_private_mount_namespace(); !entered)
      log::info("node", "environments are assembled by hardlinks",
                {{"error", entered.error().message()}});
  }

  std::string host = config.listen_host;
  node::NodeDaemonOptions options;
  options.config = std::move(config);
  options.local_source = local_source_factory();
  auto daemon = node::NodeDaemon::start(std::move(options));
  if (!daemon) return fail("start", daemon.error());
  std::string shown = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  std::cout << "envd node listening on http://" << shown << ":" << (*daemon)->status_port()
            << " (data " << (*daemon)->data_dir().string() << ")" << std::endl;

  log::info("node", "stopping", {{"signal", stop_signals.wait()}});
  (*daemon)->stop();
  return 0;
}

}  // namespace

void add_node_serve_command(CLI::App& node_app, int& exit_code) {
  auto args = std::make_shared<ServeArgs>();
  auto* serve = node_app.add_subcommand(
      "serve", "Keep workers running in their images on this host; roll them when tags move");
  serve->footer(
      "Pulls each worker's image (once, however many workers want it), starts its replicas in "
      "the image's environment, restarts them with backoff, watches tags (the envd builder's "
      "long poll, else polling) and rolls workers onto a moved tag's new image: new replicas "
      "first, old ones stopped once the new ones are ready. Status: /healthz, /v1/images, "
      "/v1/workers, /metrics. Prints \"envd node listening on URL (data DIR)\" on stdout once "
      "the status endpoint listens. Runs until SIGTERM or SIGINT: workers get SIGTERM, then "
      "SIGKILL after their stop_grace_period; exits 0.");
  serve
      ->add_option("--config", args->config,
                   "Node config YAML (schemas/node-config.schema.json): registries, cache quota, "
                   "isolation, workers")
      ->check(CLI::ExistingFile);
  serve->add_option("--data", args->data,
                    "Data directory; default: the config's data_dir, else $ENVD_HOME/node");
  serve->add_option("--listen", args->listen,
                    "HOST:PORT of the status endpoint (port 0: any free port, printed); "
                    "default: the config's listen, else 127.0.0.1:5001");
  serve->callback([args, &exit_code] { exit_code = run_serve(*args); });
}

}  // namespace envd::cli
