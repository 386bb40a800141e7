// BlobStore conveniences (put, read_all) written once over the virtual primitives, so every store
// gets them with the same verification and error context; and the default group commit.
#include "envd/store/blob_store.hpp"

namespace envd::store {
namespace {

// BlobStore::begin_group()'s default: every blob committed by itself as it is added.
class ImmediateCommitGroup : public BlobCommitGroup {
 public:
  Result<void> add(std::unique_ptr<BlobWriter> writer, const oci::Digest& expected,
                   std::optional<std::uint64_t> expected_size) override {
    return writer->commit(expected, expected_size);
  }
  Result<void> commit() override { return {}; }
};

}  // namespace

std::unique_ptr<BlobCommitGroup> BlobStore::begin_group() {
  return std::make_unique<ImmediateCommitGroup>();
}

Result<void> BlobStore::put(const oci::Digest& digest, std::string_view data) {
  auto context = "put " + digest.str();
  auto writer = begin_write();
  if (!writer) return writer.error().with_context(context);
  if (auto r = (*writer)->write(data); !r) return r.error().with_context(context);
  if (auto r = (*writer)->commit(digest, data.size()); !r) return r.error().with_context(context);
  return {};
}

Result<oci::Digest> BlobStore::put(std::string_view data) {
  // Content already present is not written again (a rebuild would otherwise rewrite and fsync
  // the same snapshot document, config and manifest). New content is hashed here and again in
  // the writer, which keeps the writer the single place where verification happens.
  oci::Digest digest = oci::sha256_of(data);
  if (contains(digest)) return digest;
  ENVD_TRY_VOID(put(digest, data));
  return digest;
}

Result<std::string> BlobStore::read_all(const oci::Digest& digest) const {
  auto context = "read " + digest.str();
  auto reader = open(digest);
  if (!reader) return reader.error().with_context(context);
  std::string out;
  out.resize(static_cast<std::size_t>((*reader)->size()));
  std::size_t filled = 0;
  while (filled < out.size()) {
    auto n = (*reader)->read(out.data() + filled, out.size() - filled);
    if (!n) return n.error().with_context(context);
    if (*n == 0) break;
    filled += *n;
  }
  out.resize(filled);
  // The reader's end is its 0-byte read, not size(): keep reading so a reader that reports a
  // wrong size still yields exactly its bytes.
  char tail[4096];
  for (;;) {
    auto n = (*reader)->read(tail, sizeof tail);
    if (!n) return n.error().with_context(context);
    if (*n == 0) break;
    out.append(tail, *n);
  }
  return out;
}

}  // namespace envd::store
