// RegistryServer: adapts cpp-httplib to envd's route table, applies auth to every route the same
// way, maps envd errors to HTTP/OCI errors, and runs the listener on a background thread.
// Spec: https://github.com/opencontainers/distribution-spec/blob/v1.1.0/spec.md
#include "builder/registry_server.hpp"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "builder/registry_routes.hpp"
#include "envd/util/log.hpp"

namespace envd::builder {
namespace {

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

struct Route {
  std::string method;
  std::regex pattern;
  Handler handler;
  RouteAccess access;
};

// Challenges sent with 401. Basic comes first: clients such as skopeo (containers/image) use the
// first scheme they support, and a Bearer challenge would send them looking for a token service
// at the realm URL; with Basic they send the token as the password, which we accept.
void add_challenges(HttpResponse& r) {
  r.set_header("WWW-Authenticate", "Basic realm=\"envd\"");
  r.set_header("WWW-Authenticate", "Bearer realm=\"envd\",service=\"envd\"");
}

bool request_has_body(const httplib::Request& req) {
  if (req.has_header("Transfer-Encoding")) return true;
  auto len = req.get_header_value("Content-Length");
  return !len.empty() && len != "0";
}

// RFC 7230 §3.3.3: a request with neither Content-Length nor Transfer-Encoding has no body.
// cpp-httplib 0.11 would instead read until the connection closes (a PUT from `curl -X PUT`
// then waits for the read timeout), so such requests never reach its content reader.
bool request_has_framing(const httplib::Request& req) {
  return req.has_header("Transfer-Encoding") || req.has_header("Content-Length");
}

}  // namespace

std::string HttpRequest::header(std::string_view name) const {
  for (const auto& [k, v] : headers)
    if (iequals(k, name)) return v;
  return {};
}

std::optional<std::string> HttpRequest::query_param(std::string_view name) const {
  for (const auto& [k, v] : query)
    if (k == name) return v;
  return std::nullopt;
}

std::optional<std::string> HttpRequest::body(std::uint64_t limit) const {
  std::string out;
  bool too_big = false;
  bool ok = read_body([&](std::string_view data) {
    if (out.size() + data.size() > limit) {
      too_big = true;
      return false;
    }
    out.append(data);
    return true;
  });
  if (!ok || too_big) return std::nullopt;
  return out;
}

HttpResponse oci_error(int status, std::string_view code, std::string_view message,
                       std::string_view detail_json) {
  nlohmann::json e = {{"code", code}, {"message", message}};
  if (!detail_json.empty()) {
    auto detail = nlohmann::json::parse(detail_json, nullptr, /*allow_exceptions=*/false);
    e["detail"] = detail.is_discarded() ? nlohmann::json(detail_json) : detail;
  }
  HttpResponse r;
  r.status = status;
  r.content_type = "application/json";
  r.body = nlohmann::json{{"errors", nlohmann::json::array({e})}}.dump();
  return r;
}

// The one place envd error codes become HTTP statuses and OCI error codes
// (https://github.com/opencontainers/distribution-spec/blob/v1.1.0/spec.md#error-codes).
HttpResponse error_response(const Error& error, ErrorSubject subject) {
  auto by_subject = [&](std::string_view blob, std::string_view upload, std::string_view manifest,
                        std::string_view repository, std::string_view other) {
    switch (subject) {
      case ErrorSubject::blob:
        return blob;
      case ErrorSubject::upload:
        return upload;
      case ErrorSubject::manifest:
        return manifest;
      case ErrorSubject::repository:
        return repository;
      case ErrorSubject::other:
        break;
    }
    return other;
  };
  int status = 500;
  std::string_view code = "UNKNOWN";
  switch (error.code()) {
    case ErrorCode::invalid_argument:
      status = 400;
      code = by_subject("DIGEST_INVALID", "BLOB_UPLOAD_INVALID", "MANIFEST_INVALID", "NAME_INVALID",
                        "INVALID_ARGUMENT");
      break;
    case ErrorCode::not_found:
      status = 404;
      code = by_subject("BLOB_UNKNOWN", "BLOB_UPLOAD_UNKNOWN", "MANIFEST_UNKNOWN", "NAME_UNKNOWN",
                        "NOT_FOUND");
      break;
    case ErrorCode::digest_mismatch:
      status = 400, code = "DIGEST_INVALID";
      break;
    case ErrorCode::already_exists:
      status = 409, code = "ALREADY_EXISTS";
      break;
    case ErrorCode::failed_precondition:
      status = 409;
      code = subject == ErrorSubject::upload ? "BLOB_UPLOAD_INVALID" : "FAILED_PRECONDITION";
      break;
    case ErrorCode::permission_denied:
      status = 403, code = "DENIED";
      break;
    case ErrorCode::unavailable:
    case ErrorCode::cancelled:
      status = 503, code = "UNAVAILABLE";
      break;
    case ErrorCode::unimplemented:
      status = 405, code = "UNSUPPORTED";
      break;
    case ErrorCode::io:
    case ErrorCode::internal:
      status = 500, code = "UNKNOWN";
      break;
  }
  if (status >= 500) {
    // Server-side failures name local paths; the log gets them, the client a pointer to it.
    log::error("registry", "request failed", {{"error", error.message()}});
    return oci_error(status, code, "internal error (see the builder log)");
  }
  return oci_error(status, code, error.message());
}

struct RegistryServer::Impl {
  Authenticator auth;
  ServerOptions options;
  std::unique_ptr<httplib::Server> http;
  std::vector<Route> routes;
  std::unique_ptr<registry_detail::RegistryContext> ctx;
  std::thread thread;
  std::atomic<bool> listen_returned{false};
  bool started = false;

  Impl(Authenticator a, ServerOptions o) : auth(std::move(a)), options(std::move(o)) {}

  HttpResponse dispatch(const httplib::Request& req, const httplib::ContentReader* reader,
                        bool& body_complete);
  void handle(const httplib::Request& req, httplib::Response& res,
              const httplib::ContentReader* reader);
};

HttpResponse RegistryServer::Impl::dispatch(const httplib::Request& req,
                                            const httplib::ContentReader* reader,
                                            bool& body_complete) {
  const std::string method = req.method == "HEAD" ? "GET" : req.method;
  bool path_known = false;
  for (const auto& route : routes) {
    std::smatch m;
    if (!std::regex_match(req.path, m, route.pattern)) continue;
    path_known = true;
    if (route.method != method) continue;

    HttpRequest hr;
    hr.method = req.method;
    hr.path = req.path;
    for (const auto& g : m) hr.matches.push_back(g.str());
    for (const auto& [k, v] : req.params) hr.query.emplace_back(k, v);
    for (const auto& [k, v] : req.headers) hr.headers.emplace_back(k, v);

    auto principal = auth.authenticate(req.get_header_value("Authorization"));
    if (route.access != RouteAccess::anyone && !principal) {
      auto r = oci_error(401, "UNAUTHORIZED", "authentication required: send a builder token");
      add_challenges(r);
      return r;
    }
    if (principal) hr.principal = *principal;
    if (route.access == RouteAccess::pull || route.access == RouteAccess::push) {
      const std::string& repo = hr.matches.size() > 1 ? hr.matches[1] : hr.path;
      if (!is_valid_repository(repo))
        return oci_error(400, "NAME_INVALID", "invalid repository name \"" + repo + "\"");
      Access need = route.access == RouteAccess::push ? Access::push : Access::pull;
      if (!hr.principal.may(repo, need))
        return oci_error(
            403, "DENIED",
            "token " + hr.principal.name + " may not " + std::string(to_string(need)) + " " + repo);
    }

    bool called = false;
    hr.read_body = [&req, reader, &called, &body_complete](const BodySink& sink) {
      if (called) return true;
      called = true;
      bool ok = true;
      if (reader == nullptr) {
        ok = req.body.empty() || sink(req.body);
      } else if (request_has_framing(req)) {
        ok = (*reader)(
            [&](const char* data, std::size_t size) { return sink(std::string_view(data, size)); });
      }
      body_complete = ok;
      return ok;
    };
    return route.handler(hr);
  }
  if (path_known) return oci_error(405, "UNSUPPORTED", req.method + " is not supported here");
  return oci_error(404, "NOT_FOUND", "no such endpoint: " + req.path);
}

void RegistryServer::Impl::handle(const httplib::Request& req, httplib::Response& res,
                                  const httplib::ContentReader* reader) {
  // cpp-httplib 0.11 applies a Range header to any response by itself, trusting the range
  // (reading past the end of the content) and overriding our status. Blob routes answer Range
  // requests themselves, so its parsed ranges are cleared. The Request object is not const (the
  // server owns it; only the handler signature is const), so this cast is well-defined.
  const_cast<httplib::Request&>(req).ranges.clear();

  bool body_complete = reader == nullptr;
  HttpResponse r;
  try {
    r = dispatch(req, reader, body_complete);
  } catch (const std::exception& e) {
    r = error_response(Error(ErrorCode::internal, std::string("handler threw: ") + e.what()),
                       ErrorSubject::other);
  }
  // An unread request body would be parsed as the next request on this connection.
  if (!body_complete && request_has_body(req)) r.set_header("Connection", "close");
  r.set_header("Docker-Distribution-API-Version", "registry/2.0");

  res.status = r.status;
  for (auto& [k, v] : r.headers) res.set_header(k, v);
  if (r.provider && r.content_length > 0) {
    auto provider = std::make_shared<decltype(r.provider)>(std::move(r.provider));
    res.set_content_provider(
        r.content_length, r.content_type.empty() ? "application/octet-stream" : r.content_type,
        [provider](std::size_t offset, std::size_t length, httplib::DataSink& sink) {
          return (*provider)(offset, length, [&sink](std::string_view data) {
            return sink.write(data.data(), data.size());
          });
        });
  } else if (!r.body.empty() || !r.content_type.empty()) {
    res.set_content(std::move(r.body), r.content_type.empty() ? "text/plain" : r.content_type);
  }
  auto level = r.status >= 500 ? log::Level::warn : log::Level::debug;
  if (log::enabled(level))
    log::write(level, "registry", "request",
               {{"method", req.method},
                {"path", req.path},
                {"status", std::to_string(r.status)},
                {"remote", req.remote_addr}});
}

RegistryServer::RegistryServer(std::unique_ptr<Impl> impl) : m_impl(std::move(impl)) {}

RegistryServer::~RegistryServer() {
  stop();
}

Result<std::unique_ptr<RegistryServer>> RegistryServer::create(store::BlobStore& blobs,
                                                               RegistryIndex& index,
                                                               ServerOptions options) {
  ENVD_TRY(auto auth, Authenticator::create(options.auth, options.host));
  if (options.upload_dir.empty())
    return Error(ErrorCode::invalid_argument, "registry server: no upload directory configured");
  std::error_code ec;
  std::filesystem::create_directories(options.upload_dir, ec);
  if (ec)
    return Error::from_errno("create upload directory " + options.upload_dir.string(), ec.value());

  auto impl = std::make_unique<Impl>(std::move(auth), options);
  if (options.tls) {
    auto ssl =
        std::make_unique<httplib::SSLServer>(options.tls->cert.c_str(), options.tls->key.c_str());
    if (!ssl->is_valid())
      return Error(ErrorCode::invalid_argument, "TLS: cannot load certificate " +
                                                    options.tls->cert.string() + " with key " +
                                                    options.tls->key.string());
    impl->http = std::move(ssl);
  } else {
    impl->http = std::make_unique<httplib::Server>();
  }
  unsigned threads = std::max(2u, options.threads);
  impl->http->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  impl->http->set_read_timeout(60, 0);
  impl->http->set_write_timeout(60, 0);
  impl->http->set_keep_alive_max_count(1000);
  // Without it a response written in two parts waits for the client's delayed ACK (40 ms).
  impl->http->set_tcp_nodelay(true);

  Impl* raw = impl.get();
  auto plain = [raw](const httplib::Request& req, httplib::Response& res) {
    raw->handle(req, res, nullptr);
  };
  auto streamed = [raw](const httplib::Request& req, httplib::Response& res,
                        const httplib::ContentReader& reader) { raw->handle(req, res, &reader); };
  // Every request reaches our own table; cpp-httplib only parses and transports. Methods with a
  // body get the streaming variant so large uploads never sit in memory.
  impl->http->Get(".*", plain);
  impl->http->Options(".*", plain);
  impl->http->Post(".*", plain);
  impl->http->Post(".*", streamed);
  impl->http->Put(".*", plain);
  impl->http->Put(".*", streamed);
  impl->http->Patch(".*", plain);
  impl->http->Patch(".*", streamed);
  impl->http->Delete(".*", plain);
  impl->http->Delete(".*", streamed);

  impl->ctx.reset(new registry_detail::RegistryContext{
      blobs, index, options.limits, options.upload_dir, {}, options.on_tag_changed});
  std::unique_ptr<RegistryServer> server(new RegistryServer(std::move(impl)));
  if (auto r = registry_detail::drop_stale_uploads(*server->m_impl->ctx,
                                                   options.upload_session_ttl_seconds);
      !r)
    return r.error().with_context("registry server");
  registry_detail::add_manifest_routes(*server, *server->m_impl->ctx);
  registry_detail::add_upload_routes(*server, *server->m_impl->ctx);
  registry_detail::add_blob_routes(*server, *server->m_impl->ctx);
  return server;
}

void RegistryServer::add_route(std::string method, std::string path_regex, Handler handler,
                               RouteAccess access) {
  assert(!m_impl->started && "add_route after start");
  m_impl->routes.push_back(
      Route{std::move(method), std::regex(path_regex), std::move(handler), access});
}

Result<int> RegistryServer::start() {
  if (m_impl->started)
    return Error(ErrorCode::failed_precondition, "registry server already started");
  const auto& o = m_impl->options;
  int port = o.port;
  if (port == 0) {
    port = m_impl->http->bind_to_any_port(o.host);
  } else if (!m_impl->http->bind_to_port(o.host, port)) {
    port = -1;
  }
  if (port < 0)
    return Error(ErrorCode::unavailable,
                 "cannot listen on " + o.host + ":" + std::to_string(o.port) +
                     " (address in use, or not an address of this machine)");
  m_impl->started = true;
  Impl* impl = m_impl.get();
  m_impl->thread = std::thread([impl] {
    impl->http->listen_after_bind();
    impl->listen_returned = true;
  });
  log::info("registry", "listening",
            {{"address", o.host + ":" + std::to_string(port)},
             {"tls", o.tls ? "on" : "off"},
             {"auth", m_impl->auth.open_access() ? "loopback-only, no tokens" : "tokens"}});
  return port;
}

void RegistryServer::stop() {
  if (!m_impl || !m_impl->thread.joinable()) return;
  // httplib's stop() does nothing until the listener has marked itself running; wait for that
  // (or for the listener to have given up) so that the stop cannot be lost.
  while (!m_impl->listen_returned && !m_impl->http->is_running()) std::this_thread::yield();
  m_impl->http->stop();
  m_impl->thread.join();
}

}  // namespace envd::builder
