// Internal to the registry server (not a public header): what the Distribution API route files
// share: the state behind the routes, and the functions that register each group of routes.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "builder/registry_server.hpp"

namespace envd::builder::registry_detail {

// One mutex per upload session, so that two requests on one session run one after the other.
class UploadLocks {
 public:
  std::shared_ptr<std::mutex> get(const std::string& id) {
    std::lock_guard lock(m_mutex);
    auto& slot = m_locks[id];
    if (!slot) slot = std::make_shared<std::mutex>();
    return slot;
  }
  void forget(const std::string& id) {
    std::lock_guard lock(m_mutex);
    m_locks.erase(id);
  }

 private:
  std::mutex m_mutex;
  std::map<std::string, std::shared_ptr<std::mutex>> m_locks;
};

// Owned by the server; outlives every handler.
struct RegistryContext {
  store::BlobStore& blobs;
  RegistryIndex& index;
  Limits limits;
  std::filesystem::path upload_dir;
  UploadLocks upload_locks;
  std::function<void(const std::string&)> on_tag_changed;
};

// GET /v2/, manifests (GET, HEAD, PUT), tags list.
void add_manifest_routes(RegistryServer& server, RegistryContext& ctx);
// Blob GET/HEAD.
void add_blob_routes(RegistryServer& server, RegistryContext& ctx);
// Uploads (POST, PATCH, PUT, GET, DELETE), monolithic POST, cross-repository mount.
void add_upload_routes(RegistryServer& server, RegistryContext& ctx);
// Removes sessions older than `ttl_seconds`, and upload files with no session (crash leftovers).
Result<void> drop_stale_uploads(RegistryContext& ctx, std::int64_t ttl_seconds);

// Pattern of a repository name in route regexes: anything, validated by the auth gate (so that a
// bad name gets NAME_INVALID rather than a 404 for an unmatched route).
inline constexpr const char* k_name_pattern = "(.+)";
// Pattern of a digest or tag in route regexes: one path component, or anything after an
// "algorithm:" so that a digest with '/' in it ("sha256:../../x") gets DIGEST_INVALID.
inline constexpr const char* k_reference_pattern = "([^/]+|[^/]+:.*)";

}  // namespace envd::builder::registry_detail
