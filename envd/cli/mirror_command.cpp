// `envd builder mirror REF DEST`: copy an image from the local builder store ($ENVD_HOME/builder
// or --data) to an external OCI registry, skipping blobs it already has.
#include <CLI/CLI.hpp>
#include <iostream>
#include <nlohmann/json.hpp>

#include "builder/builder_state.hpp"
#include "builder/local_image_source.hpp"
#include "envd/cli/commands.hpp"
#include "envd/cli/defaults.hpp"
#include "envd/cli/format.hpp"
#include "envd/registry/image_copy.hpp"
#include "envd/registry/reference.hpp"

namespace envd::cli {
namespace {

struct MirrorArgs {
  std::string ref;
  std::string dest;
  std::string data;
  std::string creds;
  bool dest_tls_verify = true;
  std::string dest_ca_file;
  bool json = false;
};

int fail(std::string_view what, const Error& e) {
  std::cerr << "envd builder mirror: " << what << ": " << e.message() << "\n";
  return exit_code_for(e);
}

int run_mirror(const MirrorArgs& args) {
  auto source_ref = registry::parse_reference(args.ref);
  if (!source_ref) return fail("REF", source_ref.error());
  if (!source_ref->is_local())
    return fail("REF", Error(ErrorCode::invalid_argument,
                             "\"" + args.ref +
                                 "\" names a registry; REF is NAMESPACE/NAME[:TAG] "
                                 "in the local builder store"));
  auto dest_ref = registry::parse_reference(args.dest);
  if (!dest_ref) return fail("DEST", dest_ref.error());
  if (dest_ref->is_local())
    return fail("DEST", Error(ErrorCode::invalid_argument, "\"" + args.dest +
                                                               "\" names no registry host; DEST is "
                                                               "HOST[:PORT]/NAMESPACE/NAME[:TAG]"));
  if (dest_ref->digest)
    return fail("DEST", Error(ErrorCode::invalid_argument,
                              "\"" + args.dest + "\": a destination takes a tag, not a digest"));

  registry::ClientOptions options;
  if (!args.creds.empty()) {
    std::size_t colon = args.creds.find(':');
    if (colon == std::string::npos)
      return fail("--creds", Error(ErrorCode::invalid_argument, "expected USER:TOKEN"));
    options.credentials[dest_ref->host] = {
        args.creds.substr(0, colon), args.creds.substr(colon + 1), {}};
  }
  if (!args.dest_tls_verify) options.tls_verify = registry::TlsVerify::off;
  options.ca_file = args.dest_ca_file;
  options.user_agent = std::string("envd/") + ENVD_VERSION;
  auto dest = registry::RegistryClient::create(dest_ref->host, options);
  if (!dest) return fail("DEST", dest.error());

  std::filesystem::path data =
      args.data.empty() ? envd_home() / "builder" : std::filesystem::path(args.data);
  std::error_code ec;
  if (!std::filesystem::is_directory(data, ec))  // mirroring reads: create no empty store
    return fail("open the builder store",
                Error(ErrorCode::not_found, "no builder store at " + data.string() +
                                                " (envd push writes one; or pass --data)"));
  auto state = builder::BuilderState::open(data);
  if (!state) return fail("open the builder store", state.error());
  auto source_ptr = builder::local_image_source(**state, source_ref->repository);
  registry::StoreImageSource& source = *source_ptr;
  if (auto found = source.manifest(source_ref->reference()); !found)
    return fail("mirror", found.error());
  // One clear failure (unreachable, TLS, credentials) before any blob is tried.
  if (auto ping = (*dest)->ping(); !ping) return fail("reach " + dest_ref->host, ping.error());
  std::string tag = dest_ref->tag.empty() ? source_ref->reference() : dest_ref->tag;
  if (source_ref->digest && dest_ref->tag.empty()) tag.clear();  // push by digest only
  auto copied =
      registry::copy_image(source, source_ref->reference(), **dest, dest_ref->repository, tag);
  if (!copied) return fail("mirror", copied.error());

  std::string target = dest_ref->host + "/" + dest_ref->repository;
  if (args.json) {
    nlohmann::json j = {{"image", target + "@" + copied->manifest_digest.str()},
                        {"tag", tag},
                        {"manifest_digest", copied->manifest_digest.str()},
                        {"blobs_copied", copied->blobs_copied},
                        {"blobs_skipped", copied->blobs_skipped + copied->blobs_mounted},
                        {"bytes_copied", copied->bytes_copied}};
    std::cout << j.dump() << std::endl;
    return 0;
  }
  std::cout << "mirrored " << source_ref->str() << " to " << target << (tag.empty() ? "" : ":")
            << tag << "@" << copied->manifest_digest.str() << ": " << copied->blobs_copied
            << " blobs copied (" << human_bytes(copied->bytes_copied) << "), "
            << (copied->blobs_skipped + copied->blobs_mounted) << " already there\n";
  return 0;
}

}  // namespace

void add_builder_mirror_command(CLI::App& builder_app, int& exit_code) {
  auto args = std::make_shared<MirrorArgs>();
  auto* cmd = builder_app.add_subcommand(
      "mirror", "Copy an image from the local builder store to an OCI registry");
  cmd->add_option("REF", args->ref, "Image in the builder store: NAMESPACE/NAME[:TAG]")->required();
  cmd->add_option("DEST", args->dest,
                  "Destination: HOST[:PORT]/NAMESPACE/NAME[:TAG] (default tag: REF's)")
      ->required();
  cmd->add_option("--data", args->data, "Builder data directory (default: $ENVD_HOME/builder)");
  cmd->add_option("--creds", args->creds, "Credentials for DEST: USER:TOKEN (or USER:PASSWORD)");
  cmd->add_option("--dest-tls-verify", args->dest_tls_verify,
                  "Verify DEST's TLS certificate (default true; loopback registries use http)");
  cmd->add_option("--dest-ca-file", args->dest_ca_file, "PEM CA bundle to verify DEST with");
  cmd->add_flag("--json", args->json, "Print one JSON object with the result on stdout");
  cmd->callback([args, &exit_code] { exit_code = run_mirror(*args); });
}

}  // namespace envd::cli
