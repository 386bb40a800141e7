// How an image's environment is put together from its unpacked layers: an overlay mount where this
// process may make one (nothing to build: the pull ends when the layers are in place), else a tree
// of hardlinks (rootfs_assembler.hpp). Both show the same files; the overlay one only inside this
// process's private mount namespace (overlay_mount.hpp) and the processes it starts.
#pragma once

#include <filesystem>
#include <optional>
#include <string_view>
#include <vector>

#include "envd/node/node_store.hpp"
#include "envd/oci/digest.hpp"
#include "envd/util/error.hpp"

namespace envd::node {

enum class Assembly {
  automatic,  // overlay where permitted, else hardlinks
  hardlink,   // always a tree of hardlinks, which every process sees at the environment's path
};

// Parses "auto" | "hardlink". Errors: invalid_argument naming the text.
Result<Assembly> parse_assembly(std::string_view text);
std::string_view to_string(Assembly assembly);

// What an assembled environment is now: "overlay" (ENV/rootfs is a mount point for its layers) or
// "hardlink" (ENV/rootfs holds the tree).
enum class AssemblyKind { overlay, hardlink };
std::string_view to_string(AssemblyKind kind);

// An environment assembled by overlay holds, instead of a tree:
//   ENV/rootfs/            an empty directory: the mount point
//   ENV/overlay.json       {"media_type": k_overlay_record_media_type,
//                           "layers": ["sha256:<diff_id>", ...]}  (lowest first)
//   ENV/rootfs.roots.json  for envd images, as a tree has (image_roots.hpp), read from the
//                          snapshot in the highest layer holding one
// and ENV/image.json as every environment. A tree assembled later for the same environment
// (ensure_rootfs with hardlink, or where no mount is permitted) replaces the empty rootfs by
// rename; overlay.json stays, and is ignored once rootfs is not empty.
inline constexpr std::string_view k_overlay_record_media_type =
    "application/vnd.envd.overlay-layers.v1+json";

// Whether this process can show `store`'s layers by overlay: it is in a private mount namespace
// and a trial mount of two empty layers in the store's staging area works. Probed once per process
// and store. Errors: failed_precondition (or that of the trial mount) saying why not.
Result<void> overlay_usable(NodeStore& store);

// Whether an image with these layers can be an overlay: from two layers (the kernel wants two
// lower layers when there is no upper one) to 200 (what one mount takes), all of them known to hold
// no whiteout or opaque marker (NodeStore::layer_whiteouts: the overlay would show the markers as
// files). Errors: io.
Result<bool> overlay_fits(NodeStore& store, const std::vector<oci::Digest>& diff_ids);

// Writes the overlay form of an environment into `env` (its staging directory, renamed into place
// by the caller): rootfs/, overlay.json, rootfs.roots.json. The layers must be in the store.
// Errors: io.
Result<void> write_overlay_env(NodeStore& store, const std::filesystem::path& env,
                               const std::vector<oci::Digest>& diff_ids);

// The diff_ids of ENV/overlay.json, or nullopt when there is none. Errors: invalid_argument
// naming the file (not JSON, another media_type, a bad digest), io.
Result<std::optional<std::vector<oci::Digest>>> read_overlay_record(
    const std::filesystem::path& env);

// Makes the environment of `manifest` (assembled, in the store) readable at
// store.rootfs_dir(manifest) in this process: a tree already is; an overlay one is mounted (once
// per process) when `assembly` is automatic and the mount works here; otherwise its tree is built
// now from the layers (under the environment's lock, renamed into place) and kept for every later
// user. Returns what the environment is for this process. Thread-safe.
// Errors: io, not_found (a layer missing), those of assemble_rootfs.
Result<AssemblyKind> ensure_rootfs(NodeStore& store, const oci::Digest& manifest,
                                   Assembly assembly);

// What the environment of `manifest` is, looked at from any process: overlay when it has
// overlay.json and its rootfs is empty on the host (or mounted here).
AssemblyKind assembly_kind(NodeStore& store, const oci::Digest& manifest);

}  // namespace envd::node
