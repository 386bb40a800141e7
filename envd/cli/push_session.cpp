// push_once (see push_session.hpp): the snapshot, then the embedded builder or a remote one;
// the record of each push is push_record.cpp's.
#include "envd/cli/push_session.hpp"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "agent/builder_client.hpp"
#include "agent/stat_vouch.hpp"
#include "builder/builder_state.hpp"
#include "builder/content_source.hpp"
#include "envd/cli/format.hpp"
#include "envd/cli/push_record.hpp"
#include "envd/registry/http_transport.hpp"
#include "envd/registry/reference.hpp"
#include "envd/snapshot/snapshot_patch.hpp"
#include "envd/util/atomic_file.hpp"
#include "envd/util/log.hpp"

namespace envd::cli {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Logs the time since the previous lap at debug level: where a push spends its time.
class Laps {
 public:
  void operator()(std::string_view phase) {
    auto now = Clock::now();
    if (log::enabled(log::Level::debug)) {
      char ms[32];
      std::snprintf(ms, sizeof ms, "%.1f",
                    std::chrono::duration<double, std::milli>(now - m_last).count());
      log::debug("push", "phase done", {{"phase", std::string(phase)}, {"ms", ms}});
    }
    m_last = now;
  }

 private:
  Clock::time_point m_last = Clock::now();
};

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f s", s);
  return buf;
}

// "My Env_2" -> "my-env_2": a repository path component (distribution spec name grammar).
std::string repository_component(std::string_view s) {
  std::string out;
  for (char c : s) {
    char l = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    bool ok = (l >= 'a' && l <= 'z') || (l >= '0' && l <= '9');
    if (ok) {
      out += l;
    } else if (!out.empty() && out.back() != '-' && out.back() != '.') {
      out += (l == '.' || l == '_') ? l : '-';
    }
  }
  while (!out.empty() && !std::isalnum(static_cast<unsigned char>(out.back()))) out.pop_back();
  return out.empty() ? "env" : out;
}

// --- helpers shared by both builders --------------------------------------------------------

// Whether layers of these media types satisfy a requested compression ("" accepts any).
bool compression_matches(const std::vector<std::string>& media_types, const std::string& wanted) {
  if (wanted.empty()) return true;
  return std::all_of(media_types.begin(), media_types.end(),
                     [&](const std::string& m) { return m.ends_with("+" + wanted); });
}

void step(PushProgress* progress, const std::string& line) {
  if (progress != nullptr && progress->on_step) progress->on_step(line);
}

// The files whose digests `known` lacks, once per digest, with the absolute path to read each.
std::vector<agent::BlobSource> blobs_to_check(const snapshot::Snapshot& snap,
                                              const KnownBlobs& known) {
  std::vector<agent::BlobSource> out;
  std::unordered_map<oci::Digest, bool> seen;
  auto add = [&](const std::string& root, const std::vector<snapshot::FileEntry>& files) {
    for (const auto& f : files)
      if (f.digest && !known.contains(f.digest->view()) && seen.emplace(*f.digest, true).second)
        out.push_back({*f.digest, f.size, fs::path(root) / f.path});
  };
  for (const auto& env : snap.environments) {
    for (const auto& p : env.packages) add(env.prefix, p.files);
    add(env.prefix, env.unowned);
  }
  for (const auto& src : snap.sources) add(src.root, src.files);
  return out;
}

// --- the embedded builder --------------------------------------------------------------------

Result<void> push_embedded(PushOutcome& out, const PushTarget& target, PushProgress* progress,
                           RecordWriter& record) {
  auto started = Clock::now();
  fs::path dir = target.envd_home / "builder";
  auto state = builder::BuilderState::open(dir);
  if (!state) return state.error().with_context("open the embedded builder at " + dir.string());
  // The tag may already name this snapshot's image (a push with no change).
  if (auto current = (*state)->index->resolve(out.repository, out.tag); current && *current) {
    auto manifest = (*state)->blobs->read_all((*current)->digest);
    auto j = manifest ? json::parse(*manifest, nullptr, false) : json();
    if (j.is_object() && j.contains("annotations") && j["annotations"].is_object() &&
        j["annotations"].value(std::string(oci::k_label_snapshot_digest), "") ==
            out.snapshot_digest.str() &&
        j.contains("layers") && j["layers"].is_array()) {
      std::vector<std::string> types;
      for (const auto& l : j["layers"])
        types.push_back(l.is_object() ? l.value("mediaType", "") : "");
      if (compression_matches(types, target.compression)) {
        out.unchanged = true;
        out.manifest_digest = (*current)->digest;
        out.layers = out.layers_reused = types.size();
        out.build_seconds = since(started);
        return {};
      }
    }
  }
  record.start(nullptr, nullptr);
  builder::BuildOptions build;
  build.repository = out.repository;
  build.tag = out.tag;
  build.compression =
      target.compression == "gzip" ? builder::Compression::gzip : builder::Compression::zstd;
  build.envd_version = ENVD_VERSION;
  build.snapshot_digest = out.snapshot_digest;
  builder::BuildProgress build_progress;
  if (progress != nullptr) {
    progress->phase = 2;
    build_progress.on_change = [&build_progress, progress] {
      progress->layers_total = build_progress.layers_total.load();
      progress->layers_done = build_progress.layers_done.load();
    };
  }
  // The snapshot has just hashed these files (or found them in its stat cache): a file still at
  // the stat the cache recorded with its digest is not hashed a second time by the builder.
  // Without the cache every file is verified, as always.
  std::vector<std::string> roots;
  for (const auto& env : out.snapshot.environments) roots.push_back(env.prefix);
  for (const auto& src : out.snapshot.sources) roots.push_back(src.root);
  auto vouch = agent::StatVouch::load(target.envd_home, roots);
  if (!vouch)
    log::warn("push", "stat cache unavailable; the build hashes every file",
              {{"error", vouch.error().message()}});
  builder::ContentVouch vouches;
  if (vouch) {
    vouches = [v = vouch->get()](const builder::LayerEntry& entry, const StatKey& st) {
      return v->vouches(entry.source, st, *entry.digest);
    };
  }
  builder::FileContentSource files(std::move(vouches));
  auto result = (*state)->builder->build(out.snapshot, files, build, &build_progress);
  if (!result) return result.error().with_context("build " + out.repository + ":" + out.tag);
  out.manifest_digest = result->manifest_digest;
  out.layers = result->layers;
  out.layers_reused = result->layers_reused;
  out.bytes_built = result->bytes_written;
  out.build_seconds = since(started);
  return {};
}

// --- a remote builder ------------------------------------------------------------------------

// Uploads the blobs named by `digests`, reading them from `sources`.
Result<agent::UploadStats> upload(agent::BuilderClient& client, const std::string& repository,
                                  const std::vector<oci::Digest>& digests,
                                  const std::vector<agent::BlobSource>& sources,
                                  PushProgress* progress) {
  if (digests.empty()) return agent::UploadStats{};
  std::unordered_map<oci::Digest, const agent::BlobSource*> by_digest;
  for (const auto& b : sources) by_digest.emplace(b.digest, &b);
  std::vector<agent::BlobSource> blobs;
  std::uint64_t total = 0;
  for (const auto& d : digests) {
    auto it = by_digest.find(d);
    if (it == by_digest.end())
      return Error(ErrorCode::internal,
                   "the builder asks for " + d.str() + ", which the snapshot does not name");
    blobs.push_back(*it->second);
    total += d.str().size() + std::to_string(it->second->size).size() + 2 + it->second->size;
  }
  if (progress != nullptr) progress->upload_bytes_total += total;
  return client.upload_blobs(repository, blobs, {},
                             progress != nullptr ? &progress->upload_bytes_done : nullptr);
}

Result<void> push_remote(PushOutcome& out, const PushTarget& target, PushProgress* progress,
                         RecordWriter& record) {
  auto started = Clock::now();
  Laps lap;
  agent::BuilderClientOptions options;
  options.url = target.builder_url;
  options.token = target.token;
  options.ca_file = target.ca_file;
  ENVD_TRY(auto client, agent::BuilderClient::create(std::move(options)));
  out.builder = client->url();
  // The tag may already name this snapshot's image (a push with no change): nothing to send.
  ENVD_TRY(auto current, client->tag_manifest(out.repository, out.tag));
  lap("tag manifest");
  if (current && current->snapshot_digest == out.snapshot_digest &&
      compression_matches(current->layer_media_types, target.compression)) {
    out.unchanged = true;
    out.manifest_digest = current->digest;
    out.layers = out.layers_reused = current->layer_media_types.size();
    out.upload_seconds = since(started);
    out.bytes_uploaded = client->bytes_sent();
    return {};
  }

  if (progress != nullptr) progress->phase = 1;
  // The item index (the base of the next push's patch) is made while blobs are asked about and
  // uploaded.
  auto index_job = std::async(std::launch::async, [&out] {
    return snapshot::ItemIndex::of(out.snapshot, out.snapshot_digest);
  });
  auto base = pushed_item_index(target.envd_home, out.repository, out.builder);
  // Ask only about blobs the builder did not hold after the last push of this name to it.
  auto known = known_blobs(target.envd_home, out.repository, out.builder);
  auto candidates = blobs_to_check(out.snapshot, *known);
  std::vector<oci::Digest> ask;
  for (const auto& b : candidates) ask.push_back(b.digest);
  lap("blobs to ask about");
  std::vector<oci::Digest> missing;
  if (!ask.empty()) {
    auto m = client->missing_blobs(out.repository, ask);
    if (!m) return m.error().with_context("ask " + out.builder + " which blobs it lacks");
    missing = std::move(*m);
  }
  lap("missing blobs");
  ENVD_TRY(auto sent, upload(*client, out.repository, missing, candidates, progress));
  out.blobs_uploaded += sent.blobs;
  lap("upload");

  auto indexed = index_job.get();
  if (!indexed) return indexed.error().with_context("index the snapshot");
  auto index = std::make_shared<const snapshot::ItemIndex>(std::move(*indexed));
  // Submits `text`; when the builder lacks blobs the record said it held (another builder at
  // that URL, or garbage-collected), sends them and submits again.
  auto submit = [&](const std::string& text,
                    std::string_view media_type) -> Result<std::optional<oci::Digest>> {
    for (int attempt = 0; attempt < 3; ++attempt) {
      auto s = client->submit_snapshot(out.repository, text, media_type);
      out.snapshot_bytes += text.size();
      if (!s) return s.error();
      if (s->digest) return s->digest;
      KnownBlobs none;
      ENVD_TRY(auto more, upload(*client, out.repository, s->missing,
                                 blobs_to_check(out.snapshot, none), progress));
      out.blobs_uploaded += more.blobs;
    }
    return std::optional<oci::Digest>();
  };
  std::optional<oci::Digest> submitted;
  std::shared_ptr<const std::string> document;  // the whole document, when it was sent
  // The record's files are written while the snapshot is submitted and built.
  if (base) {
    record.start(nullptr, index);
    ENVD_TRY(auto patch, snapshot::make_patch(*base, out.snapshot, *index));
    auto s = submit(patch, snapshot::k_patch_media_type);
    if (s) {
      submitted = *s;
    } else if (s.error().code() == ErrorCode::not_found ||
               s.error().code() == ErrorCode::invalid_argument) {
      // The builder lost the base, or its copy differs: the whole document works regardless.
      log::info("push", "the builder did not take a patch; sending the whole snapshot",
                {{"reason", s.error().message()}});
    } else {
      return s.error().with_context("submit the snapshot to " + out.builder);
    }
    lap("submit snapshot patch");
  }
  if (!submitted) {
    auto serialised = snapshot::to_json(out.snapshot);
    if (!serialised) return serialised.error().with_context("serialise the snapshot");
    document = std::make_shared<const std::string>(std::move(*serialised));
    record.start(document, index);
    auto s = submit(*document, snapshot::k_media_type);
    if (!s) return s.error().with_context("submit the snapshot to " + out.builder);
    submitted = *s;
  }
  if (!submitted)
    return Error(ErrorCode::unavailable, "submit the snapshot to " + out.builder +
                                             ": the builder still lacks blobs after 3 uploads");
  if (*submitted != out.snapshot_digest)
    return Error(ErrorCode::internal, "the builder computed snapshot digest " + submitted->str() +
                                          " for the document whose digest is " +
                                          out.snapshot_digest.str());
  lap("submit snapshot");
  out.upload_seconds = since(started);
  step(progress, "upload: asked about " + with_commas(ask.size()) + " files, " +
                     with_commas(missing.size()) + " missing; sent " +
                     human_bytes(client->bytes_sent()) +
                     (document ? " (snapshot document " : " (snapshot as a patch, ") +
                     human_bytes(out.snapshot_bytes) + ") in " + seconds_text(out.upload_seconds));

  auto build_started = Clock::now();
  if (progress != nullptr) progress->phase = 2;
  auto id = client->start_build(out.repository, out.snapshot_digest, out.tag, target.compression);
  if (!id) return id.error().with_context("start the build on " + out.builder);
  auto built = client->wait_build(out.repository, *id, [progress](const agent::RemoteBuild& b) {
    if (progress == nullptr) return;
    progress->layers_total = b.layers_total;
    progress->layers_done = b.layers_done;
  });
  if (!built) return built.error();
  out.manifest_digest = *built->manifest_digest;
  out.layers = built->layers;
  out.layers_reused = built->layers_reused;
  out.bytes_built = built->bytes_written;
  out.build_seconds = since(build_started);
  out.bytes_uploaded = client->bytes_sent();
  lap("build");
  return {};
}

}  // namespace

Result<PushTarget> resolve_push_target(const std::string& builder_flag,
                                       const std::string& compression_flag,
                                       const UserConfig& config, const fs::path& envd_home) {
  PushTarget t;
  t.envd_home = envd_home;
  std::string source;
  const char* env_builder = std::getenv("ENVD_BUILDER");
  if (!builder_flag.empty()) {
    t.builder_url = builder_flag;
    source = "--builder";
  } else if (env_builder != nullptr && *env_builder != '\0') {
    t.builder_url = env_builder;
    source = "ENVD_BUILDER";
  } else {
    t.builder_url = config.builder;
    source = config.file.string() + ": builder";
  }
  while (t.builder_url.ends_with('/')) t.builder_url.pop_back();
  if (!t.builder_url.empty()) {
    auto url = registry::parse_url(t.builder_url);
    if (!url || url->target != "/")
      return Error(ErrorCode::invalid_argument,
                   source + ": \"" + t.builder_url +
                       "\" is not a builder URL http(s)://HOST[:PORT] (without a path)");
    const char* env_token = std::getenv("ENVD_TOKEN");
    if (env_token != nullptr && *env_token != '\0') {
      t.token = env_token;
    } else {
      ENVD_TRY(t.token, config_token(config));
    }
    t.ca_file = config.ca_file.string();
  }
  t.compression = !compression_flag.empty() ? compression_flag : config.compression;
  return t;
}

Result<ImageName> resolve_image_name(const std::string& name, const snapshot::Snapshot& snap) {
  ImageName out;
  std::string repo = name;
  if (auto colon = repo.rfind(':');
      colon != std::string::npos && repo.find('/', colon) == std::string::npos) {
    out.tag = repo.substr(colon + 1);
    repo = repo.substr(0, colon);
    if (!registry::is_valid_tag(out.tag))
      return Error(ErrorCode::invalid_argument,
                   "image name \"" + name + "\": tag \"" + out.tag +
                       "\" must match [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}");
  }
  if (repo.empty()) {
    std::string env_name = snap.environments.empty() ? "env" : snap.environments.front().name;
    repo = "local/" + repository_component(env_name);
  }
  if (repo.find('/') == std::string::npos) repo = "local/" + repo;
  if (!registry::is_valid_repository(repo))
    return Error(ErrorCode::invalid_argument,
                 "image name \"" + name + "\": \"" + repo +
                     "\" is not NAMESPACE/NAME (lowercase letters, digits and . _ - inside "
                     "components, '/' between them)");
  out.repository = std::move(repo);
  return out;
}

Result<PushOutcome> push_once(const PushRequest& request, const PushTarget& target,
                              PushProgress* progress) {
  auto started = Clock::now();
  if (progress != nullptr) progress->phase = 0;
  auto snap =
      agent::take_snapshot(request.snapshot, progress != nullptr ? &progress->hashing : nullptr);
  if (!snap) return snap.error().with_context("snapshot");
  ENVD_TRY(auto name, resolve_image_name(request.name, snap->snapshot));
  PushOutcome out;
  out.snapshot = std::move(snap->snapshot);
  out.snapshot_digest = snap->digest;
  out.repository = name.repository;
  out.tag = name.tag;
  out.files_hashed = snap->files_hashed;
  out.bytes_hashed = snap->bytes_hashed;
  out.snapshot_seconds = snap->seconds;
  auto totals = snapshot::totals(out.snapshot);
  step(progress, "snapshot: " + with_commas(totals.files) + " files, " + human_bytes(totals.bytes) +
                     " in " + seconds_text(out.snapshot_seconds) + " (read " +
                     with_commas(out.files_hashed) + " files, " + human_bytes(out.bytes_hashed) +
                     ")");

  const fs::path dir = record_dir(target.envd_home, out.repository);
  RecordWriter record(dir, out, !target.builder_url.empty());
  if (target.builder_url.empty()) {
    ENVD_TRY_VOID(push_embedded(out, target, progress, record));
    out.image = out.repository + "@" + out.manifest_digest.str();
  } else {
    ENVD_TRY_VOID(push_remote(out, target, progress, record));
    std::string host = out.builder.substr(out.builder.find("://") + 3);
    out.image = host + "/" + out.repository + "@" + out.manifest_digest.str();
  }
  if (out.unchanged) {
    step(progress, "build: " + out.repository + ":" + out.tag +
                       " already is this snapshot's image; nothing uploaded or built");
  } else {
    step(progress, "build: " + std::to_string(out.layers) + " layers (" +
                       std::to_string(out.layers_reused) + " reused, " +
                       human_bytes(out.bytes_built) + " new) in " +
                       seconds_text(out.build_seconds));
  }
  if (progress != nullptr) progress->phase = 3;
  Laps lap;
  auto recorded = record.finish();
  if (recorded) recorded = commit_record(dir, out);
  if (!recorded)
    log::warn("push", "could not record the push (envd diff will not know it)",
              {{"error", recorded.error().message()}});
  lap("record");
  out.seconds = since(started);
  return out;
}

}  // namespace envd::cli
