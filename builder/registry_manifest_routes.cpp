// Distribution API routes for the API root, manifests (pull by tag or digest, push with every
// referenced blob checked) and the tag list with n/last pagination.
// Spec: https://github.com/opencontainers/distribution-spec/blob/v1.1.0/spec.md
#include <algorithm>
#include <charconv>
#include <nlohmann/json.hpp>
#include <variant>

#include "builder/registry_routes.hpp"
#include "envd/oci/image.hpp"

namespace envd::builder::registry_detail {
namespace {

struct Reference {
  std::optional<oci::Digest> digest;  // set for a digest reference
  std::string tag;                    // set for a tag reference
};

// A manifest reference is a digest when it contains ':', else a tag.
// https://github.com/opencontainers/distribution-spec/blob/v1.1.0/spec.md#pulling-manifests
std::variant<Reference, HttpResponse> parse_reference(const std::string& text) {
  if (text.find(':') != std::string::npos) {
    auto d = oci::Digest::parse(text);
    if (!d) return oci_error(400, "DIGEST_INVALID", d.error().message());
    return Reference{*d, {}};
  }
  if (!is_valid_tag(text))
    return oci_error(400, "MANIFEST_INVALID",
                     "invalid tag \"" + text + "\": must match [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}");
  return Reference{std::nullopt, text};
}

HttpResponse get_manifest(RegistryContext& ctx, const HttpRequest& req) {
  const std::string& repo = req.matches[1];
  auto ref = parse_reference(req.matches[2]);
  if (auto* err = std::get_if<HttpResponse>(&ref)) return std::move(*err);
  auto found = ctx.index.resolve(repo, req.matches[2]);
  if (!found) return error_response(found.error(), ErrorSubject::manifest);
  if (!*found)
    return oci_error(404, "MANIFEST_UNKNOWN",
                     "manifest " + req.matches[2] + " not found in " + repo);
  const ManifestRef& m = **found;
  auto bytes = ctx.blobs.read_all(m.digest);
  if (!bytes)
    return error_response(bytes.error().with_context("read manifest " + m.digest.str()),
                          ErrorSubject::manifest);
  HttpResponse r;
  r.content_type = m.media_type;
  r.body = std::move(*bytes);
  r.set_header("Docker-Content-Digest", m.digest.str());
  r.set_header("ETag", "\"" + m.digest.str() + "\"");
  return r;
}

// Every descriptor a manifest references must be present in the repository, with the size the
// descriptor states; one MANIFEST_BLOB_UNKNOWN error per missing one, as the spec asks.
// https://github.com/opencontainers/distribution-spec/blob/v1.1.0/spec.md#pushing-manifests
std::optional<HttpResponse> check_references(RegistryContext& ctx, const std::string& repo,
                                             const oci::ManifestInfo& info) {
  std::vector<const oci::Descriptor*> refs;
  if (info.config) refs.push_back(&*info.config);
  for (const auto& d : info.layers) refs.push_back(&d);
  for (const auto& d : info.manifests) refs.push_back(&d);
  nlohmann::json errors = nlohmann::json::array();
  for (const auto* d : refs) {
    auto linked = info.is_index ? ctx.index.has_manifest(repo, d->digest)
                                : ctx.index.has_blob(repo, d->digest);
    if (!linked) return error_response(linked.error(), ErrorSubject::manifest);
    bool present = *linked && ctx.blobs.contains(d->digest);
    if (!present) {
      errors.push_back({{"code", "MANIFEST_BLOB_UNKNOWN"},
                        {"message", "manifest references " + d->digest.str() +
                                        ", which is not in repository " + repo},
                        {"detail", {{"digest", d->digest.str()}}}});
      continue;
    }
    auto size = ctx.blobs.size(d->digest);
    if (!size) return error_response(size.error(), ErrorSubject::manifest);
    if (*size != d->size)
      return oci_error(400, "MANIFEST_INVALID",
                       "descriptor of " + d->digest.str() + " says " + std::to_string(d->size) +
                           " bytes, the blob has " + std::to_string(*size));
  }
  if (errors.empty()) return std::nullopt;
  HttpResponse r;
  r.status = 400;
  r.content_type = "application/json";
  r.body = nlohmann::json{{"errors", errors}}.dump();
  return r;
}

HttpResponse put_manifest(RegistryContext& ctx, const HttpRequest& req) {
  const std::string& repo = req.matches[1];
  auto parsed_ref = parse_reference(req.matches[2]);
  if (auto* err = std::get_if<HttpResponse>(&parsed_ref)) return std::move(*err);
  const Reference& ref = std::get<Reference>(parsed_ref);

  // Registries may refuse manifests over a size limit with 413.
  // https://github.com/opencontainers/distribution-spec/blob/v1.1.0/spec.md#pushing-manifests
  const std::uint64_t limit = ctx.limits.manifest_bytes;
  auto too_large = [&] {
    return oci_error(413, "MANIFEST_INVALID",
                     "manifest larger than the limit of " + std::to_string(limit) + " bytes");
  };
  std::uint64_t declared = 0;
  std::string cl = req.header("Content-Length");
  std::from_chars(cl.data(), cl.data() + cl.size(), declared);
  if (declared > limit) return too_large();
  std::string bytes;
  bool over = false;
  bool ok = req.read_body([&](std::string_view data) {
    if (bytes.size() + data.size() > limit) {
      over = true;
      return false;
    }
    bytes.append(data);
    return true;
  });
  if (over) return too_large();
  if (!ok) return oci_error(400, "MANIFEST_INVALID", "manifest body incomplete");

  auto info = oci::parse_manifest(bytes, req.header("Content-Type"));
  if (!info) return oci_error(400, "MANIFEST_INVALID", info.error().message());
  const oci::Digest digest = oci::sha256_of(bytes);
  if (ref.digest && *ref.digest != digest)
    return oci_error(400, "DIGEST_INVALID",
                     "manifest pushed as " + ref.digest->str() + " hashes to " + digest.str());
  if (auto missing = check_references(ctx, repo, *info)) return std::move(*missing);

  if (auto r = ctx.blobs.put(digest, bytes); !r)
    return error_response(r.error().with_context("store manifest"), ErrorSubject::manifest);
  std::optional<std::string> tag;
  if (!ref.digest) tag = ref.tag;
  if (auto r = ctx.index.put_manifest(repo, digest, info->media_type, tag); !r)
    return error_response(r.error(), ErrorSubject::manifest);
  if (tag && ctx.on_tag_changed) ctx.on_tag_changed(repo);

  HttpResponse r;
  r.status = 201;
  r.set_header("Location", "/v2/" + repo + "/manifests/" + digest.str());
  r.set_header("Docker-Content-Digest", digest.str());
  return r;
}

// https://github.com/opencontainers/distribution-spec/blob/v1.1.0/spec.md#listing-tags
HttpResponse list_tags(RegistryContext& ctx, const HttpRequest& req) {
  const std::string& repo = req.matches[1];
  auto exists = ctx.index.repository_exists(repo);
  if (!exists) return error_response(exists.error(), ErrorSubject::repository);
  if (!*exists) return oci_error(404, "NAME_UNKNOWN", "repository " + repo + " not found");
  auto all = ctx.index.tags(repo);
  if (!all) return error_response(all.error(), ErrorSubject::repository);

  std::optional<std::size_t> n;
  if (auto n_text = req.query_param("n")) {
    std::size_t v = 0;
    auto [end, ec] = std::from_chars(n_text->data(), n_text->data() + n_text->size(), v);
    if (ec != std::errc() || end != n_text->data() + n_text->size())
      return oci_error(400, "PAGINATION_NUMBER_INVALID", "n must be a non-negative integer");
    n = v;
  }
  auto begin = all->begin();
  if (auto last = req.query_param("last"))
    begin = std::upper_bound(all->begin(), all->end(), *last);
  std::size_t available = static_cast<std::size_t>(all->end() - begin);
  std::size_t take = n ? std::min(*n, available) : available;
  std::vector<std::string> page(begin, begin + static_cast<std::ptrdiff_t>(take));

  HttpResponse r;
  r.content_type = "application/json";
  r.body = nlohmann::json{{"name", repo}, {"tags", page}}.dump();
  if (n && take < available && !page.empty())
    r.set_header("Link", "</v2/" + repo + "/tags/list?n=" + std::to_string(*n) +
                             "&last=" + page.back() + ">; rel=\"next\"");
  return r;
}

}  // namespace

void add_manifest_routes(RegistryServer& server, RegistryContext& ctx) {
  // https://github.com/opencontainers/distribution-spec/blob/v1.1.0/spec.md#determining-support
  server.add_route(
      "GET", "/v2/?",
      [](const HttpRequest&) {
        HttpResponse r;
        r.content_type = "application/json";
        r.body = "{}";
        return r;
      },
      RouteAccess::authenticated);
  const std::string name = k_name_pattern;
  server.add_route(
      "GET", "/v2/" + name + "/tags/list",
      [&ctx](const HttpRequest& req) { return list_tags(ctx, req); }, RouteAccess::pull);
  server.add_route(
      "GET", "/v2/" + name + "/manifests/" + k_reference_pattern,
      [&ctx](const HttpRequest& req) { return get_manifest(ctx, req); }, RouteAccess::pull);
  server.add_route(
      "PUT", "/v2/" + name + "/manifests/" + k_reference_pattern,
      [&ctx](const HttpRequest& req) { return put_manifest(ctx, req); }, RouteAccess::push);
}

}  // namespace envd::builder::registry_detail
