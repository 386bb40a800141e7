// The /envd/v1/ routes (see envd_api.hpp): JSON in and out, errors in the distribution spec's
// error body ({"errors":[{"code","message"}]}) so that one client error path reads both APIs.
// https://github.com/opencontainers/distribution-spec/blob/v1.1.0/spec.md#error-codes
#include "builder/envd_api.hpp"

#include <algorithm>
#include <charconv>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <variant>

#include "builder/blob_batch.hpp"
#include "builder/build_queue.hpp"
#include "builder/snapshot_store.hpp"
#include "envd/snapshot/snapshot_patch.hpp"
#include "envd/util/atomic_file.hpp"
#include "envd/util/log.hpp"

namespace envd::builder {

struct EnvdApi::Impl {
  BuilderState& state;
  EnvdApiOptions options;
  SnapshotStore snapshots;
  BuildQueue queue;

  Impl(BuilderState& s, const EnvdApiOptions& o)
      : state(s),
        options(o),
        snapshots(s.dir / "snapshots"),
        queue(*s.builder, *s.blobs,
              BuildQueue::Options{o.limits.concurrent_builds, o.finished_builds_kept, o.plan,
                                  o.envd_version, o.before_build, o.on_image_built}) {}
};

EnvdApi::~EnvdApi() = default;
void EnvdApi::tags_changed() {
  m_impl->queue.tags_changed();
}
void EnvdApi::shutdown() {
  m_impl->queue.shutdown();
}

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

HttpResponse json_response(int status, const json& body) {
  HttpResponse r;
  r.status = status;
  r.content_type = "application/json";
  r.body = body.dump();
  return r;
}

HttpResponse invalid(std::string_view code, std::string message) {
  return oci_error(400, code, message);
}

HttpResponse too_large(std::string_view what, std::uint64_t limit) {
  return oci_error(
      413, "TOO_LARGE",
      std::string(what) + " larger than the limit of " + std::to_string(limit) + " bytes");
}

std::uint64_t declared_length(const HttpRequest& req) {
  std::uint64_t n = 0;
  std::string cl = req.header("Content-Length");
  std::from_chars(cl.data(), cl.data() + cl.size(), n);
  return n;
}

// The whole body if it has at most `limit` bytes, else a 413 (or 400 when it was cut short).
std::variant<std::string, HttpResponse> read_body(const HttpRequest& req, std::uint64_t limit,
                                                  std::string_view what) {
  if (declared_length(req) > limit) return too_large(what, limit);
  std::string out;
  out.reserve(declared_length(req));  // one allocation for a ~10 MB snapshot, not a doubling run
  bool over = false;
  bool ok = req.read_body([&](std::string_view data) {
    over = out.size() + data.size() > limit;
    if (!over) out.append(data);
    return !over;
  });
  if (over) return too_large(what, limit);
  if (!ok) return invalid("INVALID_ARGUMENT", std::string(what) + ": request body incomplete");
  return out;
}

// A JSON object body, or a 400 naming what is wrong.
std::variant<json, HttpResponse> read_json(const HttpRequest& req, std::uint64_t limit) {
  auto body = read_body(req, limit, "request body");
  if (auto* err = std::get_if<HttpResponse>(&body)) return std::move(*err);
  auto j = json::parse(std::get<std::string>(body), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return invalid("INVALID_ARGUMENT", "request body is not a JSON object");
  return j;
}

// A non-negative integer query parameter (absent: `fallback`).
std::variant<std::uint64_t, HttpResponse> query_number(const HttpRequest& req,
                                                       std::string_view name,
                                                       std::uint64_t fallback) {
  auto text = req.query_param(name);
  if (!text) return fallback;
  std::uint64_t v = 0;
  auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), v);
  if (text->empty() || ec != std::errc() || end != text->data() + text->size())
    return invalid("INVALID_ARGUMENT",
                   std::string(name) + " must be a non-negative integer, not \"" + *text + "\"");
  return v;
}

std::variant<Clock::time_point, HttpResponse> wait_deadline(const HttpRequest& req, int cap) {
  auto wait = query_number(req, "wait_seconds", 0);
  if (auto* err = std::get_if<HttpResponse>(&wait)) return std::move(*err);
  auto seconds = std::min<std::uint64_t>(std::get<std::uint64_t>(wait),
                                         static_cast<std::uint64_t>(std::max(cap, 0)));
  return Clock::now() + std::chrono::seconds(seconds);
}

// Every file content digest a snapshot names, sorted and unique.
std::vector<oci::Digest> content_digests(const snapshot::Snapshot& snap) {
  std::set<oci::Digest> out;
  auto add = [&](const std::vector<snapshot::FileEntry>& files) {
    for (const auto& f : files)
      if (f.digest) out.insert(*f.digest);
  };
  for (const auto& env : snap.environments) {
    for (const auto& p : env.packages) add(p.files);
    add(env.unowned);
  }
  for (const auto& src : snap.sources) add(src.files);
  return {out.begin(), out.end()};
}

// Server-side failures name local paths: the log gets them (the caller logs), the client a
// pointer to the log.
std::string client_message(const Error& e) {
  if (e.code() != ErrorCode::io && e.code() != ErrorCode::internal) return e.message();
  return "internal error (see the builder log)";
}

HttpResponse blobs_missing(EnvdApi::Impl& api, const HttpRequest& req) {
  auto body = read_json(req, api.options.json_bytes);
  if (auto* err = std::get_if<HttpResponse>(&body)) return std::move(*err);
  const json& j = std::get<json>(body);
  if (!j.contains("digests") || !j["digests"].is_array())
    return invalid("INVALID_ARGUMENT", "\"digests\" must be an array of digests");
  std::vector<std::string> missing;
  std::set<oci::Digest> seen;
  for (std::size_t i = 0; i < j["digests"].size(); ++i) {
    const json& v = j["digests"][i];
    auto d = oci::Digest::parse(v.is_string() ? v.get<std::string>() : v.dump());
    if (!d)
      return invalid("DIGEST_INVALID",
                     "digests[" + std::to_string(i) + "]: " + d.error().message());
    if (seen.insert(*d).second && !api.state.blobs->contains(*d)) missing.push_back(d->str());
  }
  return json_response(200, json{{"missing", missing}});
}

HttpResponse blobs_batch(EnvdApi::Impl& api, const HttpRequest& req) {
  const auto& limits = api.options.limits;
  if (declared_length(req) > limits.batch_bytes) {
    return json_response(413,
                         json{{"stored", json::array()},
                              {"failed",
                               {{"digest", nullptr},
                                {"error", "batch of " + std::to_string(declared_length(req)) +
                                              " bytes exceeds the limit of " +
                                              std::to_string(limits.batch_bytes) + " bytes"}}}});
  }
  BlobBatchReader batch(*api.state.blobs, limits.blob_bytes, limits.batch_bytes);
  bool complete = req.read_body([&](std::string_view data) { return batch.feed(data); });
  if (complete) {
    batch.finish();
  } else {
    batch.interrupted();
  }
  json stored = json::array();
  for (const auto& d : batch.stored()) stored.push_back(d.str());
  const auto& failure = batch.failure();
  if (!failure) return json_response(200, json{{"stored", stored}, {"failed", nullptr}});
  int status = failure->over_limit ? 413 : 400;
  if (failure->error.code() == ErrorCode::io || failure->error.code() == ErrorCode::internal)
    status = 500;
  if (status == 500)
    log::error("envd-api", "blob batch failed", {{"error", failure->error.message()}});
  json failed = {{"digest", failure->digest ? json(failure->digest->str()) : json(nullptr)},
                 {"error", client_message(failure->error)}};
  return json_response(status, json{{"stored", stored}, {"failed", failed}});
}

// 409 listing the file blobs `snap` names that the store lacks, or nullopt when it has them all.
std::optional<HttpResponse> missing_blobs_answer(EnvdApi::Impl& api,
                                                 const snapshot::Snapshot& snap) {
  json missing = json::array();
  for (const auto& d : content_digests(snap))
    if (!api.state.blobs->contains(d)) missing.push_back(d.str());
  if (missing.empty()) return std::nullopt;
  auto r = oci_error(409, "BLOB_UNKNOWN",
                     std::to_string(missing.size()) +
                         " file blobs the snapshot names are not on the builder: upload them "
                         "first (POST /envd/v1/NAMESPACE/NAME/blobs/batch)");
  auto j = json::parse(r.body);
  j["missing"] = std::move(missing);
  return json_response(409, j);
}

// A snapshot that arrived and checked out: its document layer is started (the build that
// follows takes it), then it is stored. `document` is its text, or empty to write it here.
HttpResponse stored(EnvdApi::Impl& api, const HttpRequest& req, const oci::Digest& digest,
                    std::string_view document, snapshot::Snapshot snap) {
  auto shared = std::make_shared<const snapshot::Snapshot>(std::move(snap));
  api.state.builder->prepare_document_layer(shared, digest, api.options.compression);
  std::string written_here;
  if (document.empty()) {
    auto text = snapshot::to_json(*shared);
    if (!text) return invalid("SNAPSHOT_INVALID", "snapshot: " + text.error().message());
    written_here = std::move(*text);
    document = written_here;
  }
  auto written = api.snapshots.put(digest, document, std::move(shared));
  if (!written)
    return error_response(written.error().with_context("store snapshot"), ErrorSubject::other);
  log::info("envd-api", "snapshot stored",
            {{"repository", req.matches[1]}, {"snapshot", digest.str()}});
  return json_response(200, json{{"snapshot_digest", digest.str()}});
}

// A patch against a snapshot stored here (snapshot_patch.hpp); the result must have the digest
// the patch declares. Only the blobs of what it adds or changes are checked when this process
// checked the base's, else all of the result's.
HttpResponse put_snapshot_patch(EnvdApi::Impl& api, const HttpRequest& req,
                                const std::string& text) {
  auto patch = snapshot::parse_patch(text);
  if (!patch) return invalid("SNAPSHOT_INVALID", "snapshot patch: " + patch.error().message());
  auto base = api.snapshots.get(patch->base);
  if (!base && base.error().code() == ErrorCode::not_found)
    return oci_error(404, "SNAPSHOT_UNKNOWN",
                     "the patch's base snapshot " + patch->base.str() +
                         " is not on this builder: submit the whole snapshot");
  if (!base) return error_response(base.error(), ErrorSubject::other);
  if (auto missing = missing_blobs_answer(api, patch->fragment)) return std::move(*missing);
  auto snap = snapshot::apply_patch(*base->snapshot, *patch);
  if (!snap) return invalid("SNAPSHOT_INVALID", "snapshot patch: " + snap.error().message());
  if (!base->blobs_checked)
    if (auto missing = missing_blobs_answer(api, *snap)) return std::move(*missing);
  return stored(api, req, patch->digest, {}, std::move(*snap));
}

HttpResponse put_snapshot(EnvdApi::Impl& api, const HttpRequest& req) {
  auto body = read_body(req, api.options.limits.snapshot_bytes, "snapshot");
  if (auto* err = std::get_if<HttpResponse>(&body)) return std::move(*err);
  const std::string& document = std::get<std::string>(body);
  if (req.header("Content-Type").starts_with(snapshot::k_patch_media_type))
    return put_snapshot_patch(api, req, document);
  auto snap = snapshot::parse(document);
  if (!snap) return invalid("SNAPSHOT_INVALID", "snapshot: " + snap.error().message());
  auto digest = snapshot::digest_of(*snap);
  if (!digest) return invalid("SNAPSHOT_INVALID", "snapshot: " + digest.error().message());
  if (auto missing = missing_blobs_answer(api, *snap)) return std::move(*missing);
  return stored(api, req, *digest, document, std::move(*snap));
}

HttpResponse start_build(EnvdApi::Impl& api, const HttpRequest& req) {
  const std::string& repo = req.matches[1];
  auto body = read_json(req, api.options.json_bytes);
  if (auto* err = std::get_if<HttpResponse>(&body)) return std::move(*err);
  const json& j = std::get<json>(body);
  for (const auto& [key, value] : j.items())
    if (key != "snapshot_digest" && key != "tag" && key != "compression")
      return invalid("INVALID_ARGUMENT", "unknown field \"" + key + "\"");
  if (!j.contains("snapshot_digest") || !j["snapshot_digest"].is_string())
    return invalid("DIGEST_INVALID", "snapshot_digest: required, a digest");
  auto digest = oci::Digest::parse(j["snapshot_digest"].get<std::string>());
  if (!digest) return invalid("DIGEST_INVALID", "snapshot_digest: " + digest.error().message());
  if (!j.contains("tag") || !j["tag"].is_string() || !is_valid_tag(j["tag"].get<std::string>()))
    return invalid("TAG_INVALID", "tag: required, matching [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}");
  BuildRequest request{repo, j["tag"].get<std::string>(), *digest, api.options.compression};
  if (j.contains("compression")) {
    const json& c = j["compression"];
    if (c == "zstd") {
      request.compression = Compression::zstd;
    } else if (c == "gzip") {
      request.compression = Compression::gzip;
    } else {
      return invalid("INVALID_ARGUMENT", "compression: \"zstd\" or \"gzip\", not " + c.dump());
    }
  }
  auto id = api.queue.submit(
      request, [&api](const oci::Digest& d) -> Result<std::shared_ptr<const snapshot::Snapshot>> {
        ENVD_TRY(auto found, api.snapshots.get(d));
        return found.snapshot;
      });
  if (!id && id.error().code() == ErrorCode::not_found)
    return oci_error(404, "SNAPSHOT_UNKNOWN", id.error().message());
  if (!id) return error_response(id.error(), ErrorSubject::other);
  const std::string url = "/envd/v1/" + repo + "/builds/" + *id;
  auto r = json_response(202, json{{"build_id", *id}, {"status_url", url}});
  r.set_header("Location", url);
  return r;
}

json result_json(const BuildResult& r) {
  return {{"manifest_digest", r.manifest_digest.str()},
          {"snapshot_digest", r.snapshot_digest.str()},
          {"tags", r.tags},
          {"layers", r.layers},
          {"layers_reused", r.layers_reused},
          {"bytes_written", r.bytes_written},
          {"seconds", r.seconds}};
}

HttpResponse build_status(EnvdApi::Impl& api, const HttpRequest& req) {
  auto since = query_number(req, "since", 0);
  if (auto* err = std::get_if<HttpResponse>(&since)) return std::move(*err);
  auto deadline = wait_deadline(req, api.options.max_wait_seconds);
  if (auto* err = std::get_if<HttpResponse>(&deadline)) return std::move(*err);
  auto s = api.queue.status(req.matches[2], req.matches[1], std::get<std::uint64_t>(since),
                            std::get<Clock::time_point>(deadline));
  if (!s)
    return oci_error(404, "BUILD_UNKNOWN",
                     "no build " + req.matches[2] + " in " + req.matches[1] +
                         " (unknown, or finished long ago)");
  return json_response(200,
                       json{{"build_id", s->id},
                            {"repository", s->request.repository},
                            {"tag", s->request.tag},
                            {"snapshot_digest", s->request.snapshot_digest.str()},
                            {"state", to_string(s->state)},
                            {"version", s->version},
                            {"layers_total", s->layers_total},
                            {"layers_done", s->layers_done},
                            {"layers_reused", s->layers_reused},
                            {"bytes_written", s->bytes_written},
                            {"result", s->result ? result_json(*s->result) : json(nullptr)},
                            {"error", s->error ? json(client_message(*s->error)) : json(nullptr)}});
}

// Long poll: answers as soon as the tag resolves to something other than `digest` (absent: the
// caller knows of no manifest), or at the deadline with the current digest.
HttpResponse watch_tag(EnvdApi::Impl& api, const HttpRequest& req) {
  const std::string& repo = req.matches[1];
  const std::string& tag = req.matches[2];
  if (!is_valid_tag(tag))
    return invalid("TAG_INVALID",
                   "invalid tag \"" + tag + "\": must match [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}");
  std::optional<oci::Digest> known;
  if (auto text = req.query_param("digest"); text && !text->empty()) {
    auto d = oci::Digest::parse(*text);
    if (!d) return invalid("DIGEST_INVALID", "digest: " + d.error().message());
    known = *d;
  }
  auto deadline = wait_deadline(req, api.options.max_wait_seconds);
  if (auto* err = std::get_if<HttpResponse>(&deadline)) return std::move(*err);
  for (;;) {
    // Read the generation before resolving: a move after the resolve then ends the wait below.
    std::uint64_t generation = api.queue.tag_generation();
    auto current = api.state.index->resolve(repo, tag);
    if (!current) return error_response(current.error(), ErrorSubject::manifest);
    std::optional<oci::Digest> digest;
    if (*current) digest = (*current)->digest;
    if (digest != known || Clock::now() >= std::get<Clock::time_point>(deadline))
      return json_response(200, json{{"digest", digest ? json(digest->str()) : json(nullptr)}});
    // After shutdown the wait returns at once: answer now rather than spin to the deadline.
    if (!api.queue.wait_tags(generation, std::get<Clock::time_point>(deadline)))
      deadline = Clock::now();
  }
}

}  // namespace

std::shared_ptr<EnvdApi> add_envd_api(RegistryServer& server, BuilderState& state,
                                      const EnvdApiOptions& options) {
  auto impl = std::make_shared<EnvdApi::Impl>(state, options);
  auto route = [&server, impl](const char* method, const std::string& regex, auto handler,
                               RouteAccess access) {
    server.add_route(
        method, regex, [impl, handler](const HttpRequest& req) { return handler(*impl, req); },
        access);
  };
  // The repository is the first group (RouteAccess checks it); "(.+)" so that a bad name gets
  // NAME_INVALID from the auth gate rather than a 404.
  const std::string base = "/envd/v1/(.+)";
  route("POST", base + "/blobs/missing", blobs_missing, RouteAccess::push);
  route("POST", base + "/blobs/batch", blobs_batch, RouteAccess::push);
  route("POST", base + "/snapshots", put_snapshot, RouteAccess::push);
  route("POST", base + "/builds", start_build, RouteAccess::push);
  route("GET", base + "/builds/([^/]+)", build_status, RouteAccess::pull);
  route("GET", base + "/tags/([^/]+)/watch", watch_tag, RouteAccess::pull);
  return std::make_shared<EnvdApi>(impl);
}

}  // namespace envd::builder
