// Private to envd_registry: RegistryClient's state and its request machinery (auth flow,
// redirects, retries), shared by registry_client.cpp (auth, manifests) and registry_blobs.cpp.
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include "envd/registry/http_transport.hpp"
#include "envd/registry/registry_client.hpp"

namespace envd::registry {

// The access a request needs, as token scopes ("repository:team/env:pull,push").
// https://distribution.github.io/distribution/spec/auth/scope/
struct Scope {
  std::vector<std::string> scopes;
  std::string key() const;
};
Scope pull_scope(const std::string& repository);
Scope push_scope(const std::string& repository, const std::optional<std::string>& mount_from);

// Opens a fresh request body (for a request re-sent after an auth challenge or a retry).
using BodyOpener = std::function<Result<BodyRead>()>;

struct RegistryClient::Impl {
  std::string host;  // as in references
  Url base;          // scheme://host:port/
  ClientOptions options;
  Transport transport;
  std::mutex mutex;
  std::map<std::string, std::string> tokens;  // Scope::key() -> "Bearer ..."
  bool basic_challenged = false;

  Impl(std::string h, Url b, ClientOptions o, TransportOptions t)
      : host(std::move(h)), base(std::move(b)), options(std::move(o)), transport(std::move(t)) {}

  Url url(std::string target) const;
  bool same_origin(const Url& url) const;
  // The credentials configured for this registry, if any.
  const Credentials* own_credentials() const;
  // The Authorization header value for a request to this registry needing `scope`, or "".
  std::string authorization(const Scope& scope);
  // Answers a 401 to a request sent with Authorization `sent` ("" for none): runs the token
  // flow of a Bearer challenge or arms Basic auth. Errors: permission_denied (no usable
  // challenge or credentials, credentials refused, token server refused).
  Result<void> authorize(const std::vector<std::string>& challenges, const Scope& scope,
                         const std::string& sent);
  // One request with auth (a 401 is answered once) and, for GET and HEAD, redirects (at most 5;
  // no credentials to another origin). Returns the final answer whatever its status.
  Result<HttpResponse> execute(const HttpRequest& request, const Scope& scope,
                               const BodyOpener* open_body = nullptr);
  // The error for a non-success answer: code from the status, message with the OCI error body.
  Error status_error(const HttpRequest& request, const HttpResponse& response) const;
  // Sleeps before retry number `failures` (1-based): exponential, jittered, capped.
  void backoff(unsigned failures) const;

  // Runs `f` until it succeeds or fails with another code than unavailable, at most
  // options.max_attempts times; failures get `what` as context.
  template <class F>
  auto with_retries(const std::string& what, F&& f) -> decltype(f()) {
    for (unsigned attempt = 1;; ++attempt) {
      auto r = f();
      if (r) return r;
      if (r.error().code() != ErrorCode::unavailable) return r.error().with_context(what);
      if (attempt >= options.max_attempts)
        return r.error().with_context(what + " (gave up after " + std::to_string(attempt) +
                                      " attempts)");
      log_retry(what, r.error(), attempt);
      backoff(attempt);
    }
  }
  void log_retry(const std::string& what, const Error& error, unsigned attempt) const;

  // Downloads a blob from byte `offset` on, giving every byte to `write` (and to `hasher` when
  // given, then checking the digest), resuming with Range after interruptions.
  Result<FetchResult> fetch(const std::string& repository, const oci::Digest& digest,
                            std::optional<std::uint64_t> size, std::uint64_t offset,
                            const std::function<Result<void>(std::string_view)>& write,
                            oci::Sha256* hasher);
};

}  // namespace envd::registry
