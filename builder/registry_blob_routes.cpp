// Distribution API blob pulls: HEAD and GET /v2/<name>/blobs/<digest>, streamed from the blob
// store in bounded chunks, with single-range requests answered 206.
// Spec: https://github.com/opencontainers/distribution-spec/blob/v1.1.0/spec.md#pulling-blobs
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <variant>
#include <vector>

#include "builder/registry_routes.hpp"
#include "envd/util/log.hpp"

namespace envd::builder::registry_detail {
namespace {

constexpr std::size_t k_chunk = 256 * 1024;

// Reads a blob's bytes from `base` onwards, in order. Uses pread on the store's file when it has
// one (no copy of the whole blob, no seek by reading), else the store's sequential reader.
class BlobSource {
 public:
  BlobSource(const store::BlobStore& blobs, oci::Digest digest, std::uint64_t base)
      : m_blobs(blobs), m_digest(digest), m_base(base) {}
  ~BlobSource() {
    if (m_fd >= 0) ::close(m_fd);
  }
  BlobSource(const BlobSource&) = delete;
  BlobSource& operator=(const BlobSource&) = delete;

  // Writes part of [offset, offset + length) relative to base; false on error or client gone.
  bool write_some(std::uint64_t offset, std::uint64_t length, const BodyWriter& write) {
    if (!m_opened && !open()) return false;
    std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(length, k_chunk));
    std::size_t got = 0;
    if (m_fd >= 0) {
      ssize_t n;
      do {
        n = ::pread(m_fd, m_buffer.data(), want, static_cast<off_t>(m_base + offset));
      } while (n < 0 && errno == EINTR);
      if (n <= 0)
        return fail(n < 0 ? std::string(std::strerror(errno)) : "blob shorter than expected");
      got = static_cast<std::size_t>(n);
    } else {
      // Sequential reader: skip up to the requested offset first (only for ranges).
      while (m_position < m_base + offset) {
        auto n = m_reader->read(m_buffer.data(), static_cast<std::size_t>(std::min<std::uint64_t>(
                                                     k_chunk, m_base + offset - m_position)));
        if (!n || *n == 0) return fail(n ? "blob shorter than expected" : n.error().message());
        m_position += *n;
      }
      auto n = m_reader->read(m_buffer.data(), want);
      if (!n || *n == 0) return fail(n ? "blob shorter than expected" : n.error().message());
      got = *n;
      m_position += got;
    }
    return write(std::string_view(m_buffer.data(), got));
  }

 private:
  bool open() {
    m_opened = true;
    if (auto path = m_blobs.path_of(m_digest)) {
      m_fd = ::open(path->c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
      if (m_fd >= 0) return true;
    }
    auto reader = m_blobs.open(m_digest);
    if (!reader) return fail(reader.error().message());
    m_reader = std::move(*reader);
    return true;
  }
  bool fail(const std::string& why) {
    log::error("registry", "blob read failed", {{"digest", m_digest.str()}, {"error", why}});
    return false;
  }

  const store::BlobStore& m_blobs;
  oci::Digest m_digest;
  std::uint64_t m_base;
  bool m_opened = false;
  int m_fd = -1;
  std::unique_ptr<store::BlobReader> m_reader;
  std::uint64_t m_position = 0;
  std::vector<char> m_buffer = std::vector<char>(k_chunk);
};

struct WholeBlob {};
struct Unsatisfiable {};
struct ByteRange {
  std::uint64_t first;
  std::uint64_t last;  // inclusive
};

std::optional<std::uint64_t> parse_u64(std::string_view s) {
  std::uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

// One "bytes=first-last", "bytes=first-" or "bytes=-suffix" range (RFC 7233 §2.1). Anything else
// (several ranges, other units, bad syntax) is ignored and the whole blob is sent, as RFC 7233
// §3.1 allows.
std::variant<WholeBlob, Unsatisfiable, ByteRange> parse_range(std::string_view h,
                                                              std::uint64_t size) {
  constexpr std::string_view k_prefix = "bytes=";
  if (!h.starts_with(k_prefix) || h.find(',') != std::string_view::npos) return WholeBlob{};
  h.remove_prefix(k_prefix.size());
  std::size_t dash = h.find('-');
  if (dash == std::string_view::npos) return WholeBlob{};
  std::string_view a = h.substr(0, dash), b = h.substr(dash + 1);
  if (a.empty()) {
    auto suffix = parse_u64(b);
    if (!suffix) return WholeBlob{};
    if (*suffix == 0 || size == 0) return Unsatisfiable{};
    return ByteRange{size - std::min(*suffix, size), size - 1};
  }
  auto first = parse_u64(a);
  if (!first) return WholeBlob{};
  std::uint64_t last = size == 0 ? 0 : size - 1;
  if (!b.empty()) {
    auto l = parse_u64(b);
    if (!l || *l < *first) return WholeBlob{};
    last = std::min(*l, last);
  }
  if (*first >= size) return Unsatisfiable{};
  return ByteRange{*first, last};
}

HttpResponse get_blob(RegistryContext& ctx, const HttpRequest& req) {
  const std::string& repo = req.matches[1];
  auto digest = oci::Digest::parse(req.matches[2]);
  if (!digest) return oci_error(400, "DIGEST_INVALID", digest.error().message());
  // Blobs are visible only in repositories they were pushed or mounted into.
  auto linked = ctx.index.has_blob(repo, *digest);
  if (!linked) return error_response(linked.error(), ErrorSubject::blob);
  auto size =
      *linked ? ctx.blobs.size(*digest) : Result<std::uint64_t>(Error(ErrorCode::not_found, ""));
  if (!size)
    return oci_error(404, "BLOB_UNKNOWN", "blob " + digest->str() + " not found in " + repo,
                     "{\"digest\":\"" + digest->str() + "\"}");

  HttpResponse r;
  r.content_type = "application/octet-stream";
  r.set_header("Docker-Content-Digest", digest->str());
  r.set_header("ETag", "\"" + digest->str() + "\"");
  r.set_header("Accept-Ranges", "bytes");
  // Content-addressed: the bytes behind this URL never change.
  r.set_header("Cache-Control", "max-age=31536000, immutable");

  std::uint64_t first = 0;
  std::uint64_t length = *size;
  auto range = parse_range(req.header("Range"), *size);
  if (std::holds_alternative<Unsatisfiable>(range)) {
    r.status = 416;
    r.set_header("Content-Range", "bytes */" + std::to_string(*size));
    return r;
  }
  if (auto* br = std::get_if<ByteRange>(&range)) {
    r.status = 206;
    first = br->first;
    length = br->last - br->first + 1;
    r.set_header("Content-Range", "bytes " + std::to_string(br->first) + "-" +
                                      std::to_string(br->last) + "/" + std::to_string(*size));
  }
  r.content_length = length;
  if (length > 0) {
    auto source = std::make_shared<BlobSource>(ctx.blobs, *digest, first);
    r.provider = [source](std::uint64_t offset, std::uint64_t len, const BodyWriter& write) {
      return source->write_some(offset, len, write);
    };
  }
  return r;
}

}  // namespace

void add_blob_routes(RegistryServer& server, RegistryContext& ctx) {
  server.add_route(
      "GET", std::string("/v2/") + k_name_pattern + "/blobs/" + k_reference_pattern,
      [&ctx](const HttpRequest& req) { return get_blob(ctx, req); }, RouteAccess::pull);
}

}  // namespace envd::builder::registry_detail
