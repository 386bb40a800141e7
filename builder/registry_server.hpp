// The builder's HTTP server: the OCI Distribution API (pull, push, tags) over a BlobStore and a
// RegistryIndex, plus a small route table so that more APIs (/envd/v1/...) share its auth.
// Spec: https://github.com/opencontainers/distribution-spec/blob/v1.1.0/spec.md
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "builder/auth.hpp"
#include "builder/builder_config.hpp"
#include "builder/registry_index.hpp"
#include "envd/store/blob_store.hpp"
#include "envd/util/error.hpp"

namespace envd::builder {

// Receives body bytes in order; returns false to stop reading.
using BodySink = std::function<bool(std::string_view data)>;

// One request as a route handler sees it.
struct HttpRequest {
  std::string method;  // GET (also for HEAD requests routed to a GET route: check this), POST...
  std::string path;    // decoded path, without the query
  std::vector<std::string> matches;  // [0] the whole path, then the route regex's groups
  std::vector<std::pair<std::string, std::string>> query;    // decoded, in request order
  std::vector<std::pair<std::string, std::string>> headers;  // as received
  Principal principal;                                       // who is calling (see RouteAccess)
  // Streams the request body to `sink` (at most once; later calls deliver nothing). Returns false
  // when the sink stopped or the connection failed before the whole body arrived.
  std::function<bool(const BodySink& sink)> read_body;

  // The first header named `name` (case-insensitive), or "" when absent.
  std::string header(std::string_view name) const;
  // The first query parameter named `name`, or nullopt.
  std::optional<std::string> query_param(std::string_view name) const;
  // The body if it has at most `limit` bytes; nullopt when larger (reading stops there) or when
  // the connection failed.
  std::optional<std::string> body(std::uint64_t limit) const;
};

// Writes body bytes; returns false when the client has gone.
using BodyWriter = std::function<bool(std::string_view data)>;

// A response. The body is either `body` or, when `provider` is set, `content_length` bytes
// produced by provider(offset, length, write) on the serving thread, called repeatedly with
// increasing offsets until all bytes were written (each call writes at least one byte, or
// returns false to abort the response). HEAD requests send headers only, with Content-Length.
struct HttpResponse {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string content_type;
  std::string body;
  std::uint64_t content_length = 0;
  std::function<bool(std::uint64_t offset, std::uint64_t length, const BodyWriter& write)> provider;

  HttpResponse& set_header(std::string name, std::string value) {
    headers.emplace_back(std::move(name), std::move(value));
    return *this;
  }
};

// What a response about a failed operation concerns; decides the OCI error code for
// invalid_argument and not_found (e.g. blob: DIGEST_INVALID / BLOB_UNKNOWN).
enum class ErrorSubject { blob, upload, manifest, repository, other };

// The one mapping from envd ErrorCode to HTTP status and OCI error code, with the body the spec
// defines: {"errors":[{"code","message","detail"}]}. Pure.
HttpResponse error_response(const Error& error, ErrorSubject subject);
// An OCI error response with an explicit code ("BLOB_UNKNOWN", ...) and optional JSON detail.
HttpResponse oci_error(int status, std::string_view code, std::string_view message,
                       std::string_view detail_json = {});

// Who may call a route. For pull and push the route's first regex group is the repository name:
// it must be valid (else 400 NAME_INVALID) and inside the caller's namespaces with that right
// (else 403 DENIED, never 404: a caller may learn that a repository name is outside its grant,
// not whether the repository exists). Callers without a valid token get 401 UNAUTHORIZED.
enum class RouteAccess {
  anyone,         // no token needed
  authenticated,  // any valid token
  pull,
  push,
};

using Handler = std::function<HttpResponse(const HttpRequest&)>;

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // 0: chosen by the OS (start() returns it)
  Limits limits;
  AuthConfig auth;
  std::optional<TlsConfig> tls;  // serve https with this certificate
  // Upload sessions keep their bytes here (<dir>/<session id>), so that they survive requests
  // and restarts. Required; created if missing.
  std::filesystem::path upload_dir;
  unsigned threads = 32;  // connections served at once (each keep-alive connection holds one)
  std::int64_t upload_session_ttl_seconds = 24 * 3600;  // older sessions are dropped at create()
  // Called (on the serving thread) after a manifest PUT moved a tag of `repository`, so that tag
  // watchers (the envd API's long polls) wake at once.
  std::function<void(const std::string& repository)> on_tag_changed;
};

// Thread-safe once started; add_route() only before start().
class RegistryServer {
 public:
  // Builds the server with the Distribution API routes. Drops expired and orphaned upload
  // sessions. Errors: failed_precondition (no tokens on a non-loopback host), invalid_argument
  // (bad token grant, empty upload_dir), io (upload_dir), and TLS files that do not load.
  static Result<std::unique_ptr<RegistryServer>> create(store::BlobStore& blobs,
                                                        RegistryIndex& index,
                                                        ServerOptions options);
  ~RegistryServer();  // stops the server
  RegistryServer(const RegistryServer&) = delete;
  RegistryServer& operator=(const RegistryServer&) = delete;

  // Adds a route: `method` (GET also answers HEAD), `path_regex` matched against the whole path
  // (ECMAScript syntax), routes tried in the order added. Must be called before start().
  void add_route(std::string method, std::string path_regex, Handler handler, RouteAccess access);

  // Binds host:port and serves on background threads. Returns the bound port.
  // Errors: unavailable (cannot bind), failed_precondition (already started).
  Result<int> start();
  // Stops accepting, finishes in-flight requests, joins the threads. Idempotent.
  void stop();

 private:
  struct Impl;
  explicit RegistryServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> m_impl;
};

}  // namespace envd::builder
