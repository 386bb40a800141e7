// `envd node pull|run|ls|gc`: the node daemon's store and puller from the command line (DESIGN.md
// §5, §7). Local references (NAMESPACE/NAME[:TAG]) are read from the embedded builder's store
// under $ENVD_HOME/builder; `serve` is registered under `node` by node_serve_command.cpp.
#include <time.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>

#include "builder/builder_state.hpp"
#include "builder/local_image_source.hpp"
#include "envd/cli/commands.hpp"
#include "envd/cli/defaults.hpp"
#include "envd/cli/format.hpp"
#include "envd/cli/progress.hpp"
#include "envd/cli/user_config.hpp"
#include "envd/node/image_puller.hpp"
#include "envd/node/overlay_mount.hpp"
#include "envd/node/process.hpp"
#include "envd/node/sandbox.hpp"
#include "envd/util/atomic_file.hpp"
#include "envd/util/log.hpp"

namespace envd::cli {
namespace {

namespace fs = std::filesystem;

struct NodeArgs {
  std::string data;
  bool json = false;
  std::string reference;
  std::string token_file;
  std::string creds;
  unsigned parallel = 4;
  std::string assembly = "auto";  // pull: "hardlink"
  // run
  std::vector<std::string> command;
  std::string isolation = "auto";
  std::string pull = "missing";
  std::vector<std::string> env;
  // gc
  std::string quota;
  long long grace = 600;
};

int fail(std::string_view cmd, const Error& e) {
  std::cerr << "envd node " << cmd << ": " << e.message() << "\n";
  return exit_code_for(e);
}

fs::path data_dir(const NodeArgs& a) {
  return a.data.empty() ? envd_home() / "node" : fs::path(a.data);
}

std::string utc_text(std::int64_t unix_seconds) {
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// "10G", "512M", "1.5G", "1000": bytes, suffixes K, M, G, T in powers of 1024 (a trailing "B" or
// "iB" is accepted). Errors: invalid_argument naming the text.
Result<std::uint64_t> parse_size(std::string_view text) {
  auto bad = [&] {
    return Error(ErrorCode::invalid_argument,
                 "--quota: \"" + std::string(text) + "\" is not a size (e.g. 500M, 10G, 1048576)");
  };
  std::string_view t = text;
  if (t.ends_with("iB"))
    t.remove_suffix(2);
  else if (t.ends_with("B") && t.size() > 1 &&
           !std::isdigit(static_cast<unsigned char>(t[t.size() - 2])))
    t.remove_suffix(1);
  double unit = 1;
  if (!t.empty()) {
    switch (std::toupper(static_cast<unsigned char>(t.back()))) {
      case 'K':
        unit = 1024.0;
        break;
      case 'M':
        unit = 1024.0 * 1024;
        break;
      case 'G':
        unit = 1024.0 * 1024 * 1024;
        break;
      case 'T':
        unit = 1024.0 * 1024 * 1024 * 1024;
        break;
      default:
        break;
    }
    if (unit != 1) t.remove_suffix(1);
  }
  if (t.empty()) return bad();
  double value = 0;
  auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), value);
  if (ec != std::errc() || end != t.data() + t.size() || value < 0) return bad();
  return static_cast<std::uint64_t>(value * unit);
}

// The embedded builder's store as an image source, opened on first use and shared; each source
// holds the state, so it outlives them all.
node::LocalSourceFactory local_source_factory() {
  struct Shared {
    std::mutex mutex;
    std::shared_ptr<builder::BuilderState> state;
  };
  struct Source final : registry::ImageSource {
    std::shared_ptr<builder::BuilderState> state;
    std::unique_ptr<registry::StoreImageSource> inner;
    Result<registry::Manifest> manifest(const std::string& r) override {
      return inner->manifest(r);
    }
    Result<std::unique_ptr<store::BlobReader>> open_blob(const oci::Descriptor& b) override {
      return inner->open_blob(b);
    }
    std::string describe() const override { return inner->describe(); }
  };
  auto shared = std::make_shared<Shared>();
  return
      [shared](const registry::Reference& ref) -> Result<std::unique_ptr<registry::ImageSource>> {
        std::lock_guard guard(shared->mutex);
        if (!shared->state) {
          fs::path dir = envd_home() / "builder";
          std::error_code ec;
          if (!fs::is_directory(dir, ec))
            return Error(ErrorCode::not_found,
                         "no local store at " + dir.string() +
                             " (push with the embedded builder first, or name a registry host)");
          ENVD_TRY(auto opened, builder::BuilderState::open(dir));
          shared->state = std::move(opened);
        }
        auto source = std::make_unique<Source>();
        source->state = shared->state;
        source->inner = builder::local_image_source(*shared->state, ref.repository);
        return std::unique_ptr<registry::ImageSource>(std::move(source));
      };
}

// Credentials for the reference's registry: --token-file, else $ENVD_TOKEN, else the user
// config's token when its builder is that host; --creds USER:PASSWORD for basic/token auth.
Result<registry::ClientOptions> client_options(const NodeArgs& a, const std::string& reference) {
  registry::ClientOptions o;
  o.parallel_transfers = std::max(1u, a.parallel);
  auto ref = registry::parse_reference(reference);
  if (!ref || ref->is_local()) return o;
  registry::Credentials c;
  if (!a.token_file.empty()) {
    ENVD_TRY(auto text, read_file(a.token_file));
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
    if (text.empty())
      return Error(ErrorCode::invalid_argument, "--token-file " + a.token_file + " is empty");
    c.token = text;
  } else if (const char* t = std::getenv("ENVD_TOKEN"); t != nullptr && *t != '\0') {
    c.token = t;
  } else if (auto config = load_user_config(); config && !config->builder.empty()) {
    std::string host = config->builder.substr(config->builder.find("://") + 3);
    host = host.substr(0, host.find('/'));
    if (host == ref->host) {
      ENVD_TRY(c.token, config_token(*config));
      o.ca_file = config->ca_file.string();
    }
  }
  if (!a.creds.empty()) {
    auto colon = a.creds.find(':');
    if (colon == std::string::npos)
      return Error(ErrorCode::invalid_argument, "--creds: expected USER:PASSWORD");
    c.username = a.creds.substr(0, colon);
    c.password = a.creds.substr(colon + 1);
  }
  o.credentials[ref->host] = c;
  return o;
}

struct Node {
  std::unique_ptr<node::NodeStore> store;
  std::unique_ptr<node::ImagePuller> puller;
};

// Call first: with --assembly auto the process moves into a mount namespace of its own, where the
// overlays of environments are mounted, which a process running threads cannot.
Result<Node> open_node(const NodeArgs& a, const std::string& reference) {
  Node n;
  node::PullerOptions o;
  ENVD_TRY(o.assembly, node::parse_assembly(a.assembly));
  if (o.assembly == node::Assembly::automatic) {
    if (auto entered = node::enter_private_mount_namespace(); !entered)
      log::info("node", "environments are assembled by hardlinks",
                {{"error", entered.error().message()}});
  }
  ENVD_TRY(n.store, node::NodeStore::open(data_dir(a)));
  ENVD_TRY(o.client, client_options(a, reference));
  o.local_source = local_source_factory();
  ENVD_TRY(n.puller, node::ImagePuller::create(*n.store, std::move(o)));
  return n;
}

std::string pull_progress_text(const node::PullProgress& p) {
  return "pulling: " + std::to_string(p.layers_done.load()) + "/" +
         std::to_string(p.layers_total.load()) + " layers, " + human_bytes(p.bytes_fetched.load()) +
         "/" + human_bytes(p.bytes_to_fetch.load());
}

Result<node::PulledImage> pull_with_progress(node::ImagePuller& puller, const std::string& ref,
                                             bool only_if_missing) {
  node::PullProgress progress;
  ProgressLine line([&progress] { return pull_progress_text(progress); });
  return only_if_missing ? puller.ensure(ref, &progress) : puller.pull(ref, &progress);
}

int run_pull(const NodeArgs& a) {
  auto n = open_node(a, a.reference);
  if (!n) return fail("pull", n.error());
  auto pulled = pull_with_progress(*n->puller, a.reference, false);
  if (!pulled) return fail("pull", pulled.error());
  if (a.json) {
    nlohmann::json j = {{"image", pulled->reference},
                        {"manifest_digest", pulled->manifest_digest.str()},
                        {"layers", pulled->layers.size()},
                        {"layers_fetched", pulled->layers_fetched},
                        {"bytes_fetched", pulled->bytes_fetched},
                        {"path", pulled->rootfs.string()},
                        {"assembly", node::to_string(pulled->assembly)},
                        {"seconds", pulled->seconds}};
    std::cout << j.dump() << std::endl;
    return 0;
  }
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.2f", pulled->seconds);
  std::cout << "pulled " << pulled->reference << "\n"
            << "  manifest " << pulled->manifest_digest.str() << "\n"
            << "  " << pulled->layers.size() << " layers (" << pulled->layers_fetched
            << " fetched, " << human_bytes(pulled->bytes_fetched) << ") in " << secs << " s\n"
            << "  environment " << pulled->rootfs.string() << " ("
            << node::to_string(pulled->assembly) << ")\n";
  return 0;
}

int run_run(const NodeArgs& a) {
  if (a.command.empty())
    return fail("run", Error(ErrorCode::invalid_argument, "no command given after --"));
  auto isolation = node::parse_isolation(a.isolation);
  if (!isolation) return fail("run", isolation.error());
  auto n = open_node(a, a.reference);
  if (!n) return fail("run", n.error());
  auto pulled = pull_with_progress(*n->puller, a.reference, a.pull == "missing");
  if (!pulled) return fail("run", pulled.error());
  // In use while the command runs: gc neither evicts it nor removes its environment.
  auto lease = n->puller->pin(pulled->manifest_digest);
  if (!lease) return fail("run", lease.error());
  if (!n->store->has_env(pulled->manifest_digest)) {  // collected between pull and pin
    pulled = pull_with_progress(*n->puller, a.reference, false);
    if (!pulled) return fail("run", pulled.error());
  }
  node::RunSpec spec;
  spec.rootfs = pulled->rootfs;
  spec.command = a.command;
  spec.image_env = pulled->config.env;
  spec.extra_env = a.env;
  spec.working_dir = pulled->config.working_dir;
  spec.isolation = *isolation;
  spec.relocation_dir = n->store->dir() / "relocated" / std::string(pulled->manifest_digest.hex());
  auto plan = node::plan_launch(spec);
  if (!plan) return fail("run", plan.error().with_context(pulled->reference));
  for (const auto& note : plan->notes) std::cerr << "envd node run: " << note << "\n";
  auto rc = node::run_foreground(*plan);
  if (!rc) return fail("run", rc.error().with_context(a.command[0]));
  return *rc;
}

int run_ls(const NodeArgs& a) {
  auto store = node::NodeStore::open(data_dir(a));
  if (!store) return fail("ls", store.error());
  auto images = (*store)->list_images();
  if (!images) return fail("ls", images.error());
  auto usage = (*store)->usage();
  if (!usage) return fail("ls", usage.error());
  if (a.json) {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& img : *images)
      list.push_back(
          {{"references", img.references},
           {"manifest_digest", img.manifest_digest.str()},
           {"size", img.size_bytes},
           {"layers", img.layers.size()},
           {"pulled_at", utc_text(img.pulled_at)},
           {"last_used", utc_text(img.last_used)},
           {"in_use", img.in_use},
           {"path", (*store)->rootfs_dir(img.manifest_digest).string()},
           {"assembly", node::to_string(node::assembly_kind(**store, img.manifest_digest))}});
    std::cout << nlohmann::json{{"images", list}, {"bytes", *usage}}.dump() << std::endl;
    return 0;
  }
  std::cout << "REFERENCE\tDIGEST\tSIZE\tLAST USED\tIN USE\n";
  for (const auto& img : *images) {
    std::string refs;
    for (const auto& r : img.references) refs += (refs.empty() ? "" : ",") + r;
    std::cout << (refs.empty() ? "-" : refs) << "\t" << img.manifest_digest.str().substr(0, 19)
              << "\t" << human_bytes(img.size_bytes) << "\t" << utc_text(img.last_used) << "\t"
              << (img.in_use ? "yes" : "no") << "\n";
  }
  std::cout << images->size() << " images, " << human_bytes(*usage) << " in "
            << (*store)->dir().string() << "\n";
  return 0;
}

int run_gc(const NodeArgs& a) {
  node::GcOptions o;
  if (!a.quota.empty()) {
    auto q = parse_size(a.quota);
    if (!q) return fail("gc", q.error());
    o.quota = *q;
  }
  if (a.grace < 0)
    return fail("gc", Error(ErrorCode::invalid_argument, "--grace must not be negative"));
  o.grace = std::chrono::seconds(a.grace);
  auto store = node::NodeStore::open(data_dir(a));
  if (!store) return fail("gc", store.error());
  auto r = (*store)->gc(o);
  if (!r) return fail("gc", r.error());
  auto digests = [](const std::vector<oci::Digest>& ds) {
    std::vector<std::string> out;
    for (const auto& d : ds) out.push_back(d.str());
    return out;
  };
  if (a.json) {
    nlohmann::json j = {
        {"bytes_before", r->bytes_before},
        {"bytes_after", r->bytes_after},
        {"bytes_freed", r->bytes_before - std::min(r->bytes_before, r->bytes_after)},
        {"images_evicted", digests(r->images_evicted)},
        {"kept_in_use", digests(r->kept_in_use)},
        {"kept_in_grace", digests(r->kept_in_grace)},
        {"layers_removed", r->layers_removed},
        {"blobs_removed", r->blobs_removed},
        {"envs_removed", r->envs_removed},
        {"quota_met", r->quota_met}};
    j["quota"] = o.quota ? nlohmann::json(*o.quota) : nlohmann::json(nullptr);
    std::cout << j.dump() << std::endl;
    return 0;
  }
  std::cout << "gc: " << human_bytes(r->bytes_before) << " -> " << human_bytes(r->bytes_after)
            << "; evicted " << r->images_evicted.size() << " images, removed " << r->layers_removed
            << " layers and " << r->blobs_removed << " blobs\n";
  if (!r->quota_met)
    std::cout << "gc: quota " << human_bytes(*o.quota) << " not met: " << r->kept_in_use.size()
              << " images in use, " << r->kept_in_grace.size() << " within the grace period\n";
  return 0;
}

void add_data_option(CLI::App* cmd, NodeArgs& a) {
  cmd->add_option("--data", a.data, "Node data directory; default: $ENVD_HOME/node");
}

void add_assembly_option(CLI::App* cmd, NodeArgs& a) {
  cmd->add_option("--assembly", a.assembly,
                  "auto: show the environment as an overlay mount of its layers where this "
                  "process may make one (in a mount namespace of its own, seen only by envd and "
                  "the commands it runs), else a tree of hardlinks; hardlink: always the tree, "
                  "which every process sees at the environment's path")
      ->check(CLI::IsMember({"auto", "hardlink"}))
      ->capture_default_str();
}

void add_registry_options(CLI::App* cmd, NodeArgs& a) {
  cmd->add_option("--token-file", a.token_file,
                  "File holding a bearer token for the registry (an envd builder token); "
                  "default: $ENVD_TOKEN");
  cmd->add_option("--creds", a.creds, "USER:PASSWORD for a registry's basic or token auth");
  cmd->add_option("--parallel", a.parallel, "Layers downloaded and unpacked at once (default 4)")
      ->check(CLI::Range(1, 64));
}

}  // namespace

CLI::App* add_node_command(CLI::App& app, int& exit_code) {
  auto* node = app.add_subcommand("node", "Pull images and run workers in them on a cluster host");
  node->require_subcommand(1);

  auto pull_args = std::make_shared<NodeArgs>();
  auto* pull = node->add_subcommand("pull", "Pull an image, verify it, unpack and assemble it");
  pull->add_option("REF", pull_args->reference,
                   "HOST[:PORT]/NAMESPACE/NAME[:TAG|@DIGEST], or NAMESPACE/NAME[:TAG] for the "
                   "local store ($ENVD_HOME/builder)")
      ->required();
  add_data_option(pull, *pull_args);
  add_registry_options(pull, *pull_args);
  // The "path" printed holds the files for any process to read (DESIGN.md §5).
  pull_args->assembly = "hardlink";
  add_assembly_option(pull, *pull_args);
  pull->add_flag("--json", pull_args->json, "Print one JSON object with the result on stdout");
  pull->footer(
      "Resumes an interrupted download where it stopped. Exit codes: 0 pulled, 1 failed, "
      "2 usage.");
  pull->callback([pull_args, &exit_code] { exit_code = run_pull(*pull_args); });

  auto run_args = std::make_shared<NodeArgs>();
  auto* run = node->add_subcommand("run", "Run a command inside an image's environment");
  run->add_option("REF", run_args->reference, "Image reference (as for pull)")->required();
  run->add_option("CMD", run_args->command, "The command and its arguments, after --")->required();
  add_data_option(run, *run_args);
  add_registry_options(run, *run_args);
  add_assembly_option(run, *run_args);
  run->add_option("--isolation", run_args->isolation,
                  "auto: bubblewrap when usable, else relocation; bwrap; none (relocate)")
      ->check(CLI::IsMember({"auto", "bwrap", "none"}));
  run->add_option("--pull", run_args->pull,
                  "missing: use the image last pulled as REF when present (default); always: "
                  "ask the registry first")
      ->check(CLI::IsMember({"missing", "always"}));
  run->add_option("--env", run_args->env, "KEY=VALUE added to the image's Env (repeatable)");
  run->footer(
      "The command's exit code passes through (128+N when killed by signal N); 1 when "
      "envd fails, 2 on usage errors.");
  run->callback([run_args, &exit_code] { exit_code = run_run(*run_args); });

  auto ls_args = std::make_shared<NodeArgs>();
  auto* ls = node->add_subcommand("ls", "List the images in the node's store");
  add_data_option(ls, *ls_args);
  ls->add_flag("--json", ls_args->json, "Print one JSON object on stdout");
  ls->callback([ls_args, &exit_code] { exit_code = run_ls(*ls_args); });

  auto gc_args = std::make_shared<NodeArgs>();
  auto* gc = node->add_subcommand("gc", "Remove unused content; evict images to meet a quota");
  add_data_option(gc, *gc_args);
  gc->add_option("--quota", gc_args->quota,
                 "Evict least-recently-used images (never one in use) until the store holds at "
                 "most this: BYTES or with K, M, G, T (powers of 1024), e.g. 10G; default: evict "
                 "nothing, only remove what no image references");
  gc->add_option(
      "--grace", gc_args->grace,
      "Seconds after a pull or use during which an image is never evicted (default 600)");
  gc->add_flag("--json", gc_args->json, "Print one JSON object on stdout");
  gc->callback([gc_args, &exit_code] { exit_code = run_gc(*gc_args); });
  return node;
}

}  // namespace envd::cli
