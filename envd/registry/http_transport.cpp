// HTTP exchanges through cpp-httplib (only this file and tests include <httplib.h>). Connections
// are pooled per origin; a connection that failed or was closed by the server is dropped.
#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
#define CPPHTTPLIB_OPENSSL_SUPPORT  // must match how libcpp-httplib was built (class layouts)
#endif
#include "envd/registry/http_transport.hpp"

#include <httplib.h>

#include <cctype>
#include <map>
#include <mutex>

namespace envd::registry {
namespace {

constexpr std::size_t k_max_idle_per_origin = 8;
constexpr std::size_t k_read_buffer = 64 * 1024;

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i])))
      return false;
  return true;
}

std::string bracketed(const std::string& host) {
  return host.find(':') != std::string::npos ? "[" + host + "]" : host;
}

HttpHeaders to_headers(const httplib::Headers& h) {
  HttpHeaders out;
  for (const auto& [k, v] : h) out.emplace_back(k, v);
  return out;
}

void set_timeout(std::chrono::milliseconds d, const std::function<void(time_t, time_t)>& set) {
  set(static_cast<time_t>(d.count() / 1000), static_cast<time_t>((d.count() % 1000) * 1000));
}

}  // namespace

std::string Url::authority() const {
  return bracketed(host) + ":" + std::to_string(port);
}

std::string Url::str() const {
  return std::string(to_string(scheme)) + "://" + authority() + target;
}

Result<Url> parse_url(std::string_view text) {
  Url url;
  std::string_view rest;
  if (text.starts_with("https://")) {
    url.scheme = Scheme::https;
    rest = text.substr(8);
  } else if (text.starts_with("http://")) {
    url.scheme = Scheme::http;
    rest = text.substr(7);
  } else {
    return unexpected(ErrorCode::invalid_argument,
                      "invalid URL \"" + std::string(text) + "\": not http(s)://");
  }
  std::size_t end = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, end);
  if (std::size_t at = authority.rfind('@'); at != std::string_view::npos)
    return unexpected(ErrorCode::invalid_argument,
                      "invalid URL \"" + std::string(text) + "\": user info is not accepted");
  auto hp = split_host_port(authority, url.scheme == Scheme::https ? 443 : 80);
  if (!hp) return hp.error().with_context("invalid URL \"" + std::string(text) + "\"");
  url.host = hp->host;
  url.port = hp->port;
  url.target = end == std::string_view::npos ? "/" : std::string(rest.substr(end));
  if (std::size_t hash = url.target.find('#'); hash != std::string::npos) url.target.resize(hash);
  if (url.target.empty() || url.target.front() != '/') url.target.insert(0, "/");
  return url;
}

Result<Url> resolve_url(const Url& base, std::string_view location) {
  if (location.starts_with("http://") || location.starts_with("https://"))
    return parse_url(location);
  if (location.starts_with("//"))
    return parse_url(std::string(to_string(base.scheme)) + ":" + std::string(location));
  if (location.empty()) return unexpected(ErrorCode::invalid_argument, "empty Location header");
  Url url = base;
  if (location.front() == '/') {
    url.target = std::string(location);
  } else {
    std::string dir = base.target.substr(0, base.target.find('?'));
    dir.resize(dir.rfind('/') + 1);
    url.target = dir + std::string(location);
  }
  return url;
}

std::string header_value(const HttpHeaders& headers, std::string_view name) {
  for (const auto& [k, v] : headers)
    if (iequals(k, name)) return v;
  return {};
}

std::vector<std::string> header_values(const HttpHeaders& headers, std::string_view name) {
  std::vector<std::string> out;
  for (const auto& [k, v] : headers)
    if (iequals(k, name)) out.push_back(v);
  return out;
}

struct Transport::Impl {
  TransportOptions options;
  std::mutex mutex;
  std::map<std::string, std::vector<std::unique_ptr<httplib::Client>>> idle;  // by origin

  static std::string origin(const Url& url) {
    return std::string(to_string(url.scheme)) + "://" + url.authority();
  }

  std::unique_ptr<httplib::Client> acquire(const Url& url) {
    {
      std::lock_guard lock(mutex);
      auto& pool = idle[origin(url)];
      if (!pool.empty()) {
        auto c = std::move(pool.back());
        pool.pop_back();
        return c;
      }
    }
    auto c = std::make_unique<httplib::Client>(origin(url));
    set_timeout(options.connect_timeout,
                [&](time_t s, time_t us) { c->set_connection_timeout(s, us); });
    set_timeout(options.stall_timeout, [&](time_t s, time_t us) { c->set_read_timeout(s, us); });
    set_timeout(options.stall_timeout, [&](time_t s, time_t us) { c->set_write_timeout(s, us); });
    c->set_keep_alive(true);
    c->set_tcp_nodelay(true);  // a request's headers and body go out at once, not 40 ms apart
    c->set_follow_location(false);
    c->set_decompress(false);
    c->set_url_encode(false);  // targets arrive encoded; re-encoding would change queries
    if (url.scheme == Scheme::https) {
      if (!options.ca_file.empty()) c->set_ca_cert_path(options.ca_file);
      c->enable_server_certificate_verification(options.tls_verify == TlsVerify::on);
    }
    return c;
  }

  void release(const Url& url, std::unique_ptr<httplib::Client> c) {
    std::lock_guard lock(mutex);
    auto& pool = idle[origin(url)];
    if (pool.size() < k_max_idle_per_origin) pool.push_back(std::move(c));
  }
};

Transport::Transport(TransportOptions options) : m_impl(std::make_unique<Impl>()) {
  m_impl->options = std::move(options);
}

Transport::~Transport() = default;

const TransportOptions& Transport::options() const {
  return m_impl->options;
}

Result<HttpResponse> Transport::send(const HttpRequest& request) {
  auto client = m_impl->acquire(request.url);
  const std::string what = request.method + " " + request.url.str();
  if (!client->is_valid())
    return unexpected(ErrorCode::invalid_argument, what + ": unsupported URL");

  httplib::Headers headers;
  for (const auto& [k, v] : request.headers) headers.emplace(k, v);
  // Blobs must arrive as stored: their digest is over these bytes, and Range offsets count them.
  headers.emplace("Accept-Encoding", "identity");
  headers.emplace("User-Agent", m_impl->options.user_agent);

  HttpResponse out;
  bool head_seen = false;
  bool streaming = false;
  bool aborted_by_callback = false;
  bool too_large = false;
  auto last_activity = std::chrono::steady_clock::now();

  auto on_response = [&](const httplib::Response& r) {
    head_seen = true;
    out.status = r.status;
    out.headers = to_headers(r.headers);
    if (request.on_head && !request.on_head(out)) {
      aborted_by_callback = true;
      return false;
    }
    streaming = request.on_body && r.status >= 200 && r.status < 300;
    return true;
  };
  auto on_data = [&](const char* data, std::size_t size) {
    last_activity = std::chrono::steady_clock::now();
    if (streaming) {
      if (request.on_body(std::string_view(data, size))) return true;
      aborted_by_callback = true;
      return false;
    }
    if (out.body.size() + size > request.max_body) {
      too_large = true;
      return false;
    }
    out.body.append(data, size);
    return true;
  };

  std::optional<Error> body_error;
  std::vector<char> buffer;
  auto provider = [&](std::size_t offset, std::size_t length, httplib::DataSink& sink) {
    buffer.resize(std::min(length, k_read_buffer));
    auto n = request.read_body(buffer.data(), buffer.size());
    if (!n || *n == 0) {
      body_error = n ? Error(ErrorCode::io, "request body ended at byte " + std::to_string(offset) +
                                                " of " + std::to_string(request.body_length))
                     : n.error();
      return false;
    }
    last_activity = std::chrono::steady_clock::now();
    return sink.write(buffer.data(), *n);
  };

  const std::string& m = request.method;
  const std::string& t = request.url.target;
  httplib::Result res = [&]() -> httplib::Result {
    if (m == "GET") return client->Get(t, headers, on_response, on_data);
    if (m == "HEAD") return client->Head(t, headers);
    if (m == "DELETE") return client->Delete(t, headers);
    if (request.read_body) {
      if (m == "PUT")
        return client->Put(t, headers, request.body_length, provider, request.content_type);
      if (m == "PATCH")
        return client->Patch(t, headers, request.body_length, provider, request.content_type);
      return client->Post(t, headers, request.body_length, provider, request.content_type);
    }
    if (m == "PUT") return client->Put(t, headers, request.body, request.content_type);
    if (m == "PATCH") return client->Patch(t, headers, request.body, request.content_type);
    return client->Post(t, headers, request.body, request.content_type);
  }();

  if (!res) {
    // The connection's state is unknown: drop it (the unique_ptr goes out of scope here).
    if (body_error) return body_error->with_context(what);
    if (too_large)
      return unexpected(
          ErrorCode::invalid_argument,
          what + ": answer larger than " + std::to_string(request.max_body) + " bytes");
    if (aborted_by_callback)
      return unexpected(ErrorCode::cancelled, what + ": stopped by receiver");
    auto idle = std::chrono::steady_clock::now() - last_activity;
    auto err = res.error();
    if ((err == httplib::Error::Read || err == httplib::Error::Write) &&
        idle >= m_impl->options.stall_timeout * 9 / 10) {
      return unexpected(ErrorCode::unavailable,
                        what + ": stalled: no data for " +
                            std::to_string(m_impl->options.stall_timeout.count()) + " ms" +
                            (head_seen ? " in the body" : ""));
    }
    switch (err) {
      case httplib::Error::Connection:
        return unexpected(ErrorCode::unavailable, what + ": could not connect");
      case httplib::Error::ConnectionTimeout:
        return unexpected(ErrorCode::unavailable, what + ": connection timed out");
      case httplib::Error::Read:
        return unexpected(ErrorCode::unavailable, what + ": connection lost while reading");
      case httplib::Error::Write:
        return unexpected(ErrorCode::unavailable, what + ": connection lost while writing");
      case httplib::Error::SSLConnection:
        return unexpected(ErrorCode::unavailable, what + ": TLS handshake failed");
      // Not transient: retrying cannot help.
      case httplib::Error::SSLServerVerification:
        return unexpected(ErrorCode::permission_denied,
                          what +
                              ": TLS certificate verification failed (configure a CA file, "
                              "or disable verification for this registry)");
      case httplib::Error::SSLLoadingCerts:
        return unexpected(
            ErrorCode::failed_precondition,
            what + ": cannot load the CA certificates \"" + m_impl->options.ca_file + "\"");
      default:
        return unexpected(ErrorCode::unavailable, what + ": " + httplib::to_string(err));
    }
  }
  if (!head_seen) {
    out.status = res->status;
    out.headers = to_headers(res->headers);
  }
  if (m != "GET") out.body = std::move(res->body);
  if (!iequals(res->get_header_value("Connection"), "close"))
    m_impl->release(request.url, std::move(client));
  return out;
}

}  // namespace envd::registry
