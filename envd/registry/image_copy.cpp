// copy_image and its sources: walk the manifest (and an index's manifests), push blobs in
// parallel, then manifests bottom-up so that a tag never names something missing.
#include "envd/registry/image_copy.hpp"

#include <atomic>
#include <mutex>
#include <set>
#include <thread>

namespace envd::registry {

StoreImageSource::StoreImageSource(const store::BlobStore& blobs, std::string name,
                                   Resolver resolve)
    : m_blobs(blobs), m_name(std::move(name)), m_resolve(std::move(resolve)) {}

Result<Manifest> StoreImageSource::manifest(const std::string& reference) {
  auto location = m_resolve(reference);
  if (!location) return location.error().with_context(describe() + ":" + reference);
  auto bytes = m_blobs.read_all(location->digest);
  if (!bytes) return bytes.error().with_context(describe() + ":" + reference);
  Manifest m{std::move(*bytes), location->media_type, location->digest};
  if (oci::sha256_of(m.bytes) != m.digest)
    return unexpected(
        ErrorCode::digest_mismatch,
        describe() + ":" + reference + ": stored manifest does not hash to " + m.digest.str());
  if (m.media_type.empty()) {
    auto info = oci::parse_manifest(m.bytes);
    if (info) m.media_type = info->media_type;
  }
  return m;
}

Result<std::unique_ptr<store::BlobReader>> StoreImageSource::open_blob(
    const oci::Descriptor& blob) {
  return m_blobs.open(blob.digest);
}

RegistryImageSource::RegistryImageSource(RegistryClient& client, std::string repository,
                                         store::BlobStore& staging)
    : m_client(client), m_repository(std::move(repository)), m_staging(staging) {}

Result<Manifest> RegistryImageSource::manifest(const std::string& reference) {
  return m_client.get_manifest(m_repository, reference);
}

Result<std::unique_ptr<store::BlobReader>> RegistryImageSource::open_blob(
    const oci::Descriptor& blob) {
  ENVD_TRY_VOID(m_client.fetch_blob_to_store(m_repository, blob, m_staging));
  return m_staging.open(blob.digest);
}

std::optional<std::string> RegistryImageSource::mount_source_for(const RegistryClient& dest) const {
  if (dest.host() != m_client.host()) return std::nullopt;
  return m_repository;
}

std::string RegistryImageSource::describe() const {
  return m_client.host() + "/" + m_repository;
}

namespace {

// Pushes every blob, `parallel` at a time; the first failure stops new pushes and is returned.
Result<void> push_blobs(ImageSource& source, RegistryClient& dest, const std::string& repository,
                        const std::vector<oci::Descriptor>& blobs, CopyResult& result) {
  std::optional<std::string> mount_from = source.mount_source_for(dest);
  std::atomic<std::size_t> next{0};
  std::mutex mutex;
  std::optional<Error> failure;
  auto worker = [&] {
    while (true) {
      {
        std::lock_guard lock(mutex);
        if (failure) return;
      }
      std::size_t i = next++;
      if (i >= blobs.size()) return;
      const oci::Descriptor& blob = blobs[i];
      BlobOpener open = [&] { return source.open_blob(blob); };
      auto pushed = dest.push_blob(repository, blob, open, mount_from);
      std::lock_guard lock(mutex);
      if (!pushed) {
        if (!failure) failure = pushed.error();
        return;
      }
      switch (pushed->outcome) {
        case PushOutcome::existed:
          ++result.blobs_skipped;
          break;
        case PushOutcome::mounted:
          ++result.blobs_mounted;
          break;
        case PushOutcome::uploaded:
          ++result.blobs_copied;
          result.bytes_copied += pushed->bytes_uploaded;
          break;
      }
    }
  };
  std::size_t n = std::min<std::size_t>(dest.options().parallel_transfers, blobs.size());
  std::vector<std::thread> threads;
  for (std::size_t i = 1; i < n; ++i) threads.emplace_back(worker);
  worker();
  for (auto& t : threads) t.join();
  if (failure) return *failure;
  return {};
}

}  // namespace

Result<CopyResult> copy_image(ImageSource& source, const std::string& source_reference,
                              RegistryClient& dest, const std::string& dest_repository,
                              const std::string& dest_tag) {
  const std::string what = "copy " + source.describe() + ":" + source_reference + " to " +
                           dest.host() + "/" + dest_repository;
  auto fail = [&](const Error& e) { return e.with_context(what); };
  auto top = source.manifest(source_reference);
  if (!top) return fail(top.error());
  auto top_info = oci::parse_manifest(top->bytes, top->media_type);
  if (!top_info) return fail(top_info.error());

  // The image manifests to copy: the top one, or an index's children (fetched by digest).
  std::vector<Manifest> children;
  std::vector<oci::ManifestInfo> images;
  if (top_info->is_index) {
    for (const auto& d : top_info->manifests) {
      auto child = source.manifest(d.digest.str());
      if (!child) return fail(child.error());
      auto info = oci::parse_manifest(child->bytes, child->media_type);
      if (!info) return fail(info.error().with_context("manifest " + d.digest.str()));
      if (info->is_index)
        return fail(Error(ErrorCode::unimplemented, "nested index " + d.digest.str()));
      images.push_back(std::move(*info));
      children.push_back(std::move(*child));
    }
  } else {
    images.push_back(*top_info);
  }

  std::vector<oci::Descriptor> blobs;
  std::set<oci::Digest> seen;
  for (const auto& image : images) {
    if (image.config && seen.insert(image.config->digest).second) blobs.push_back(*image.config);
    for (const auto& layer : image.layers)
      if (seen.insert(layer.digest).second) blobs.push_back(layer);
  }
  CopyResult result{top->digest, top->media_type};
  if (auto pushed = push_blobs(source, dest, dest_repository, blobs, result); !pushed)
    return fail(pushed.error());
  for (const auto& child : children) {
    auto put =
        dest.put_manifest(dest_repository, child.digest.str(), child.bytes, child.media_type);
    if (!put) return fail(put.error());
    ++result.manifests;
  }
  const std::string& reference = dest_tag.empty() ? top->digest.str() : dest_tag;
  auto put = dest.put_manifest(dest_repository, reference, top->bytes, top->media_type);
  if (!put) return fail(put.error());
  ++result.manifests;
  return result;
}

}  // namespace envd::registry
