// Distribution API blob pushes: upload sessions (POST, PATCH, GET, PUT, DELETE), monolithic
// POST ?digest=, and cross-repository mounts. Session bytes live in <upload_dir>/<id>, the
// session's offset in the RegistryIndex, so a session survives requests and restarts; a blob
// reaches the store only through BlobWriter::commit, which verifies its digest.
// Spec: https://github.com/opencontainers/distribution-spec/blob/v1.1.0/spec.md#pushing-blobs
#include <fcntl.h>
#include <openssl/rand.h>
#include <unistd.h>
#include "envd/util/unique_fd.hpp"

#include <cerrno>
#include <charconv>
#include <chrono>
#include <functional>
#include <variant>
#include <vector>

#include "builder/registry_routes.hpp"
#include "envd/util/log.hpp"

namespace envd::builder::registry_detail {
namespace {

constexpr std::size_t k_chunk = 256 * 1024;

// A random session id shaped like a UUID (v4): unguessable, and safe as a file name.
std::string new_session_id() {
  unsigned char b[16];
  if (RAND_bytes(b, sizeof b) != 1) return {};
  b[6] = static_cast<unsigned char>((b[6] & 0x0f) | 0x40);
  b[8] = static_cast<unsigned char>((b[8] & 0x3f) | 0x80);
  static constexpr char k_hex[] = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    s += k_hex[b[i] >> 4];
    s += k_hex[b[i] & 15];
  }
  return s;
}

std::string upload_url(const std::string& repo, const std::string& id) {
  return "/v2/" + repo + "/blobs/uploads/" + id;
}

// The headers every upload response carries: where to continue, and what was received so far
// ("0-<last byte>", "0-0" before the first byte, as distribution answers).
HttpResponse session_response(int status, const UploadSession& s) {
  HttpResponse r;
  r.status = status;
  r.set_header("Location", upload_url(s.repository, s.id));
  r.set_header("Range", "0-" + std::to_string(s.received == 0 ? 0 : s.received - 1));
  r.set_header("Docker-Upload-UUID", s.id);
  return r;
}

HttpResponse blob_created(const std::string& repo, const oci::Digest& digest) {
  HttpResponse r;
  r.status = 201;
  r.set_header("Location", "/v2/" + repo + "/blobs/" + digest.str());
  r.set_header("Docker-Content-Digest", digest.str());
  return r;
}

std::optional<std::uint64_t> parse_u64(std::string_view s) {
  std::uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

// Gathers the small pieces cpp-httplib reads from the socket (4 KiB) into large writes.
class WriteBuffer {
 public:
  explicit WriteBuffer(std::function<bool(std::string_view)> out) : m_out(std::move(out)) {
    m_buffer.reserve(k_chunk);
  }
  bool add(std::string_view data) {
    if (m_buffer.size() + data.size() > k_chunk && !flush()) return false;
    if (data.size() >= k_chunk) return m_out(data);
    m_buffer.append(data);
    return true;
  }
  bool flush() {
    bool ok = m_buffer.empty() || m_out(m_buffer);
    m_buffer.clear();
    return ok;
  }

 private:
  std::function<bool(std::string_view)> m_out;
  std::string m_buffer;
};

HttpResponse too_large(std::uint64_t limit) {
  return oci_error(413, "SIZE_INVALID",
                   "blob larger than the limit of " + std::to_string(limit) + " bytes");
}

// Streams the request body into a fresh blob writer and commits it as `digest`: the monolithic
// paths (POST ?digest=, or PUT on a session that holds no bytes yet).
HttpResponse store_body(RegistryContext& ctx, const HttpRequest& req, const std::string& repo,
                        const oci::Digest& digest) {
  const std::uint64_t limit = ctx.limits.blob_bytes;
  if (auto cl = parse_u64(req.header("Content-Length")); cl && *cl > limit) return too_large(limit);
  auto writer = ctx.blobs.begin_write();
  if (!writer) return error_response(writer.error(), ErrorSubject::upload);
  std::optional<Error> write_error;
  WriteBuffer buffer([&](std::string_view data) {
    if (auto r = (*writer)->write(data); !r) write_error = r.error();
    return !write_error;
  });
  std::uint64_t received = 0;
  bool over = false;
  bool ok = req.read_body([&](std::string_view data) {
    received += data.size();
    if (received > limit) {
      over = true;
      return false;
    }
    return buffer.add(data);
  });
  ok = buffer.flush() && ok;
  if (over) return too_large(limit);
  if (write_error) return error_response(*write_error, ErrorSubject::upload);
  if (!ok) return oci_error(400, "BLOB_UPLOAD_INVALID", "request body incomplete");
  if (auto r = (*writer)->commit(digest); !r) return error_response(r.error(), ErrorSubject::blob);
  if (auto r = ctx.index.link_blob(repo, digest); !r)
    return error_response(r.error(), ErrorSubject::blob);
  return blob_created(repo, digest);
}

// Parses a chunk's Content-Range "<first>-<last>" (inclusive; "bytes=" / "bytes " prefixes and a
// "/<total>" suffix tolerated).
std::optional<std::pair<std::uint64_t, std::uint64_t>> parse_content_range(std::string_view h) {
  if (h.starts_with("bytes=") || h.starts_with("bytes ")) h.remove_prefix(6);
  if (auto slash = h.find('/'); slash != std::string_view::npos) h = h.substr(0, slash);
  std::size_t dash = h.find('-');
  if (dash == std::string_view::npos) return std::nullopt;
  auto first = parse_u64(h.substr(0, dash));
  auto last = parse_u64(h.substr(dash + 1));
  if (!first || !last || *last < *first) return std::nullopt;
  return std::pair{*first, *last};
}

using Fd = envd::UniqueFd;

// Appends the request body to the session's file, after checking it continues exactly where the
// session is (else 416 with the current Range: chunks must arrive in order). On any failure the
// file is cut back, so the session stays at its last good offset. Returns the new session state.
std::variant<UploadSession, HttpResponse> append_chunk(RegistryContext& ctx, const HttpRequest& req,
                                                       UploadSession s) {
  std::optional<std::uint64_t> expected_size;
  if (std::string cr = req.header("Content-Range"); !cr.empty()) {
    auto range = parse_content_range(cr);
    if (!range || range->first != s.received) {
      auto r = session_response(416, s);
      r.content_type = "application/json";
      r.body = oci_error(416, "BLOB_UPLOAD_INVALID",
                         "chunk must start at byte " + std::to_string(s.received) +
                             " (Content-Range: " + cr + ")")
                   .body;
      return r;
    }
    expected_size = range->second - range->first + 1;
  }
  auto cl = parse_u64(req.header("Content-Length"));
  if (cl && expected_size && *cl != *expected_size)
    return oci_error(400, "SIZE_INVALID", "Content-Length does not match Content-Range");
  const std::uint64_t limit = ctx.limits.blob_bytes;
  if (cl && s.received + *cl > limit) return too_large(limit);

  auto path = ctx.upload_dir / s.id;
  Fd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW));
  if (fd.get() < 0) {
    if (errno == ENOENT) return oci_error(404, "BLOB_UPLOAD_UNKNOWN", "upload data is gone");
    return error_response(Error::from_errno("open " + path.string(), errno), ErrorSubject::upload);
  }
  // Drop bytes a failed earlier request may have left past the session's offset.
  if (::ftruncate(fd.get(), static_cast<off_t>(s.received)) != 0 ||
      ::lseek(fd.get(), static_cast<off_t>(s.received), SEEK_SET) < 0)
    return error_response(Error::from_errno("truncate " + path.string(), errno),
                          ErrorSubject::upload);
  std::uint64_t added = 0;  // bytes written to the file
  std::uint64_t arrived = 0;
  bool over = false;
  std::optional<Error> write_error;
  WriteBuffer buffer([&](std::string_view data) {
    while (!data.empty()) {
      ssize_t n = ::write(fd.get(), data.data(), data.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        write_error = Error::from_errno("write " + path.string(), errno);
        return false;
      }
      data.remove_prefix(static_cast<std::size_t>(n));
      added += static_cast<std::uint64_t>(n);
    }
    return true;
  });
  bool ok = req.read_body([&](std::string_view data) {
    arrived += data.size();
    if (s.received + arrived > limit) {
      over = true;
      return false;
    }
    return buffer.add(data);
  });
  ok = buffer.flush() && ok;
  std::optional<HttpResponse> failure;
  if (over)
    failure = too_large(limit);
  else if (write_error)
    failure = error_response(*write_error, ErrorSubject::upload);
  else if (!ok)
    failure = oci_error(400, "BLOB_UPLOAD_INVALID", "chunk incomplete");
  else if (expected_size && added != *expected_size)
    failure = oci_error(400, "SIZE_INVALID", "chunk size does not match Content-Range");
  if (failure) {
    (void)::ftruncate(fd.get(), static_cast<off_t>(s.received));
    return std::move(*failure);
  }
  s.received += added;
  if (auto r = ctx.index.set_upload_received(s.id, s.received); !r)
    return error_response(r.error(), ErrorSubject::upload);
  return s;
}

void remove_session(RegistryContext& ctx, const std::string& id) {
  std::error_code ec;
  std::filesystem::remove(ctx.upload_dir / id, ec);
  if (auto r = ctx.index.remove_upload(id); !r)
    log::warn("registry", "cannot remove upload session", {{"error", r.error().message()}});
  ctx.upload_locks.forget(id);
}

// Copies the session's file into a blob writer and commits it as `digest`.
HttpResponse commit_session(RegistryContext& ctx, const UploadSession& s,
                            const oci::Digest& digest) {
  auto path = ctx.upload_dir / s.id;
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (fd.get() < 0)
    return error_response(Error::from_errno("open " + path.string(), errno), ErrorSubject::upload);
  auto writer = ctx.blobs.begin_write();
  if (!writer) return error_response(writer.error(), ErrorSubject::upload);
  std::vector<char> buffer(k_chunk);
  std::uint64_t left = s.received;
  while (left > 0) {
    ssize_t n = ::read(fd.get(), buffer.data(), std::min<std::uint64_t>(left, buffer.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      return oci_error(400, "BLOB_UPLOAD_INVALID", "upload data is shorter than received");
    if (auto r = (*writer)->write(std::string_view(buffer.data(), static_cast<std::size_t>(n))); !r)
      return error_response(r.error(), ErrorSubject::upload);
    left -= static_cast<std::uint64_t>(n);
  }
  if (auto r = (*writer)->commit(digest, s.received); !r)
    return error_response(r.error(), ErrorSubject::blob);
  if (auto r = ctx.index.link_blob(s.repository, digest); !r)
    return error_response(r.error(), ErrorSubject::blob);
  return blob_created(s.repository, digest);
}

HttpResponse start_upload(RegistryContext& ctx, const HttpRequest& req) {
  const std::string& repo = req.matches[1];
  // Cross-repository mount: 201 when the caller may pull `from` and the blob is there; otherwise
  // fall back to a new session, as the spec requires.
  // https://github.com/opencontainers/distribution-spec/blob/v1.1.0/spec.md#mounting-a-blob-from-another-repository
  auto mount = req.query_param("mount");
  auto from = req.query_param("from");
  if (mount && from) {
    auto d = oci::Digest::parse(*mount);
    if (d && is_valid_repository(*from) && req.principal.may(*from, Access::pull)) {
      auto linked = ctx.index.has_blob(*from, *d);
      if (linked && *linked && ctx.blobs.contains(*d)) {
        if (auto r = ctx.index.link_blob(repo, *d); !r)
          return error_response(r.error(), ErrorSubject::blob);
        return blob_created(repo, *d);
      }
    }
  }
  if (auto digest_text = req.query_param("digest")) {
    auto digest = oci::Digest::parse(*digest_text);
    if (!digest) return oci_error(400, "DIGEST_INVALID", digest.error().message());
    return store_body(ctx, req, repo, *digest);
  }
  auto held = ctx.index.upload_bytes_total();
  if (!held) return error_response(held.error(), ErrorSubject::upload);
  if (*held >= ctx.limits.upload_session_bytes)
    return oci_error(429, "TOOMANYREQUESTS",
                     "open upload sessions hold " + std::to_string(*held) + " bytes (limit " +
                         std::to_string(ctx.limits.upload_session_bytes) + "); retry later");
  std::string id = new_session_id();
  if (id.empty())
    return error_response(Error(ErrorCode::internal, "no randomness"), ErrorSubject::upload);
  auto path = ctx.upload_dir / id;
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0)
    return error_response(Error::from_errno("create " + path.string(), errno),
                          ErrorSubject::upload);
  ::close(fd);
  if (auto r = ctx.index.create_upload(id, repo); !r) {
    std::error_code ec;
    std::filesystem::remove(path, ec);
    return error_response(r.error(), ErrorSubject::upload);
  }
  return session_response(202, UploadSession{id, repo, 0, 0});
}

// Looks up the session named in the URL; it must belong to the URL's repository.
std::variant<UploadSession, HttpResponse> find_session(RegistryContext& ctx,
                                                       const HttpRequest& req) {
  auto s = ctx.index.upload(req.matches[2]);
  if (!s) return error_response(s.error(), ErrorSubject::upload);
  if (!*s || (*s)->repository != req.matches[1])
    return oci_error(404, "BLOB_UPLOAD_UNKNOWN", "upload " + req.matches[2] + " not found");
  return **s;
}

// Runs `body` with the session locked and looked up.
template <class F>
HttpResponse with_session(RegistryContext& ctx, const HttpRequest& req, F&& body) {
  auto mutex = ctx.upload_locks.get(req.matches[2]);
  std::lock_guard lock(*mutex);
  auto s = find_session(ctx, req);
  if (auto* err = std::get_if<HttpResponse>(&s)) return std::move(*err);
  return body(std::get<UploadSession>(s));
}

HttpResponse patch_upload(RegistryContext& ctx, const HttpRequest& req) {
  return with_session(ctx, req, [&](const UploadSession& s) {
    auto next = append_chunk(ctx, req, s);
    if (auto* err = std::get_if<HttpResponse>(&next)) return std::move(*err);
    return session_response(202, std::get<UploadSession>(next));
  });
}

HttpResponse finish_upload(RegistryContext& ctx, const HttpRequest& req) {
  auto digest_text = req.query_param("digest");
  if (!digest_text)
    return oci_error(400, "DIGEST_INVALID", "the digest query parameter is required");
  auto digest = oci::Digest::parse(*digest_text);
  if (!digest) return oci_error(400, "DIGEST_INVALID", digest.error().message());
  return with_session(ctx, req, [&](const UploadSession& s) {
    HttpResponse r;
    if (s.received == 0 && req.header("Content-Range").empty()) {
      r = store_body(ctx, req, s.repository, *digest);  // one-shot PUT: no copy through the file
    } else {
      auto next = append_chunk(ctx, req, s);
      if (auto* err = std::get_if<HttpResponse>(&next)) {
        if (err->status == 416) return std::move(*err);  // the client may still resume
        r = std::move(*err);
      } else {
        r = commit_session(ctx, std::get<UploadSession>(next), *digest);
      }
    }
    // Finished or failed (digest mismatch included), the session is over; nothing was stored
    // unless it was verified.
    remove_session(ctx, s.id);
    return r;
  });
}

HttpResponse upload_status(RegistryContext& ctx, const HttpRequest& req) {
  return with_session(ctx, req, [&](const UploadSession& s) { return session_response(204, s); });
}

HttpResponse cancel_upload(RegistryContext& ctx, const HttpRequest& req) {
  return with_session(ctx, req, [&](const UploadSession& s) {
    remove_session(ctx, s.id);
    HttpResponse r;
    r.status = 204;
    return r;
  });
}

}  // namespace

Result<void> drop_stale_uploads(RegistryContext& ctx, std::int64_t ttl_seconds) {
  auto now = std::chrono::duration_cast<std::chrono::seconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count();
  ENVD_TRY(auto stale, ctx.index.uploads_created_before(now - ttl_seconds));
  for (const auto& s : stale) remove_session(ctx, s.id);
  std::error_code ec;
  std::vector<std::filesystem::path> files;
  for (auto it = std::filesystem::directory_iterator(ctx.upload_dir, ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
    files.push_back(it->path());
  if (ec) return Error::from_errno("list " + ctx.upload_dir.string(), ec.value());
  for (const auto& f : files) {
    ENVD_TRY(auto s, ctx.index.upload(f.filename().string()));
    if (!s) {
      std::filesystem::remove(f, ec);
      log::info("registry", "removed orphaned upload data", {{"path", f.string()}});
    }
  }
  return {};
}

void add_upload_routes(RegistryServer& server, RegistryContext& ctx) {
  const std::string uploads = std::string("/v2/") + k_name_pattern + "/blobs/uploads/";
  const std::string session = uploads + "([A-Za-z0-9-]{1,64})";
  server.add_route(
      "POST", uploads + "?", [&ctx](const HttpRequest& req) { return start_upload(ctx, req); },
      RouteAccess::push);
  server.add_route(
      "PATCH", session, [&ctx](const HttpRequest& req) { return patch_upload(ctx, req); },
      RouteAccess::push);
  server.add_route(
      "PUT", session, [&ctx](const HttpRequest& req) { return finish_upload(ctx, req); },
      RouteAccess::push);
  server.add_route(
      "GET", session, [&ctx](const HttpRequest& req) { return upload_status(ctx, req); },
      RouteAccess::push);
  server.add_route(
      "DELETE", session, [&ctx](const HttpRequest& req) { return cancel_upload(ctx, req); },
      RouteAccess::push);
}

}  // namespace envd::builder::registry_detail
