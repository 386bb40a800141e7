#include "envd/node/env_assembly.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "envd/node/image_roots.hpp"
#include "envd/node/overlay_mount.hpp"
#include "envd/node/rootfs_assembler.hpp"
#include "envd/util/atomic_file.hpp"
#include "envd/util/log.hpp"
#include "envd/util/unique_fd.hpp"

namespace envd::node {
namespace {

namespace fs = std::filesystem;

constexpr const char* k_overlay_record = "overlay.json";
// What fits in one mount's option text (overlay_mount.hpp), with room for 5-digit fd numbers.
constexpr std::size_t k_max_overlay_layers = 200;

// Serialises mounting within the process, so two threads launching the same environment mount
// it once.
std::mutex g_mount_mutex;

// False also when it cannot be read: a launch then finds out what is wrong with it.
bool is_empty_dir(const fs::path& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return false;
  bool empty = true;
  while (const dirent* e = ::readdir(d)) {
    std::string_view name = e->d_name;
    if (name != "." && name != "..") {
      empty = false;
      break;
    }
  }
  ::closedir(d);
  return empty;
}

std::vector<fs::path> layer_dirs(NodeStore& store, const std::vector<oci::Digest>& diff_ids) {
  std::vector<fs::path> dirs;
  dirs.reserve(diff_ids.size());
  for (const auto& d : diff_ids) dirs.push_back(store.layer_dir(d));
  return dirs;
}

// The snapshot an overlay of `layers` shows at /.envd/snapshot.json: the highest layer holding
// it, unless a higher one has something other than a directory at /.envd (which hides the
// lower ones, as in a tree). Empty when none does.
fs::path find_snapshot(const std::vector<fs::path>& layers) {
  const fs::path dir_name = fs::path(detail::k_snapshot_in_image).parent_path();
  for (auto it = layers.rbegin(); it != layers.rend(); ++it) {
    struct stat st {};
    if (::lstat((*it / dir_name).c_str(), &st) != 0) continue;
    if (!S_ISDIR(st.st_mode)) return {};
    fs::path file = *it / detail::k_snapshot_in_image;
    if (::lstat(file.c_str(), &st) == 0) return file;
  }
  return {};
}

// Builds the environment's tree from its layers and renames it over the empty mount point.
// Caller holds the environment's lock.
Result<void> build_tree(NodeStore& store, const oci::Digest& manifest,
                        const std::vector<oci::Digest>& diff_ids) {
  const fs::path rootfs = store.rootfs_dir(manifest);
  ENVD_TRY(auto staging, store.make_staging("tree"));
  const fs::path tree = staging.path() / "rootfs";
  ENVD_TRY(auto stats, assemble_rootfs(layer_dirs(store, diff_ids), tree));
  (void)stats;
  // The tree's directories and links are on disk before it takes the mount point's place.
  UniqueFd dir(::open(staging.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir.valid()) return Error::from_errno("open " + staging.path().string(), errno);
  if (::syncfs(dir.get()) != 0)
    return Error::from_errno("syncfs " + staging.path().string(), errno);
  if (::rename(tree.c_str(), rootfs.c_str()) != 0)
    return Error::from_errno("rename " + tree.string() + " to " + rootfs.string(), errno);
  ENVD_TRY_VOID(fsync_directory(store.env_dir(manifest)));
  log::info("node", "assembled environment by hardlinks",
            {{"manifest", manifest.str()}, {"rootfs", rootfs.string()}});
  return {};
}

}  // namespace

Result<Assembly> parse_assembly(std::string_view text) {
  if (text == "auto") return Assembly::automatic;
  if (text == "hardlink") return Assembly::hardlink;
  return Error(ErrorCode::invalid_argument,
               "assembly \"" + std::string(text) + "\" is not one of auto, hardlink");
}

std::string_view to_string(Assembly assembly) {
  return assembly == Assembly::automatic ? "auto" : "hardlink";
}

std::string_view to_string(AssemblyKind kind) {
  return kind == AssemblyKind::overlay ? "overlay" : "hardlink";
}

Result<void> overlay_usable(NodeStore& store) {
  static std::mutex mutex;
  static std::map<fs::path, std::optional<Error>> probed;
  if (!in_private_mount_namespace())
    return Error(ErrorCode::failed_precondition, "no private mount namespace in this process");
  std::lock_guard guard(mutex);
  auto known = probed.find(store.dir());
  if (known == probed.end()) {
    auto trial = [&store]() -> Result<void> {
      ENVD_TRY(auto staging, store.make_staging("probe"));
      const fs::path dir = staging.path();
      for (const char* name : {"lower", "upper", "target"})
        if (::mkdir((dir / name).c_str(), 0755) != 0)
          return Error::from_errno("mkdir " + (dir / name).string(), errno);
      auto mounted = mount_overlay({dir / "lower", dir / "upper"}, dir / "target");
      detach_mount(dir / "target");  // before the staging directory is removed
      return mounted;
    };
    auto r = trial();
    known = probed.emplace(store.dir(), r ? std::nullopt : std::optional<Error>(r.error())).first;
    if (!r)
      log::info("node", "environments are assembled by hardlinks: no overlay mount here",
                {{"error", r.error().message()}});
  }
  if (known->second) return *known->second;
  return {};
}

Result<bool> overlay_fits(NodeStore& store, const std::vector<oci::Digest>& diff_ids) {
  std::set<oci::Digest> distinct(diff_ids.begin(), diff_ids.end());
  if (distinct.size() < 2 || distinct.size() > k_max_overlay_layers) return false;
  for (const auto& d : diff_ids) {
    ENVD_TRY(auto whiteouts, store.layer_whiteouts(d));
    if (!whiteouts || *whiteouts != 0) return false;
  }
  return true;
}

Result<void> write_overlay_env(NodeStore& store, const fs::path& env,
                               const std::vector<oci::Digest>& diff_ids) {
  const fs::path rootfs = env / "rootfs";
  if (::mkdir(rootfs.c_str(), 0755) != 0)
    return Error::from_errno("mkdir " + rootfs.string(), errno);
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& d : diff_ids) layers.push_back(d.str());
  nlohmann::json record = {{"media_type", k_overlay_record_media_type}, {"layers", layers}};
  ENVD_TRY_VOID(write_file_atomic(env / k_overlay_record, record.dump() + "\n"));
  const fs::path snapshot = find_snapshot(layer_dirs(store, diff_ids));
  if (snapshot.empty()) return {};
  ENVD_TRY(bool written, detail::write_roots_record(snapshot, detail::roots_record_path(rootfs)));
  (void)written;  // false: refused and logged; a launch reads the snapshot and says why
  return {};
}

Result<std::optional<std::vector<oci::Digest>>> read_overlay_record(const fs::path& env) {
  const fs::path file = env / k_overlay_record;
  auto text = read_file(file);
  if (!text) {
    if (text.error().code() == ErrorCode::not_found)
      return std::optional<std::vector<oci::Digest>>();
    return text.error();
  }
  auto bad = [&file](const std::string& why) {
    return Error(ErrorCode::invalid_argument, file.string() + ": " + why);
  };
  auto json = nlohmann::json::parse(*text, nullptr, false);
  if (json.is_discarded() || !json.is_object()) return bad("not a JSON object");
  auto media_type = json.find("media_type");
  if (media_type == json.end() || *media_type != k_overlay_record_media_type)
    return bad("media_type is not " + std::string(k_overlay_record_media_type));
  auto layers = json.find("layers");
  if (layers == json.end() || !layers->is_array() || layers->empty())
    return bad("no \"layers\" array");
  std::vector<oci::Digest> out;
  for (const auto& l : *layers) {
    if (!l.is_string()) return bad("a layer that is not a string");
    auto d = oci::Digest::parse(l.get<std::string>());
    if (!d) return bad(d.error().message());
    out.push_back(*d);
  }
  return std::optional<std::vector<oci::Digest>>(std::move(out));
}

Result<AssemblyKind> ensure_rootfs(NodeStore& store, const oci::Digest& manifest,
                                   Assembly assembly) {
  const fs::path rootfs = store.rootfs_dir(manifest);
  ENVD_TRY(auto layers, read_overlay_record(store.env_dir(manifest)));
  if (!layers) return AssemblyKind::hardlink;
  if (assembly == Assembly::automatic && in_private_mount_namespace()) {
    std::lock_guard guard(g_mount_mutex);
    if (is_mount_point(rootfs)) return AssemblyKind::overlay;
    if (!is_empty_dir(rootfs)) return AssemblyKind::hardlink;  // its tree was built
    auto mounted = mount_overlay(layer_dirs(store, *layers), rootfs);
    if (mounted) return AssemblyKind::overlay;
    log::warn("node", "overlay mount failed: assembling the environment by hardlinks",
              {{"manifest", manifest.str()}, {"error", mounted.error().message()}});
  }
  ENVD_TRY(auto lock, store.lock(LockKind::env, manifest));
  if (!is_empty_dir(rootfs)) return AssemblyKind::hardlink;
  auto built = build_tree(store, manifest, *layers);
  if (!built) return built.error().with_context("assemble environment " + manifest.str());
  return AssemblyKind::hardlink;
}

AssemblyKind assembly_kind(NodeStore& store, const oci::Digest& manifest) {
  struct stat st {};
  const fs::path rootfs = store.rootfs_dir(manifest);
  if (::stat((store.env_dir(manifest) / k_overlay_record).c_str(), &st) != 0)
    return AssemblyKind::hardlink;
  return is_mount_point(rootfs) || is_empty_dir(rootfs) ? AssemblyKind::overlay
                                                        : AssemblyKind::hardlink;
}

}  // namespace envd::node
