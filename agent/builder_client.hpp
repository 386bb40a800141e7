// Client of a remote builder's envd API (DESIGN.md §6, schemas/envd-api/): which blobs it lacks,
// streamed multi-blob uploads (batched, several requests at once), snapshot submission, builds
// followed by long poll, tag watches; plus the tag's manifest from the OCI API. Bearer tokens.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "envd/oci/digest.hpp"
#include "envd/util/error.hpp"

namespace envd::registry {
class Transport;
}

namespace envd::agent {

struct BuilderClientOptions {
  std::string url;      // http(s)://HOST[:PORT] (a trailing '/' is ignored; no other path)
  std::string token;    // bearer token; empty: none (loopback builders without tokens)
  std::string ca_file;  // PEM bundle to verify an https builder; empty: the system's
  std::chrono::milliseconds connect_timeout{10000};
  std::chrono::milliseconds stall_timeout{90000};  // longer than the long polls' wait
};

// One blob to upload: its digest and size as the snapshot recorded them, and the file holding it.
struct BlobSource {
  oci::Digest digest;
  std::uint64_t size = 0;
  std::filesystem::path path;
};

// How upload_blobs groups blobs into requests.
struct UploadOptions {
  unsigned parallel = 4;                   // requests in flight at once
  std::uint64_t batch_bytes = 8ULL << 20;  // a request of small blobs stops growing here
  std::size_t batch_blobs = 2048;          // ... or at this many blobs
  std::uint64_t large_bytes = 1ULL << 20;  // blobs this large go in a request of their own
};

struct UploadStats {
  std::uint64_t blobs = 0;     // blobs the builder committed
  std::uint64_t bytes = 0;     // request body bytes sent (headers of the records included)
  std::uint64_t requests = 0;  // batch requests made
};

// The answer to a snapshot submission: its digest when stored, else the file blobs the builder
// still lacks (409): upload them and submit again.
struct SnapshotSubmission {
  std::optional<oci::Digest> digest;
  std::vector<oci::Digest> missing;
};

// A build as GET /envd/v1/NAME/builds/ID reports it (build-status.schema.json).
struct RemoteBuild {
  std::string id;
  enum class State { running, succeeded, failed } state = State::running;
  std::uint64_t version = 0;
  std::uint64_t layers_total = 0;
  std::uint64_t layers_done = 0;
  std::uint64_t layers_reused = 0;
  std::uint64_t bytes_written = 0;
  // When succeeded:
  std::optional<oci::Digest> manifest_digest;
  std::uint64_t layers = 0;  // of the image
  double seconds = 0;        // the build's own time on the builder
  std::string error;         // when failed
};

// What a tag currently names, from its manifest.
struct TagManifest {
  oci::Digest digest;                          // of the manifest bytes
  std::optional<oci::Digest> snapshot_digest;  // the dev.envd.snapshot.digest annotation
  std::vector<std::string> layer_media_types;
};

// Thread-safe: every call may run concurrently with any other (each request takes its own
// connection from a pool). Errors of every call name the request and the builder, with codes:
// unavailable (cannot connect — the message then says why, e.g. "connection refused", and how to
// fix it —, connection lost, 5xx), permission_denied (401: the token was refused; 403: the
// token may not use this repository), invalid_argument (400, 413), not_found (404),
// failed_precondition (a file changed since it was hashed), internal (an answer that is not what
// the API documents). The process must ignore SIGPIPE: cpp-httplib writes without MSG_NOSIGNAL,
// so a builder closing a connection mid-upload would otherwise kill it.
class BuilderClient {
 public:
  // Errors: invalid_argument for a URL that is not http(s)://HOST[:PORT].
  static Result<std::unique_ptr<BuilderClient>> create(BuilderClientOptions options);
  ~BuilderClient();
  BuilderClient(const BuilderClient&) = delete;
  BuilderClient& operator=(const BuilderClient&) = delete;

  // "http://127.0.0.1:5000", as given (without a trailing '/').
  const std::string& url() const { return m_url; }
  // "127.0.0.1:5000": how image references name this registry.
  std::string host() const;
  // Request body bytes sent so far by every call (uploads, snapshots, JSON requests).
  std::uint64_t bytes_sent() const { return m_bytes_sent.load(); }

  // The subset of `digests` the builder does not hold (deduplicated, in the order given).
  Result<std::vector<oci::Digest>> missing_blobs(std::string_view repository,
                                                 const std::vector<oci::Digest>& digests);

  // Uploads `blobs` through POST /blobs/batch: small blobs many to a request, large ones alone,
  // `options.parallel` requests at once. Each blob is committed by the builder as it arrives, so
  // an interrupted upload keeps what arrived whole. `progress` (optional) grows by the body bytes
  // sent. Stops at the first failed request (the others finish theirs). A file that no longer
  // matches its digest or size fails with failed_precondition naming it.
  Result<UploadStats> upload_blobs(std::string_view repository,
                                   const std::vector<BlobSource>& blobs,
                                   const UploadOptions& options = {},
                                   std::atomic<std::uint64_t>* progress = nullptr);

  // POST /snapshots with a snapshot document (snapshot::to_json), or with a patch against a
  // snapshot the builder holds (snapshot::make_patch; media_type snapshot::k_patch_media_type).
  // Errors: not_found when the builder lacks a patch's base; invalid_argument when it refuses the
  // document or patch (a patch whose result differs from what it declares).
  Result<SnapshotSubmission> submit_snapshot(
      std::string_view repository, std::string_view document,
      std::string_view media_type = "application/vnd.envd.snapshot.v1+json");

  // POST /builds: queues a build of a submitted snapshot (or joins the identical unfinished one)
  // and returns its id. `compression`: "zstd", "gzip", or empty for the builder's default.
  Result<std::string> start_build(std::string_view repository, const oci::Digest& snapshot_digest,
                                  std::string_view tag, std::string_view compression = {});

  // GET /builds/ID: the build's state once its version exceeds `since`, it finished, or
  // `wait_seconds` passed.
  Result<RemoteBuild> build_status(std::string_view repository, std::string_view id,
                                   std::uint64_t since, int wait_seconds);

  // Follows a build with long polls until it finishes, calling `on_progress` (optional) with
  // each state seen. A failed build is an error (internal, with the builder's message).
  Result<RemoteBuild> wait_build(std::string_view repository, std::string_view id,
                                 const std::function<void(const RemoteBuild&)>& on_progress = {});

  // GET /tags/TAG/watch: the tag's digest once it differs from `known` (nullopt: the caller knows
  // none), or after `wait_seconds` the current one; nullopt when the tag does not exist.
  Result<std::optional<oci::Digest>> watch_tag(std::string_view repository, std::string_view tag,
                                               const std::optional<oci::Digest>& known,
                                               int wait_seconds);

  // GET /v2/NAME/manifests/TAG: what the tag names now, or nullopt when it names nothing.
  Result<std::optional<TagManifest>> tag_manifest(std::string_view repository,
                                                  std::string_view tag);

 private:
  struct Exchange;
  BuilderClient(BuilderClientOptions options, std::string url,
                std::unique_ptr<registry::Transport> transport);
  Result<UploadStats> upload_batch(std::string_view repository,
                                   const std::vector<const BlobSource*>& batch,
                                   std::atomic<std::uint64_t>* progress);
  Error unreachable(const Error& error) const;

  BuilderClientOptions m_options;
  std::string m_url;
  std::unique_ptr<registry::Transport> m_transport;
  std::atomic<std::uint64_t> m_bytes_sent{0};
};

}  // namespace envd::agent
