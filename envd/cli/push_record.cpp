// The record of each push (see push_record.hpp).
#include "envd/cli/push_record.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "envd/registry/reference.hpp"
#include "envd/util/atomic_file.hpp"

namespace envd::cli {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct PushRecord {
  std::string builder;  // "" for the embedded builder
  std::string tag;
  std::string snapshot_digest;
  std::string manifest_digest;
};

// push.json, or nullopt when absent or unreadable (a record is a cache: losing it costs time).
std::optional<PushRecord> read_record(const fs::path& dir) {
  auto text = read_file(dir / "push.json");
  if (!text) return std::nullopt;
  auto j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return std::nullopt;
  PushRecord r{j.value("builder", ""), j.value("tag", ""), j.value("snapshot_digest", ""),
               j.value("manifest_digest", "")};
  if (!oci::Digest::parse(r.snapshot_digest)) return std::nullopt;
  return r;
}

fs::path snapshot_file(const fs::path& dir, std::string_view snapshot_digest, const char* ext) {
  return dir / (std::string(snapshot_digest.substr(7)) + ext);  // a validated digest's hex
}

// Writes the snapshot's document (serialised here when `document` is null) and, for a remote
// builder, its sorted file digests and its item index (made here when null) into the record
// directory,
// unless there already. Runs on a thread of its own while the image builds; the record points
// at them only after the build.
Result<void> write_snapshot_files(const fs::path& dir, const snapshot::Snapshot& snap,
                                  const oci::Digest& digest,
                                  std::shared_ptr<const std::string> document,
                                  std::shared_ptr<const snapshot::ItemIndex> index, bool remote) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Error::from_errno("create " + dir.string(), ec.value());
  fs::path doc_file = snapshot_file(dir, digest.view(), ".json");
  if (!fs::exists(doc_file, ec)) {
    if (!document) {
      ENVD_TRY(auto text, snapshot::to_json(snap));
      document = std::make_shared<const std::string>(std::move(text));
    }
    ENVD_TRY_VOID(write_file_atomic(doc_file, *document));
  }
  if (!remote) return {};
  fs::path items_file = snapshot_file(dir, digest.view(), ".items");
  if (!fs::exists(items_file, ec)) {
    if (!index) {
      ENVD_TRY(auto made, snapshot::ItemIndex::of(snap, digest));
      index = std::make_shared<const snapshot::ItemIndex>(std::move(made));
    }
    ENVD_TRY_VOID(write_file_atomic(items_file, index->to_text()));
  }
  fs::path blobs_file = snapshot_file(dir, digest.view(), ".blobs");
  if (fs::exists(blobs_file, ec)) return {};
  std::vector<std::string_view> digests;
  auto add = [&](const std::vector<snapshot::FileEntry>& files) {
    for (const auto& f : files)
      if (f.digest) digests.push_back(f.digest->view());
  };
  for (const auto& env : snap.environments) {
    for (const auto& p : env.packages) add(p.files);
    add(env.unowned);
  }
  for (const auto& src : snap.sources) add(src.files);
  std::sort(digests.begin(), digests.end());
  digests.erase(std::unique(digests.begin(), digests.end()), digests.end());
  std::string text;
  text.reserve(digests.size() * (oci::Digest::k_text_size + 1));
  for (auto d : digests) text.append(d).push_back('\n');
  return write_file_atomic(blobs_file, text);
}

}  // namespace

fs::path record_dir(const fs::path& envd_home, const std::string& repository) {
  std::string flat = repository;
  std::replace(flat.begin(), flat.end(), '/', '+');  // '+' is in no repository name
  return envd_home / "pushed" / flat;
}

// What the last push of `repository` to `builder` left there; empty for another builder.
std::unique_ptr<KnownBlobs> known_blobs(const fs::path& envd_home, const std::string& repository,
                                        const std::string& builder) {
  auto known = std::make_unique<KnownBlobs>();
  fs::path dir = record_dir(envd_home, repository);
  auto record = read_record(dir);
  if (!record || record->builder != builder) return known;
  auto text = read_file(snapshot_file(dir, record->snapshot_digest, ".blobs"));
  if (!text) return known;
  known->text = std::move(*text);
  std::string_view rest = known->text;
  while (!rest.empty()) {
    auto end = std::min(rest.find('\n'), rest.size());
    if (end > 0) known->digests.push_back(rest.substr(0, end));
    rest.remove_prefix(std::min(end + 1, rest.size()));
  }
  if (!std::is_sorted(known->digests.begin(), known->digests.end()))
    std::sort(known->digests.begin(), known->digests.end());
  return known;
}

// The item index of the last push of a repository to `builder`: the base of the next patch.
std::optional<snapshot::ItemIndex> pushed_item_index(const fs::path& envd_home,
                                                     const std::string& repository,
                                                     const std::string& builder) {
  fs::path dir = record_dir(envd_home, repository);
  auto record = read_record(dir);
  if (!record || record->builder != builder) return std::nullopt;
  auto text = read_file(snapshot_file(dir, record->snapshot_digest, ".items"));
  if (!text) return std::nullopt;
  auto index = snapshot::ItemIndex::parse(*text);
  if (!index || index->snapshot_digest.str() != record->snapshot_digest) return std::nullopt;
  return std::move(*index);
}

// Makes `out` the record's last push (push.json), then removes other snapshots' files.
Result<void> commit_record(const fs::path& dir, const PushOutcome& out) {
  PushRecord now{out.builder, out.tag, out.snapshot_digest.str(), out.manifest_digest.str()};
  auto before = read_record(dir);
  if (before && before->builder == now.builder && before->tag == now.tag &&
      before->snapshot_digest == now.snapshot_digest &&
      before->manifest_digest == now.manifest_digest)
    return {};
  json meta = {{"repository", out.repository},
               {"tag", now.tag},
               {"builder", now.builder},
               {"image", out.image},
               {"snapshot_digest", now.snapshot_digest},
               {"manifest_digest", now.manifest_digest}};
  ENVD_TRY_VOID(write_file_atomic(dir / "push.json", meta.dump(2) + "\n"));
  const std::string keep(out.snapshot_digest.hex());
  std::error_code ec;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator();
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if ((name.ends_with(".json") || name.ends_with(".blobs") || name.ends_with(".items")) &&
        name != "push.json" && !name.starts_with(keep))
      fs::remove(it->path(), ec);
  }
  return {};
}

void RecordWriter::start(std::shared_ptr<const std::string> document,
                         std::shared_ptr<const snapshot::ItemIndex> index) {
  if (m_future.valid()) return;
  m_future = std::async(std::launch::async,
                        [this, document = std::move(document), index = std::move(index)] {
                          return write_snapshot_files(m_dir, m_out.snapshot, m_out.snapshot_digest,
                                                      document, index, m_remote);
                        });
}

Result<void> RecordWriter::finish() {
  if (!m_future.valid()) start(nullptr, nullptr);
  return m_future.get();
}

Result<std::optional<snapshot::Snapshot>> last_pushed_snapshot(const fs::path& envd_home,
                                                               const std::string& repository) {
  if (!registry::is_valid_repository(repository))
    return Error(ErrorCode::invalid_argument,
                 "\"" + repository + "\" is not a repository name NAMESPACE/NAME");
  fs::path dir = record_dir(envd_home, repository);
  auto record = read_record(dir);
  if (!record) return std::optional<snapshot::Snapshot>();
  fs::path file = snapshot_file(dir, record->snapshot_digest, ".json");
  auto text = read_file(file);
  if (!text && text.error().code() == ErrorCode::not_found)
    return std::optional<snapshot::Snapshot>();
  if (!text) return text.error().with_context("the record of the last push");
  auto snap = snapshot::parse(*text);
  if (!snap) return snap.error().with_context("the record of the last push " + file.string());
  return std::optional<snapshot::Snapshot>(std::move(*snap));
}

}  // namespace envd::cli
