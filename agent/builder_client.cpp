// The envd API client (see builder_client.hpp) over registry::Transport. Blob batches are streamed
// straight from the files (a record header, then the file's bytes), so memory stays flat however
// much is uploaded; the builder verifies every blob against its digest as it arrives.
#include "agent/builder_client.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "envd/registry/http_transport.hpp"
#include "envd/util/unique_fd.hpp"

namespace envd::agent {
namespace {

using json = nlohmann::json;

constexpr std::string_view k_json = "application/json";
constexpr std::size_t k_missing_chunk = 50000;       // digests per missing-blobs request
constexpr std::uint64_t k_max_answer = 64ULL << 20;  // a 409 lists every missing digest
constexpr int k_poll_seconds = 30;                   // build long polls

// "sha256:<hex> <size>\n": a batch record's header (builder/blob_batch.hpp).
std::string record_header(const BlobSource& blob) {
  return blob.digest.str() + " " + std::to_string(blob.size) + "\n";
}

// The message of a distribution-spec error body, or of a batch answer, else the raw body.
std::string answer_message(const registry::HttpResponse& r) {
  auto j = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  if (j.is_object() && j.contains("errors") && j["errors"].is_array() && !j["errors"].empty() &&
      j["errors"][0].is_object()) {
    const json& e = j["errors"][0];
    std::string code = e.value("code", "");
    std::string message = e.value("message", "");
    return code.empty() ? message : code + ": " + message;
  }
  if (j.is_object() && j.contains("failed") && j["failed"].is_object())
    return j["failed"].value("error", "");
  std::string body = r.body.substr(0, 200);
  return body.empty() ? "no details" : body;
}

// The error for a non-success answer: the status decides the code (DESIGN.md §6 maps codes to
// statuses the other way round), the body supplies the message.
Error status_error(const registry::HttpResponse& r, const std::string& what,
                   std::string_view repository) {
  std::string msg = what + ": HTTP " + std::to_string(r.status) + ": " + answer_message(r);
  switch (r.status) {
    case 401:
      return Error(ErrorCode::permission_denied,
                   msg +
                       " (the builder refused the token: set ENVD_TOKEN, or token / "
                       "token_file in the envd config, to a token the builder accepts)");
    case 403:
      return Error(ErrorCode::permission_denied,
                   msg + " (the token may not use " + std::string(repository) +
                       ": use a token granted push on its namespace, or another --name)");
    case 400:
    case 413:
      return Error(ErrorCode::invalid_argument, msg);
    case 404:
      return Error(ErrorCode::not_found, msg);
    case 409:
      return Error(ErrorCode::failed_precondition, msg);
    default:
      return Error(r.status >= 500 ? ErrorCode::unavailable : ErrorCode::internal, msg);
  }
}

// Parses a JSON object answer; internal when the builder answered something else.
Result<json> json_answer(const registry::HttpResponse& r, const std::string& what) {
  auto j = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object())
    return Error(ErrorCode::internal,
                 what + ": the answer is not a JSON object: " + r.body.substr(0, 200));
  return j;
}

Result<oci::Digest> digest_field(const json& j, std::string_view key, const std::string& what) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string())
    return Error(ErrorCode::internal, what + ": the answer has no \"" + std::string(key) + "\"");
  auto d = oci::Digest::parse(it->get<std::string>());
  if (!d) return d.error().with_context(what);
  return d;
}

Result<std::vector<oci::Digest>> digest_list(const json& j, std::string_view key,
                                             const std::string& what) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array())
    return Error(ErrorCode::internal,
                 what + ": the answer has no \"" + std::string(key) + "\" list");
  std::vector<oci::Digest> out;
  for (const auto& v : *it) {
    auto d = oci::Digest::parse(v.is_string() ? v.get<std::string>() : v.dump());
    if (!d) return d.error().with_context(what);
    out.push_back(*d);
  }
  return out;
}

std::uint64_t number(const json& j, std::string_view key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number_unsigned() ? it->get<std::uint64_t>() : 0;
}

// Connects to host:port once, without HTTP, to learn why the builder cannot be reached: the
// transport only says "could not connect". Returns the errno text, or "" when it connects.
std::string connect_failure(const std::string& host, int port, std::chrono::milliseconds timeout) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found);
  if (rc != 0) return std::string("cannot resolve ") + host + ": " + ::gai_strerror(rc);
  std::string why = "no address";
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    UniqueFd fd(::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd.valid()) continue;
    int err = 0;
    if (::connect(fd.get(), a->ai_addr, a->ai_addrlen) != 0) {
      err = errno;
      if (err == EINPROGRESS) {
        pollfd p{fd.get(), POLLOUT, 0};
        int n = ::poll(&p, 1, static_cast<int>(timeout.count()));
        socklen_t len = sizeof err;
        if (n == 0) {
          err = ETIMEDOUT;
        } else if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
          err = errno;
        }
      }
    }
    if (err == 0) {
      why.clear();
      break;
    }
    why = std::strerror(err);
    if (!why.empty()) why[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(why[0])));
  }
  ::freeaddrinfo(found);
  return why;
}

// Streams a batch body: each blob's header, then its file's bytes. Checks each file still has the
// size the snapshot recorded (the builder checks the digest).
class BatchBody {
 public:
  BatchBody(const std::vector<const BlobSource*>& blobs, std::atomic<std::uint64_t>& sent,
            std::atomic<std::uint64_t>* progress)
      : m_blobs(blobs), m_sent(sent), m_progress(progress) {}

  static std::uint64_t length(const std::vector<const BlobSource*>& blobs) {
    std::uint64_t n = 0;
    for (const auto* b : blobs) n += record_header(*b).size() + b->size;
    return n;
  }

  Result<std::size_t> read(char* buffer, std::size_t size) {
    std::size_t n = 0;
    while (n < size && m_index < m_blobs.size()) {
      const BlobSource& blob = *m_blobs[m_index];
      if (m_header_off == 0 && m_header.empty()) m_header = record_header(blob);
      if (m_header_off < m_header.size()) {
        std::size_t take = std::min(size - n, m_header.size() - m_header_off);
        std::memcpy(buffer + n, m_header.data() + m_header_off, take);
        m_header_off += take;
        n += take;
        if (m_header_off < m_header.size()) break;
        m_remaining = blob.size;
        if (m_remaining > 0) ENVD_TRY_VOID(open(blob));
      }
      if (m_remaining > 0) {
        if (n == size) break;
        auto want = static_cast<std::size_t>(std::min<std::uint64_t>(m_remaining, size - n));
        ssize_t got = ::read(m_fd.get(), buffer + n, want);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return Error::from_errno("read " + blob.path.string(), errno);
        if (got == 0) return changed(blob, "it is shorter now");
        n += static_cast<std::size_t>(got);
        m_remaining -= static_cast<std::uint64_t>(got);
        if (m_remaining > 0) continue;
      }
      m_fd = UniqueFd();
      m_header.clear();
      m_header_off = 0;
      ++m_index;
    }
    m_sent += n;
    if (m_progress != nullptr) *m_progress += n;
    return n;
  }

 private:
  static Error changed(const BlobSource& blob, std::string_view why) {
    return Error(ErrorCode::failed_precondition, blob.path.string() +
                                                     " changed since it was hashed (" +
                                                     std::string(why) + "); run envd push again");
  }

  Result<void> open(const BlobSource& blob) {
    m_fd = UniqueFd(::open(blob.path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
    if (!m_fd.valid()) {
      if (errno == ENOENT || errno == ELOOP) return changed(blob, "it is gone or a symlink now");
      return Error::from_errno("open " + blob.path.string(), errno);
    }
    struct stat st {};
    if (::fstat(m_fd.get(), &st) != 0)
      return Error::from_errno("stat " + blob.path.string(), errno);
    if (!S_ISREG(st.st_mode)) return changed(blob, "it is no regular file now");
    if (static_cast<std::uint64_t>(st.st_size) != blob.size)
      return changed(blob, std::to_string(st.st_size) + " bytes, not " + std::to_string(blob.size));
    return {};
  }

  const std::vector<const BlobSource*>& m_blobs;
  std::atomic<std::uint64_t>& m_sent;
  std::atomic<std::uint64_t>* m_progress;
  std::size_t m_index = 0;
  std::string m_header;
  std::size_t m_header_off = 0;
  std::uint64_t m_remaining = 0;
  UniqueFd m_fd;
};

std::string encode_query(std::string_view s) {
  static constexpr char k_hex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += k_hex[c >> 4];
      out += k_hex[c & 15];
    }
  }
  return out;
}

}  // namespace

// One request: the target below the builder URL, with auth, and its description for errors.
struct BuilderClient::Exchange {
  BuilderClient& client;
  registry::HttpRequest request;
  std::string what;

  Exchange(BuilderClient& c, std::string method, const std::string& target) : client(c) {
    request.method = std::move(method);
    auto url = registry::parse_url(c.m_url + target);
    assert(url.has_value());  // m_url parsed in create(); targets are built from valid names
    request.url = *url;
    request.max_body = k_max_answer;
    if (!c.m_options.token.empty())
      request.headers.emplace_back("Authorization", "Bearer " + c.m_options.token);
    what = request.method + " " + c.m_url + target;
  }

  Result<registry::HttpResponse> send() {
    if (!request.read_body) client.m_bytes_sent += request.body.size();
    auto r = client.m_transport->send(request);
    if (!r && r.error().code() == ErrorCode::unavailable) return client.unreachable(r.error());
    return r;
  }
};

BuilderClient::BuilderClient(BuilderClientOptions options, std::string url,
                             std::unique_ptr<registry::Transport> transport)
    : m_options(std::move(options)), m_url(std::move(url)), m_transport(std::move(transport)) {}

BuilderClient::~BuilderClient() = default;

Result<std::unique_ptr<BuilderClient>> BuilderClient::create(BuilderClientOptions options) {
  std::string url = options.url;
  while (url.ends_with('/')) url.pop_back();
  auto parsed = registry::parse_url(url);
  if (!parsed) return parsed.error().with_context("builder URL");
  if (parsed->target != "/" || parsed->host.empty())
    return Error(
        ErrorCode::invalid_argument,
        "builder URL \"" + options.url + "\": expected http(s)://HOST[:PORT] without a path");
  registry::TransportOptions t;
  t.ca_file = options.ca_file;
  t.connect_timeout = options.connect_timeout;
  t.stall_timeout = options.stall_timeout;
  t.user_agent = "envd-agent";
  auto transport = std::make_unique<registry::Transport>(std::move(t));
  return std::unique_ptr<BuilderClient>(
      new BuilderClient(std::move(options), std::move(url), std::move(transport)));
}

std::string BuilderClient::host() const {
  std::string_view rest = m_url;
  rest.remove_prefix(rest.find("://") + 3);
  return std::string(rest);
}

Error BuilderClient::unreachable(const Error& error) const {
  auto url = registry::parse_url(m_url);
  std::string why =
      url ? connect_failure(url->host, url->port,
                            std::min(m_options.connect_timeout, std::chrono::milliseconds(3000)))
          : std::string();
  if (why.empty()) return error.with_context("builder " + m_url);
  return Error(ErrorCode::unavailable, "cannot reach builder " + m_url + ": " + why +
                                           "; is `envd builder serve` running there? (set the "
                                           "builder with --builder, ENVD_BUILDER or the config)");
}

Result<std::vector<oci::Digest>> BuilderClient::missing_blobs(
    std::string_view repository, const std::vector<oci::Digest>& digests) {
  std::vector<oci::Digest> out;
  for (std::size_t start = 0; start < digests.size(); start += k_missing_chunk) {
    std::size_t end = std::min(digests.size(), start + k_missing_chunk);
    json list = json::array();
    for (std::size_t i = start; i < end; ++i) list.push_back(digests[i].str());
    Exchange x(*this, "POST", "/envd/v1/" + std::string(repository) + "/blobs/missing");
    x.request.content_type = k_json;
    x.request.body = json{{"digests", std::move(list)}}.dump();
    ENVD_TRY(auto r, x.send());
    if (r.status != 200) return status_error(r, x.what, repository);
    ENVD_TRY(auto j, json_answer(r, x.what));
    ENVD_TRY(auto missing, digest_list(j, "missing", x.what));
    out.insert(out.end(), missing.begin(), missing.end());
  }
  return out;
}

Result<UploadStats> BuilderClient::upload_batch(std::string_view repository,
                                                const std::vector<const BlobSource*>& batch,
                                                std::atomic<std::uint64_t>* progress) {
  std::atomic<std::uint64_t> sent{0};
  BatchBody body(batch, sent, progress);
  Exchange x(*this, "POST", "/envd/v1/" + std::string(repository) + "/blobs/batch");
  x.request.content_type = "application/octet-stream";
  x.request.body_length = BatchBody::length(batch);
  x.request.read_body = [&body](char* buffer, std::size_t size) { return body.read(buffer, size); };
  auto r = x.send();
  m_bytes_sent += sent.load();
  if (!r) return r.error();
  if (r->status == 400) {
    // Our records are well formed, so a refused record is a file whose bytes no longer match.
    auto j = json::parse(r->body, nullptr, false);
    if (j.is_object() && j.contains("failed") && j["failed"].is_object() &&
        j["failed"]["digest"].is_string()) {
      std::string failed = j["failed"]["digest"].get<std::string>();
      for (const auto* b : batch)
        if (b->digest.str() == failed)
          return Error(ErrorCode::failed_precondition,
                       b->path.string() + " changed since it was hashed (the builder says: " +
                           answer_message(*r) + "); run envd push again");
    }
  }
  if (r->status != 200) return status_error(*r, x.what, repository);
  ENVD_TRY(auto j, json_answer(*r, x.what));
  ENVD_TRY(auto stored, digest_list(j, "stored", x.what));
  if (stored.size() != batch.size())
    return Error(ErrorCode::internal, x.what + ": the builder stored " +
                                          std::to_string(stored.size()) + " of " +
                                          std::to_string(batch.size()) + " blobs");
  return UploadStats{stored.size(), sent.load(), 1};
}

Result<UploadStats> BuilderClient::upload_blobs(std::string_view repository,
                                                const std::vector<BlobSource>& blobs,
                                                const UploadOptions& options,
                                                std::atomic<std::uint64_t>* progress) {
  // Large blobs alone, biggest first (they take longest, so start them first); small ones in
  // batches bounded by bytes and count.
  std::vector<const BlobSource*> order;
  for (const auto& b : blobs) order.push_back(&b);
  std::stable_sort(order.begin(), order.end(),
                   [](const BlobSource* a, const BlobSource* b) { return a->size > b->size; });
  std::vector<std::vector<const BlobSource*>> batches;
  std::vector<const BlobSource*> current;
  std::uint64_t current_bytes = 0;
  for (const auto* b : order) {
    if (b->size >= options.large_bytes) {
      batches.push_back({b});
      continue;
    }
    if (!current.empty() &&
        (current_bytes + b->size > options.batch_bytes || current.size() >= options.batch_blobs)) {
      batches.push_back(std::move(current));
      current.clear();
      current_bytes = 0;
    }
    current.push_back(b);
    current_bytes += b->size;
  }
  if (!current.empty()) batches.push_back(std::move(current));

  std::mutex mutex;
  UploadStats total;
  std::optional<Error> first_error;
  std::size_t next = 0;
  auto worker = [&] {
    for (;;) {
      std::size_t i = 0;
      {
        std::lock_guard lock(mutex);
        if (first_error || next >= batches.size()) return;
        i = next++;
      }
      auto r = upload_batch(repository, batches[i], progress);
      std::lock_guard lock(mutex);
      if (!r) {
        if (!first_error) first_error = r.error();
        return;
      }
      total.blobs += r->blobs;
      total.bytes += r->bytes;
      total.requests += 1;
    }
  };
  std::size_t threads = std::min<std::size_t>(std::max(options.parallel, 1u), batches.size());
  std::vector<std::thread> pool;
  for (std::size_t t = 1; t < threads; ++t) pool.emplace_back(worker);
  if (threads > 0) worker();
  for (auto& t : pool) t.join();
  if (first_error)
    return first_error->with_context("upload " + std::to_string(blobs.size()) + " blobs to " +
                                     m_url);
  return total;
}

Result<SnapshotSubmission> BuilderClient::submit_snapshot(std::string_view repository,
                                                          std::string_view document,
                                                          std::string_view media_type) {
  Exchange x(*this, "POST", "/envd/v1/" + std::string(repository) + "/snapshots");
  x.request.content_type = std::string(media_type);
  x.request.body = std::string(document);
  ENVD_TRY(auto r, x.send());
  if (r.status == 409) {
    ENVD_TRY(auto j, json_answer(r, x.what));
    ENVD_TRY(auto missing, digest_list(j, "missing", x.what));
    return SnapshotSubmission{std::nullopt, std::move(missing)};
  }
  if (r.status != 200) return status_error(r, x.what, repository);
  ENVD_TRY(auto j, json_answer(r, x.what));
  ENVD_TRY(auto digest, digest_field(j, "snapshot_digest", x.what));
  return SnapshotSubmission{digest, {}};
}

Result<std::string> BuilderClient::start_build(std::string_view repository,
                                               const oci::Digest& snapshot_digest,
                                               std::string_view tag, std::string_view compression) {
  Exchange x(*this, "POST", "/envd/v1/" + std::string(repository) + "/builds");
  json body = {{"snapshot_digest", snapshot_digest.str()}, {"tag", std::string(tag)}};
  if (!compression.empty()) body["compression"] = std::string(compression);
  x.request.content_type = k_json;
  x.request.body = body.dump();
  ENVD_TRY(auto r, x.send());
  if (r.status != 202 && r.status != 200) return status_error(r, x.what, repository);
  ENVD_TRY(auto j, json_answer(r, x.what));
  auto id = j.find("build_id");
  if (id == j.end() || !id->is_string() || id->get<std::string>().empty() ||
      id->get<std::string>().find_first_not_of("0123456789abcdef") != std::string::npos)
    return Error(ErrorCode::internal, x.what + ": the answer has no valid build_id");
  return id->get<std::string>();
}

Result<RemoteBuild> BuilderClient::build_status(std::string_view repository, std::string_view id,
                                                std::uint64_t since, int wait_seconds) {
  Exchange x(*this, "GET",
             "/envd/v1/" + std::string(repository) + "/builds/" + std::string(id) +
                 "?wait_seconds=" + std::to_string(std::max(wait_seconds, 0)) +
                 "&since=" + std::to_string(since));
  ENVD_TRY(auto r, x.send());
  if (r.status != 200) return status_error(r, x.what, repository);
  ENVD_TRY(auto j, json_answer(r, x.what));
  RemoteBuild b;
  b.id = std::string(id);
  std::string state = j.value("state", "");
  if (state == "running") {
    b.state = RemoteBuild::State::running;
  } else if (state == "succeeded") {
    b.state = RemoteBuild::State::succeeded;
  } else if (state == "failed") {
    b.state = RemoteBuild::State::failed;
  } else {
    return Error(ErrorCode::internal, x.what + ": unknown build state \"" + state + "\"");
  }
  b.version = number(j, "version");
  b.layers_total = number(j, "layers_total");
  b.layers_done = number(j, "layers_done");
  b.layers_reused = number(j, "layers_reused");
  b.bytes_written = number(j, "bytes_written");
  if (b.state == RemoteBuild::State::failed)
    b.error = j["error"].is_string() ? j["error"].get<std::string>() : "no details";
  if (b.state == RemoteBuild::State::succeeded) {
    if (!j.contains("result") || !j["result"].is_object())
      return Error(ErrorCode::internal, x.what + ": a succeeded build without a result");
    const json& res = j["result"];
    ENVD_TRY(b.manifest_digest, digest_field(res, "manifest_digest", x.what));
    b.layers = number(res, "layers");
    b.layers_reused = number(res, "layers_reused");
    b.bytes_written = number(res, "bytes_written");
    b.seconds = res.value("seconds", 0.0);
  }
  return b;
}

Result<RemoteBuild> BuilderClient::wait_build(
    std::string_view repository, std::string_view id,
    const std::function<void(const RemoteBuild&)>& on_progress) {
  std::uint64_t since = 0;
  for (;;) {
    ENVD_TRY(auto b, build_status(repository, id, since, k_poll_seconds));
    if (on_progress) on_progress(b);
    if (b.state == RemoteBuild::State::failed)
      return Error(ErrorCode::internal,
                   "build " + std::string(id) + " on " + m_url + " failed: " + b.error);
    if (b.state == RemoteBuild::State::succeeded) return b;
    since = b.version;
  }
}

Result<std::optional<oci::Digest>> BuilderClient::watch_tag(std::string_view repository,
                                                            std::string_view tag,
                                                            const std::optional<oci::Digest>& known,
                                                            int wait_seconds) {
  std::string target = "/envd/v1/" + std::string(repository) + "/tags/" + std::string(tag) +
                       "/watch?wait_seconds=" + std::to_string(std::max(wait_seconds, 0));
  if (known) target += "&digest=" + encode_query(known->str());
  Exchange x(*this, "GET", target);
  ENVD_TRY(auto r, x.send());
  if (r.status != 200) return status_error(r, x.what, repository);
  ENVD_TRY(auto j, json_answer(r, x.what));
  if (!j.contains("digest") || j["digest"].is_null()) return std::optional<oci::Digest>();
  ENVD_TRY(auto d, digest_field(j, "digest", x.what));
  return std::optional<oci::Digest>(d);
}

Result<std::optional<TagManifest>> BuilderClient::tag_manifest(std::string_view repository,
                                                               std::string_view tag) {
  Exchange x(*this, "GET", "/v2/" + std::string(repository) + "/manifests/" + std::string(tag));
  x.request.headers.emplace_back("Accept", "application/vnd.oci.image.manifest.v1+json");
  ENVD_TRY(auto r, x.send());
  if (r.status == 404) return std::optional<TagManifest>();
  if (r.status != 200) return status_error(r, x.what, repository);
  ENVD_TRY(auto j, json_answer(r, x.what));
  TagManifest m{oci::sha256_of(r.body), std::nullopt, {}};
  if (j.contains("annotations") && j["annotations"].is_object()) {
    const json& a = j["annotations"];
    if (auto it = a.find("dev.envd.snapshot.digest"); it != a.end() && it->is_string())
      if (auto d = oci::Digest::parse(it->get<std::string>())) m.snapshot_digest = *d;
  }
  if (j.contains("layers") && j["layers"].is_array())
    for (const auto& l : j["layers"])
      m.layer_media_types.push_back(l.is_object() ? l.value("mediaType", "") : "");
  return std::optional<TagManifest>(std::move(m));
}

}  // namespace envd::agent
