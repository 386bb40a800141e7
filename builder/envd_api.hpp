// The envd extension API under /envd/v1/ (DESIGN.md §6), served next to the OCI Distribution API
// and behind the same auth: find missing blobs, upload many small blobs in one streamed request,
// submit a snapshot, start a build and follow it, watch a tag. Documents: schemas/envd-api/.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "builder/builder_config.hpp"
#include "builder/builder_state.hpp"
#include "builder/layer_plan.hpp"
#include "builder/layer_writer.hpp"
#include "builder/registry_server.hpp"

namespace envd::builder {

struct EnvdApiOptions {
  // blob_bytes (each blob of a batch), batch_bytes (a whole batch request), snapshot_bytes (a
  // snapshot document), concurrent_builds (builds run at once; later ones queue).
  Limits limits;
  std::uint64_t json_bytes = 64ULL << 20;       // other JSON request bodies
  Compression compression = Compression::zstd;  // when a build request names none
  PlanOptions plan;
  std::string envd_version;                 // recorded in the images built (config label)
  int max_wait_seconds = 60;                // cap of the long polls' wait_seconds
  std::size_t finished_builds_kept = 1000;  // finished builds whose status stays queryable
  // Called on the build thread just before a build starts. A test seam: holding it keeps the
  // build running, so that tests can observe a running build deterministically.
  std::function<void(std::string_view build_id)> before_build;
  // Called on the build thread after a build committed its image and moved its tag (e.g. to
  // mirror it).
  std::function<void(const std::string& repository, const std::string& tag)> on_image_built;
};

// What add_envd_api returns: the API's running state (build threads, long polls). The routes keep
// it alive as long as the server; destroying the last reference shuts it down.
// Thread-safe.
class EnvdApi {
 public:
  struct Impl;
  explicit EnvdApi(std::shared_ptr<Impl> impl) : m_impl(std::move(impl)) {}
  ~EnvdApi();
  EnvdApi(const EnvdApi&) = delete;
  EnvdApi& operator=(const EnvdApi&) = delete;

  // Wakes the tag watchers so that they re-resolve their tags. Call it after a tag moved outside
  // this API (an OCI manifest PUT); builds started through the API notify by themselves.
  void tags_changed();

  // Ends every long poll now (each answers with the current state), refuses new builds (503),
  // fails queued builds (cancelled) and waits for running ones to finish. Call it before stopping
  // the server so that stop() does not wait for long polls. Idempotent.
  void shutdown();

 private:
  std::shared_ptr<Impl> m_impl;
};

// Registers the /envd/v1/ routes on `server` (before start()). Every route's first path group is
// the repository NAMESPACE/NAME, so RouteAccess applies: push for blobs, snapshots and starting
// builds; pull for build status and tag watches.
//
//   POST /envd/v1/<repo>/blobs/missing       {"digests":[...]} -> {"missing":[...]}
//   POST /envd/v1/<repo>/blobs/batch         records "sha256:<hex> <size>\n" + <size> bytes
//                                            -> {"stored":[...],"failed":{...}|null}
//   POST /envd/v1/<repo>/snapshots           snapshot document -> {"snapshot_digest"}
//   POST /envd/v1/<repo>/builds              {"snapshot_digest","tag","compression"?}
//                                            -> 202 {"build_id","status_url"}
//   GET  /envd/v1/<repo>/builds/<id>?wait_seconds=N&since=K      -> build status
//   GET  /envd/v1/<repo>/tags/<tag>/watch?digest=D&wait_seconds=N -> {"digest"}
//
// Blobs go to state.blobs (each verified by BlobWriter::commit), snapshots to
// state.dir/snapshots/<snapshot digest hex>.json, builds run state.builder on
// options.limits.concurrent_builds threads. `state` must outlive `server`.
std::shared_ptr<EnvdApi> add_envd_api(RegistryServer& server, BuilderState& state,
                                      const EnvdApiOptions& options);

}  // namespace envd::builder
