#include "envd/node/image_origin.hpp"

#include <algorithm>
#include <optional>
#include <vector>

#include "envd/util/json_detail.hpp"

namespace envd::node::detail {
namespace {

constexpr std::size_t k_copy_buffer = 256 * 1024;

class RegistryOrigin final : public Origin {
 public:
  RegistryOrigin(registry::RegistryClient& client, std::string repository)
      : m_client(client), m_repository(std::move(repository)) {}
  Result<registry::Manifest> manifest(const std::string& reference) override {
    return m_client.get_manifest(m_repository, reference);
  }
  Result<registry::FetchResult> fetch(const oci::Descriptor& blob,
                                      store::BlobWriter& writer) override {
    return m_client.fetch_blob_to_writer(m_repository, blob.digest, blob.size, writer);
  }

 private:
  registry::RegistryClient& m_client;
  std::string m_repository;
};

class LocalOrigin final : public Origin {
 public:
  explicit LocalOrigin(std::unique_ptr<registry::ImageSource> source)
      : m_source(std::move(source)) {}
  Result<registry::Manifest> manifest(const std::string& reference) override {
    return m_source->manifest(reference);
  }
  Result<registry::FetchResult> fetch(const oci::Descriptor& blob,
                                      store::BlobWriter& writer) override {
    const std::string what = "read blob " + blob.digest.str() + " from " + m_source->describe();
    auto reader = m_source->open_blob(blob);
    if (!reader) return reader.error().with_context(what);
    registry::FetchResult result;
    std::uint64_t skip = writer.written();  // held from an earlier, interrupted copy
    std::string buffer(k_copy_buffer, '\0');
    for (;;) {
      auto n = (*reader)->read(buffer.data(), buffer.size());
      if (!n) return n.error().with_context(what);
      if (*n == 0) break;
      std::string_view data(buffer.data(), *n);
      std::size_t drop = static_cast<std::size_t>(std::min<std::uint64_t>(skip, data.size()));
      data.remove_prefix(drop);
      skip -= drop;
      if (data.empty()) continue;
      if (writer.written() + data.size() > blob.size)
        return Error(ErrorCode::digest_mismatch,
                     what + ": longer than the " + std::to_string(blob.size) + " bytes expected");
      if (auto w = writer.write(data); !w) return w.error().with_context(what);
      result.bytes_fetched += data.size();
    }
    if (auto c = writer.commit(blob.digest, blob.size); !c) return c.error().with_context(what);
    return result;
  }

 private:
  std::unique_ptr<registry::ImageSource> m_source;
};

// The image manifest for `os`/`arch` in an index or manifest list.
// https://github.com/opencontainers/image-spec/blob/v1.1.0/image-index.md
Result<oci::Digest> choose_platform(const registry::Manifest& index, const std::string& os,
                                    const std::string& arch) {
  const std::string what = "index " + index.digest.str();
  ENVD_TRY(auto doc, json::parse(index.bytes, what));
  std::vector<std::string> seen;
  std::optional<oci::Digest> only_unlabelled;
  std::size_t entries = 0;
  try {
    for (const auto& m : doc.at("manifests")) {
      ++entries;
      ENVD_TRY(auto digest, oci::Digest::parse(m.at("digest").get<std::string>()));
      if (!m.contains("platform")) {
        only_unlabelled = digest;
        continue;
      }
      const auto& p = m.at("platform");
      std::string mos = p.value("os", ""), march = p.value("architecture", "");
      if (mos == os && march == arch) return digest;
      seen.push_back(mos + "/" + march);
    }
  } catch (const nlohmann::json::exception& e) {
    return Error(ErrorCode::invalid_argument, what + ": " + e.what());
  }
  if (entries == 1 && only_unlabelled) return *only_unlabelled;
  std::string have;
  for (const auto& s : seen) have += (have.empty() ? "" : ", ") + s;
  return Error(ErrorCode::not_found, what + " has no manifest for " + os + "/" + arch +
                                         " (it has: " + (have.empty() ? "none" : have) + ")");
}

}  // namespace

std::unique_ptr<Origin> registry_origin(registry::RegistryClient& client, std::string repository) {
  return std::make_unique<RegistryOrigin>(client, std::move(repository));
}

std::unique_ptr<Origin> local_origin(std::unique_ptr<registry::ImageSource> source) {
  return std::make_unique<LocalOrigin>(std::move(source));
}

Result<Resolved> resolve_manifest(Origin& origin, const registry::Reference& ref,
                                  const std::string& os, const std::string& arch,
                                  bool fetch_child) {
  ENVD_TRY(auto top, origin.manifest(ref.reference()));
  Resolved out{top, {}, top.bytes.size()};
  ENVD_TRY(out.info, oci::parse_manifest(top.bytes, top.media_type));
  if (!out.info.is_index) return out;
  ENVD_TRY(auto child, choose_platform(top, os, arch));
  if (!fetch_child) {
    out.manifest.digest = child;
    return out;
  }
  ENVD_TRY(out.manifest, origin.manifest(child.str()));
  if (out.manifest.digest != child)
    return Error(ErrorCode::digest_mismatch,
                 "manifest " + child.str() + " hashes to " + out.manifest.digest.str());
  out.bytes += out.manifest.bytes.size();
  ENVD_TRY(out.info, oci::parse_manifest(out.manifest.bytes, out.manifest.media_type));
  if (out.info.is_index)
    return Error(ErrorCode::invalid_argument,
                 "index " + top.digest.str() + " names another index " + child.str());
  return out;
}

}  // namespace envd::node::detail
