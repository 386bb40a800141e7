// One push, as `envd push` and `envd watch` run it: snapshot the environment, then build its
// image on the embedded builder (state under $ENVD_HOME/builder) or on a remote builder through
// the envd API (upload only the blobs it lacks, submit the snapshot, build). A successful push
// records the snapshot it pushed per image name, for `envd diff`.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "agent/snapshotter.hpp"
#include "envd/cli/user_config.hpp"
#include "envd/oci/digest.hpp"
#include "envd/snapshot/snapshot.hpp"
#include "envd/util/error.hpp"

namespace envd::cli {

// Where to push. Resolved from flags, environment and config by resolve_push_target.
struct PushTarget {
  std::string builder_url;  // http(s)://HOST[:PORT]; empty: the embedded builder
  std::string token;        // bearer token for the builder; may be empty
  std::string ca_file;      // PEM bundle to verify the builder's certificate; empty: system's
  std::filesystem::path envd_home;
  std::string compression;  // "zstd" | "gzip"; empty: the builder's default (embedded: zstd)
};

// The target from a --builder flag and a --compression flag (empty: not given), then ENVD_BUILDER
// and ENVD_TOKEN, then `config`: flags override the environment, which overrides the file. The
// token is sent only to a builder (ENVD_TOKEN, else the config's token or token_file).
// Errors: invalid_argument naming the source of a bad URL (--builder, ENVD_BUILDER); the token
// file's errors.
Result<PushTarget> resolve_push_target(const std::string& builder_flag,
                                       const std::string& compression_flag,
                                       const UserConfig& config,
                                       const std::filesystem::path& envd_home);

struct PushRequest {
  agent::SnapshotOptions snapshot;
  std::string name;  // NAMESPACE/NAME[:TAG]; empty: local/<environment name>:latest
};

// Live counters for a progress display (read from another thread).
struct PushProgress {
  agent::HashProgress hashing;
  std::atomic<int> phase{0};  // 0 snapshot, 1 upload, 2 build, 3 done
  std::atomic<std::uint64_t> upload_bytes_total{0};
  std::atomic<std::uint64_t> upload_bytes_done{0};
  std::atomic<std::uint64_t> layers_total{0};
  std::atomic<std::uint64_t> layers_done{0};
  // Called on the pushing thread with one human line when a step ends ("snapshot: 46,540 files,
  // 624 MB in 0.48 s (read 3 files)"); for plain output when there is no progress bar.
  std::function<void(std::string_view line)> on_step;
};

struct PushOutcome {
  snapshot::Snapshot snapshot;
  oci::Digest snapshot_digest = oci::sha256_of("");
  std::string builder;     // the builder URL; empty for the embedded builder
  std::string repository;  // NAMESPACE/NAME
  std::string tag;
  std::string image;  // HOST/NAME@sha256:.. (NAME@sha256:.. for the embedded builder)
  oci::Digest manifest_digest = oci::sha256_of("");
  std::size_t layers = 0;
  std::size_t layers_reused = 0;
  bool unchanged = false;          // the tag already named this snapshot's image: nothing was built
  std::uint64_t files_hashed = 0;  // read by the snapshot (stat-cache misses)
  std::uint64_t bytes_hashed = 0;
  std::uint64_t blobs_uploaded = 0;
  // Request bodies sent to the builder: blobs, snapshot document, JSON requests (0 when
  // embedded, and when the tag already named this snapshot's image).
  std::uint64_t bytes_uploaded = 0;
  std::uint64_t snapshot_bytes = 0;  // of which the snapshot document(s)
  std::uint64_t bytes_built = 0;     // compressed bytes of new layers
  double snapshot_seconds = 0;
  double upload_seconds = 0;
  double build_seconds = 0;
  double seconds = 0;
};

// Snapshot, upload what is missing, build. When the tag already names the image of this very
// snapshot, nothing is uploaded or built. Errors name the step ("upload 12 blobs to http://..:
// ..."): those of the snapshot, unavailable (builder unreachable), permission_denied (token
// refused), invalid_argument (bad name), failed_precondition (a file changed while pushing), ...
// Not thread-safe against another push of the same name from this machine (the record of the
// last push is last-writer-wins).
Result<PushOutcome> push_once(const PushRequest& request, const PushTarget& target,
                              PushProgress* progress = nullptr);

// Splits "NAMESPACE/NAME[:TAG]" (a bare NAME gets namespace "local"; empty: local/<environment
// name>), validating it against the distribution spec's name grammar. Errors: invalid_argument.
struct ImageName {
  std::string repository;
  std::string tag = "latest";
};
Result<ImageName> resolve_image_name(const std::string& name, const snapshot::Snapshot& snap);

// The snapshot last pushed under `repository` from this machine (recorded by push_once under
// $ENVD_HOME/pushed/), or nullopt when there is none. Errors: io, invalid_argument (a record
// that does not parse).
Result<std::optional<snapshot::Snapshot>> last_pushed_snapshot(
    const std::filesystem::path& envd_home, const std::string& repository);

}  // namespace envd::cli
