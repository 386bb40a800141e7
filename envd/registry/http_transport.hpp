// One HTTP exchange with a registry, token server or storage host: URLs, pooled keep-alive
// connections per origin, TLS verification, stall detection. Follows no redirects and adds no
// credentials: RegistryClient decides both.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "envd/registry/reference.hpp"
#include "envd/util/error.hpp"

namespace envd::registry {

enum class TlsVerify { on, off };

struct Url {
  Scheme scheme = Scheme::https;
  std::string host;  // without brackets
  int port = 443;
  std::string target = "/";  // path and query, already percent-encoded

  // "host:port" ("[::1]:5000"), always with the port: the unit credentials are bound to.
  std::string authority() const;
  std::string str() const;  // scheme://authority/target
};

// An absolute http(s) URL. Errors: invalid_argument naming the text.
Result<Url> parse_url(std::string_view text);
// A Location header value (absolute, scheme-relative "//host/..", absolute path or relative
// path) against the URL it answered. Errors: invalid_argument.
Result<Url> resolve_url(const Url& base, std::string_view location);

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

// The first header named `name` (case-insensitive), "" when absent; every one of them.
std::string header_value(const HttpHeaders& headers, std::string_view name);
std::vector<std::string> header_values(const HttpHeaders& headers, std::string_view name);

struct HttpResponse {
  int status = 0;
  HttpHeaders headers;
  std::string body;  // empty when streamed to HttpRequest::on_body
};

// Reads the next bytes of a streamed request body into `buffer`; 0 only at its end.
using BodyRead = std::function<Result<std::size_t>(char* buffer, std::size_t size)>;

struct HttpRequest {
  std::string method = "GET";  // GET, HEAD, POST, PUT, PATCH, DELETE
  Url url;
  HttpHeaders headers;
  std::string content_type;  // for a body
  std::string body;
  // When set, the body is `body_length` bytes read from here instead of `body`.
  BodyRead read_body;
  std::uint64_t body_length = 0;
  // GET only: called once the status and headers of the answer are known; false aborts.
  std::function<bool(const HttpResponse& head)> on_head;
  // GET only: receives the body of a 2xx answer as it arrives (other answers are collected into
  // HttpResponse::body); false aborts the exchange.
  std::function<bool(std::string_view data)> on_body;
  // Collected bodies larger than this abort the exchange (invalid_argument).
  std::uint64_t max_body = 8u << 20;
};

struct TransportOptions {
  std::string ca_file;  // PEM bundle for verifying servers; empty: the system's
  TlsVerify tls_verify = TlsVerify::on;
  std::chrono::milliseconds connect_timeout{10000};
  std::chrono::milliseconds stall_timeout{30000};  // no byte sent or received for this long
  std::string user_agent = "envd";
};

// Thread-safe: any number of concurrent send() calls; each uses its own connection.
class Transport {
 public:
  explicit Transport(TransportOptions options);
  ~Transport();
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  // Sends the request and returns the answer, whatever its status.
  // Errors: unavailable (cannot connect, TLS handshake failed, connection lost, stall),
  // permission_denied (the server's certificate did not verify), failed_precondition (the CA
  // file does not load), cancelled (a callback returned false: the caller knows why), the body
  // reader's error, invalid_argument (a collected body over max_body).
  Result<HttpResponse> send(const HttpRequest& request);

  const TransportOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

}  // namespace envd::registry
