// RegistryClient: auth (distribution token flow and Basic), redirects, retries, ping and
// manifests. Blob transfers are in registry_blobs.cpp.
// Token flow: https://distribution.github.io/distribution/spec/auth/token/
#include "envd/registry/registry_client.hpp"

#include <algorithm>
#include <random>
#include <thread>

#include "envd/registry/auth_challenge.hpp"
#include "envd/registry/registry_client_impl.hpp"
#include "envd/util/json_detail.hpp"
#include "envd/util/log.hpp"

namespace envd::registry {
namespace {

bool is_redirect(int status) {
  return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

ErrorCode code_for_status(int status) {
  switch (status) {
    case 400:
    case 411:
    case 413:
    case 414:
      return ErrorCode::invalid_argument;
    case 401:
    case 403:
      return ErrorCode::permission_denied;
    case 404:
      return ErrorCode::not_found;
    case 405:
      return ErrorCode::unimplemented;
    case 409:
    case 412:
    case 416:
      return ErrorCode::failed_precondition;
    case 408:
    case 429:
      return ErrorCode::unavailable;
    default:
      return status >= 500 ? ErrorCode::unavailable : ErrorCode::internal;
  }
}

// "CODE: message" of the first entry of an OCI error body, or "" when there is none.
// https://github.com/opencontainers/distribution-spec/blob/v1.1.0/spec.md#error-codes
std::string oci_error_text(std::string_view body) {
  auto j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return {};
  auto errors = j.find("errors");
  if (errors == j.end() || !errors->is_array() || errors->empty() || !(*errors)[0].is_object())
    return {};
  const auto& e = (*errors)[0];
  std::string out = e.value("code", std::string());
  if (auto m = e.value("message", std::string()); !m.empty()) out += (out.empty() ? "" : ": ") + m;
  return out;
}

bool listed(const std::vector<std::string>& hosts, const std::string& host) {
  return std::find(hosts.begin(), hosts.end(), host) != hosts.end();
}

}  // namespace

std::string Scope::key() const {
  std::string out;
  for (const auto& s : scopes) out += (out.empty() ? "" : " ") + s;
  return out;
}

Scope pull_scope(const std::string& repository) {
  return Scope{{"repository:" + repository + ":pull"}};
}

Scope push_scope(const std::string& repository, const std::optional<std::string>& mount_from) {
  Scope s{{"repository:" + repository + ":pull,push"}};
  if (mount_from) s.scopes.push_back("repository:" + *mount_from + ":pull");
  return s;
}

Url RegistryClient::Impl::url(std::string target) const {
  Url u = base;
  u.target = std::move(target);
  return u;
}

bool RegistryClient::Impl::same_origin(const Url& u) const {
  return u.host == base.host && u.port == base.port && u.scheme == base.scheme;
}

const Credentials* RegistryClient::Impl::own_credentials() const {
  auto it = options.credentials.find(host);
  return it == options.credentials.end() ? nullptr : &it->second;
}

std::string RegistryClient::Impl::authorization(const Scope& scope) {
  std::lock_guard lock(mutex);
  if (auto it = tokens.find(scope.key()); it != tokens.end()) return it->second;
  const Credentials* c = own_credentials();
  if (c == nullptr) return {};
  if (!c->token.empty()) return "Bearer " + c->token;
  if (basic_challenged && !c->username.empty())
    return "Basic " + base64_encode(c->username + ":" + c->password);
  return {};
}

Result<void> RegistryClient::Impl::authorize(const std::vector<std::string>& headers,
                                             const Scope& scope, const std::string& sent) {
  std::vector<Challenge> challenges;
  for (const auto& h : headers)
    for (auto& c : parse_challenges(h)) challenges.push_back(std::move(c));
  const Credentials* own = own_credentials();
  for (const auto& c : challenges) {
    if (c.scheme != "bearer") continue;
    auto realm = parse_url(c.param("realm"));
    if (!realm) continue;  // e.g. the envd builder's realm="envd": it takes static tokens only
    // Credentials go to the realm only when it is this registry's host name (any port) or has
    // credentials of its own, and never in clear text to a host we would not speak http to.
    const Credentials* creds = nullptr;
    if (auto it = options.credentials.find(realm->authority()); it != options.credentials.end()) {
      creds = &it->second;
    } else if (realm->host == base.host) {
      creds = own;
    }
    if (realm->scheme == Scheme::http && !is_loopback_host(realm->host) &&
        !listed(options.http_hosts, realm->authority()))
      creds = nullptr;
    std::vector<std::string> scopes = scope.scopes;
    const std::string challenge_scope = c.param("scope");
    for (std::string_view rest = challenge_scope; !rest.empty();) {
      std::size_t sp = rest.find(' ');
      std::string s(rest.substr(0, sp));
      if (!s.empty() && std::find(scopes.begin(), scopes.end(), s) == scopes.end())
        scopes.push_back(s);
      rest = sp == std::string_view::npos ? std::string_view() : rest.substr(sp + 1);
    }
    HttpRequest req;
    req.url = *realm;
    std::string query;
    if (auto service = c.param("service"); !service.empty())
      query += "service=" + url_encode(service);
    for (const auto& s : scopes) query += (query.empty() ? "" : "&") + ("scope=" + url_encode(s));
    if (!query.empty())
      req.url.target += (req.url.target.find('?') == std::string::npos ? "?" : "&") + query;
    if (creds != nullptr && !creds->username.empty())
      req.headers.emplace_back("Authorization",
                               "Basic " + base64_encode(creds->username + ":" + creds->password));
    else if (creds != nullptr && !creds->token.empty())
      req.headers.emplace_back("Authorization", "Bearer " + creds->token);
    req.max_body = 1u << 20;
    ENVD_TRY(auto resp, transport.send(req));
    if (resp.status != 200)
      return unexpected(ErrorCode::permission_denied,
                        "token request to " + realm->str() + ": HTTP " +
                            std::to_string(resp.status) +
                            (creds == nullptr ? " (no credentials for that host)" : ""));
    auto token = parse_token_response(resp.body);
    if (!token) return token.error().with_context("token request to " + realm->str());
    std::lock_guard lock(mutex);
    tokens[scope.key()] = "Bearer " + *token;
    return {};
  }
  for (const auto& c : challenges) {
    if (c.scheme != "basic" || own == nullptr || own->username.empty()) continue;
    std::string basic = "Basic " + base64_encode(own->username + ":" + own->password);
    std::lock_guard lock(mutex);
    // Refused only when this very request carried them (another thread may have armed Basic
    // after this request left without it).
    if (basic_challenged && sent == basic) break;
    basic_challenged = true;
    return {};
  }
  return unexpected(ErrorCode::permission_denied,
                    own == nullptr ? "unauthorized, and no credentials configured for " + host
                                   : "unauthorized: the credentials for " + host + " were refused");
}

Result<HttpResponse> RegistryClient::Impl::execute(const HttpRequest& request, const Scope& scope,
                                                   const BodyOpener* open_body) {
  const bool follow = request.method == "GET" || request.method == "HEAD";
  for (int round = 0;; ++round) {
    HttpRequest r = request;
    if (open_body != nullptr) {
      ENVD_TRY(r.read_body, (*open_body)());
    }
    const std::string auth = authorization(scope);
    for (int hops = 0;; ++hops) {
      r.headers = request.headers;
      // Credentials only to this registry: a redirect to storage on another host gets none.
      if (!auth.empty() && same_origin(r.url)) r.headers.emplace_back("Authorization", auth);
      ENVD_TRY(auto resp, transport.send(r));
      if (follow && is_redirect(resp.status)) {
        if (hops >= 5)
          return unexpected(ErrorCode::unavailable,
                            request.method + " " + request.url.str() + ": too many redirects");
        ENVD_TRY(r.url, resolve_url(r.url, header_value(resp.headers, "Location")));
        continue;
      }
      if (resp.status == 401 && round == 0 && same_origin(r.url)) {
        auto challenged = authorize(header_values(resp.headers, "WWW-Authenticate"), scope, auth);
        if (!challenged)
          return challenged.error().with_context(request.method + " " + request.url.str());
        break;
      }
      return resp;
    }
  }
}

Error RegistryClient::Impl::status_error(const HttpRequest& request,
                                         const HttpResponse& response) const {
  std::string msg =
      request.method + " " + request.url.str() + ": HTTP " + std::to_string(response.status);
  if (auto oci = oci_error_text(response.body); !oci.empty()) msg += ": " + oci;
  return Error(code_for_status(response.status), msg);
}

void RegistryClient::Impl::backoff(unsigned failures) const {
  auto delay = options.backoff_initial;
  for (unsigned i = 1; i < failures && delay < options.backoff_max; ++i) delay *= 2;
  delay = std::min(delay, options.backoff_max);
  // Full jitter in [delay/2, delay]: clients that failed together do not retry together.
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::uniform_int_distribution<std::int64_t> dist(delay.count() / 2, delay.count());
  std::this_thread::sleep_for(std::chrono::milliseconds(dist(rng)));
}

void RegistryClient::Impl::log_retry(const std::string& what, const Error& error,
                                     unsigned attempt) const {
  log::warn("registry", "retrying",
            {{"what", what}, {"attempt", std::to_string(attempt)}, {"error", error.message()}});
}

RegistryClient::RegistryClient(std::unique_ptr<Impl> impl) : m_impl(std::move(impl)) {}
RegistryClient::~RegistryClient() = default;

Result<std::unique_ptr<RegistryClient>> RegistryClient::create(std::string host,
                                                               ClientOptions options) {
  Scheme scheme = default_scheme(host);
  if (listed(options.http_hosts, host)) scheme = Scheme::http;
  if (listed(options.https_hosts, host)) scheme = Scheme::https;
  auto hp = split_host_port(host, scheme == Scheme::https ? 443 : 80);
  if (!hp) return hp.error().with_context("registry host");
  Url base{scheme, hp->host, hp->port, "/"};
  if (options.max_attempts == 0) options.max_attempts = 1;
  if (options.parallel_transfers == 0) options.parallel_transfers = 1;
  if (options.chunk_size == 0) options.chunk_size = 64u << 20;
  TransportOptions t{options.ca_file, options.tls_verify, options.connect_timeout,
                     options.stall_timeout, options.user_agent};
  auto impl =
      std::make_unique<Impl>(std::move(host), std::move(base), std::move(options), std::move(t));
  return std::unique_ptr<RegistryClient>(new RegistryClient(std::move(impl)));
}

const std::string& RegistryClient::host() const {
  return m_impl->host;
}
Scheme RegistryClient::scheme() const {
  return m_impl->base.scheme;
}
const ClientOptions& RegistryClient::options() const {
  return m_impl->options;
}

Result<void> RegistryClient::ping() {
  return m_impl->with_retries("ping " + m_impl->host, [&]() -> Result<void> {
    HttpRequest req;
    req.url = m_impl->url("/v2/");
    ENVD_TRY(auto resp, m_impl->execute(req, Scope{}));
    if (resp.status != 200) return m_impl->status_error(req, resp);
    return {};
  });
}

Result<Manifest> RegistryClient::get_manifest(const std::string& repository,
                                              const std::string& reference) {
  std::optional<oci::Digest> expected;
  if (reference.find(':') != std::string::npos) {  // tags hold no ':'
    ENVD_TRY(expected, oci::Digest::parse(reference));
  }
  std::string what = "get manifest " + host() + "/" + repository + ":" + reference;
  return m_impl->with_retries(what, [&]() -> Result<Manifest> {
    HttpRequest req;
    req.url = m_impl->url("/v2/" + repository + "/manifests/" + reference);
    std::string accept;
    for (auto t : {oci::media_type::k_manifest, oci::media_type::k_index,
                   oci::media_type::k_docker_manifest, oci::media_type::k_docker_manifest_list})
      accept += (accept.empty() ? "" : ", ") + std::string(t);
    req.headers.emplace_back("Accept", accept);
    req.max_body = m_impl->options.max_manifest_size;
    ENVD_TRY(auto resp, m_impl->execute(req, pull_scope(repository)));
    if (resp.status != 200) return m_impl->status_error(req, resp);
    Manifest m{std::move(resp.body), {}, oci::sha256_of("")};
    m.digest = oci::sha256_of(m.bytes);
    if (expected && m.digest != *expected)
      return unexpected(ErrorCode::digest_mismatch, "the bytes received hash to " + m.digest.str());
    if (auto sent = header_value(resp.headers, "Docker-Content-Digest");
        !expected && sent.starts_with("sha256:") && sent != m.digest.str())
      return unexpected(ErrorCode::digest_mismatch, "Docker-Content-Digest " + sent +
                                                        " but the bytes hash to " + m.digest.str());
    std::string content_type = header_value(resp.headers, "Content-Type");
    content_type = content_type.substr(0, content_type.find(';'));
    auto info = oci::parse_manifest(m.bytes, content_type);
    m.media_type = info ? info->media_type : content_type;
    return m;
  });
}

Result<std::optional<std::uint64_t>> RegistryClient::head_blob(const std::string& repository,
                                                               const oci::Digest& digest) {
  std::string what = "head blob " + digest.str() + " in " + host() + "/" + repository;
  return m_impl->with_retries(what, [&]() -> Result<std::optional<std::uint64_t>> {
    HttpRequest req;
    req.method = "HEAD";
    req.url = m_impl->url("/v2/" + repository + "/blobs/" + digest.str());
    ENVD_TRY(auto resp, m_impl->execute(req, pull_scope(repository)));
    if (resp.status == 404) return std::optional<std::uint64_t>();
    if (resp.status != 200) return m_impl->status_error(req, resp);
    std::string length = header_value(resp.headers, "Content-Length");
    std::uint64_t size = 0;
    try {
      size = std::stoull(length);
    } catch (const std::exception&) {
      return unexpected(ErrorCode::invalid_argument,
                        "no valid Content-Length (\"" + length + "\")");
    }
    return std::optional<std::uint64_t>(size);
  });
}

Result<oci::Digest> RegistryClient::put_manifest(const std::string& repository,
                                                 const std::string& reference,
                                                 const std::string& bytes,
                                                 const std::string& media_type) {
  oci::Digest digest = oci::sha256_of(bytes);
  std::string what = "put manifest " + host() + "/" + repository + ":" + reference;
  return m_impl->with_retries(what, [&]() -> Result<oci::Digest> {
    HttpRequest req;
    req.method = "PUT";
    req.url = m_impl->url("/v2/" + repository + "/manifests/" + reference);
    req.body = bytes;
    req.content_type = media_type;
    ENVD_TRY(auto resp, m_impl->execute(req, push_scope(repository, std::nullopt)));
    if (resp.status != 201 && resp.status != 200) return m_impl->status_error(req, resp);
    if (auto sent = header_value(resp.headers, "Docker-Content-Digest");
        !sent.empty() && sent != digest.str())
      return unexpected(ErrorCode::digest_mismatch,
                        "the registry stored " + sent + ", expected " + digest.str());
    return digest;
  });
}

}  // namespace envd::registry
