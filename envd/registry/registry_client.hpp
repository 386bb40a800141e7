// RegistryClient: pull from and push to one OCI registry over the distribution API, with the
// token and basic auth flows, bounded retries with jittered backoff, a stall timeout, blobs
// verified while they stream and resumed with Range after an interruption.
// Spec: https://github.com/opencontainers/distribution-spec/blob/v1.1.0/spec.md
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "envd/oci/digest.hpp"
#include "envd/oci/image.hpp"
#include "envd/registry/http_transport.hpp"
#include "envd/registry/reference.hpp"
#include "envd/store/blob_store.hpp"
#include "envd/util/error.hpp"

namespace envd::registry {

// Credentials for one registry host. A token is sent as "Authorization: Bearer <token>" (an envd
// builder token); a username and password answer a Basic challenge, or are exchanged for a token
// at a Bearer challenge's realm.
struct Credentials {
  std::string username;
  std::string password;
  std::string token;
};

struct ClientOptions {
  // By host as written in references ("registry.example.com", "127.0.0.1:5000"). Credentials are
  // only ever sent to that host: never across a redirect to another host (blob downloads often
  // redirect to storage), and to a token realm only when the realm is on the same host name (any
  // port) or has credentials of its own here.
  std::map<std::string, Credentials> credentials;
  std::string ca_file;  // PEM bundle to verify registries' certificates; empty: the system's
  TlsVerify tls_verify = TlsVerify::on;
  std::vector<std::string> http_hosts;   // spoken to over plain http although not loopback
  std::vector<std::string> https_hosts;  // spoken to over https although loopback
  unsigned parallel_transfers = 4;       // blobs downloaded (fetch_blobs) or copied at once
  unsigned max_attempts = 5;  // per request; a download attempt that made progress is free
  std::chrono::milliseconds backoff_initial{250};  // doubled per failure, jittered, capped
  std::chrono::milliseconds backoff_max{8000};
  std::chrono::milliseconds stall_timeout{30000};  // no byte for this long: abort and retry
  std::chrono::milliseconds connect_timeout{10000};
  std::uint64_t chunk_size = 64u << 20;  // larger blobs are pushed in PATCH chunks of this size
  std::uint64_t max_manifest_size = 4u << 20;
  std::string user_agent = "envd";
};

struct Manifest {
  std::string bytes;  // as received: the digest is over these bytes
  std::string media_type;
  oci::Digest digest;
};

// Receives a blob's bytes in order (e.g. an unpacker streaming a layer as it downloads).
class BlobSink {
 public:
  virtual ~BlobSink() = default;
  virtual Result<void> write(std::string_view data) = 0;
};

struct FetchResult {
  std::uint64_t bytes_fetched = 0;  // over the network, by this call
  unsigned requests = 0;            // blob GETs sent (1 + resumptions and retries)
  bool already_present = false;     // fetch_blob_to_store found it in the store
};

enum class PushOutcome { uploaded, existed, mounted };

struct PushResult {
  PushOutcome outcome = PushOutcome::uploaded;
  std::uint64_t bytes_uploaded = 0;
};

// Opens a fresh reader over a blob's bytes (called again when an upload is retried).
using BlobOpener = std::function<Result<std::unique_ptr<store::BlobReader>>()>;

// One registry host. Thread-safe: every method may be called from many threads at once (tokens
// and connections are shared under a lock). Errors of every call name the request; codes:
// permission_denied (401/403, also after the auth flow), not_found (404), invalid_argument
// (400, a malformed answer), unavailable (network failures, 429 and 5xx once retries are
// exhausted, stalls), digest_mismatch (bytes that do not hash to their digest).
class RegistryClient {
 public:
  // `host` as in a reference ("127.0.0.1:5000"). Errors: invalid_argument (bad host).
  static Result<std::unique_ptr<RegistryClient>> create(std::string host, ClientOptions options);
  ~RegistryClient();
  RegistryClient(const RegistryClient&) = delete;
  RegistryClient& operator=(const RegistryClient&) = delete;

  const std::string& host() const;
  Scheme scheme() const;
  const ClientOptions& options() const;

  // GET /v2/ (through the auth flow when challenged).
  Result<void> ping();

  // The manifest (image or index, OCI or Docker) `reference` (tag or digest) names. Verified:
  // against the digest when `reference` is one, else against Docker-Content-Digest when sent.
  Result<Manifest> get_manifest(const std::string& repository, const std::string& reference);

  // The blob's size, or nullopt when the registry does not have it.
  Result<std::optional<std::uint64_t>> head_blob(const std::string& repository,
                                                 const oci::Digest& digest);

  // Streams the blob to `sink`, hashing as it goes; after an interruption it resumes with Range
  // from the bytes already delivered. Redirects are followed (without credentials to another
  // host). Errors: digest_mismatch when the bytes do not hash to `digest` or exceed `size` (the
  // sink has then received unverified bytes: discard them).
  Result<FetchResult> fetch_blob_to_sink(const std::string& repository, const oci::Digest& digest,
                                         std::optional<std::uint64_t> size, BlobSink& sink);
  // The same into a store writer, resuming after the bytes it already holds (writer.written(),
  // e.g. an ingest kept from an earlier run), then commits it: the writer verifies the digest,
  // so on digest_mismatch nothing becomes visible.
  Result<FetchResult> fetch_blob_to_writer(const std::string& repository, const oci::Digest& digest,
                                           std::optional<std::uint64_t> size,
                                           store::BlobWriter& writer);
  // Into `store`, unless it already holds the blob.
  Result<FetchResult> fetch_blob_to_store(const std::string& repository,
                                          const oci::Descriptor& blob, store::BlobStore& store);
  // Several blobs, options().parallel_transfers at a time; stops starting new ones after the
  // first failure and returns it. Result: totals.
  Result<FetchResult> fetch_blobs(const std::string& repository,
                                  const std::vector<oci::Descriptor>& blobs,
                                  store::BlobStore& store);

  // Makes the blob present in `repository`: nothing when it already is (HEAD), else a
  // cross-repository mount from `mount_from` when given and granted, else an upload (POST, then
  // one PUT, or PATCH chunks of options().chunk_size and a closing PUT for larger blobs).
  Result<PushResult> push_blob(const std::string& repository, const oci::Descriptor& blob,
                               const BlobOpener& open,
                               const std::optional<std::string>& mount_from = std::nullopt);

  // PUT of a manifest under `reference` (a tag, or its digest) with its media type as
  // Content-Type. Returns the manifest's digest (checked against Docker-Content-Digest).
  Result<oci::Digest> put_manifest(const std::string& repository, const std::string& reference,
                                   const std::string& bytes, const std::string& media_type);

 private:
  struct Impl;
  explicit RegistryClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> m_impl;
};

}  // namespace envd::registry
