// Showing an image's unpacked layers as one read-only tree by an overlay mount, without building a
// tree of hardlinks: the mount lives in a mount namespace private to this process (and inherited
// by the processes it starts), made with a user namespace when not root, so nothing is ever
// mounted on the host and nothing outlives the process.
// Kernel docs: https://docs.kernel.org/filesystems/overlayfs.html (lower-only mounts are read only)
#pragma once

#include <filesystem>
#include <vector>

#include "envd/util/error.hpp"

namespace envd::node {

// Moves this process into a mount namespace of its own: unshare(CLONE_NEWNS), with
// CLONE_NEWUSER first when not root (the process's uid and gid mapped to themselves, so files
// keep their owners; the capabilities it gets there let it mount, and are dropped by execve in
// the programs it starts: bubblewrap then makes its own user namespace inside this one, as it does
// outside). Every mount becomes a slave of the host's: host mounts still show, ours never
// propagate back. Idempotent. Must be called while the process has a single thread (the kernel
// refuses a user namespace to a threaded process), i.e. early in main.
// Errors: failed_precondition naming the step and why (threads running; user namespaces
// disabled: kernel.unprivileged_userns_clone, user.max_user_namespaces, an AppArmor or SELinux
// policy; not tried where kernel.apparmor_restrict_unprivileged_userns is 1, as on Ubuntu 24.04,
// whose namespace would lack the capability to mount); the process is left unchanged when unshare
// itself failed, and is in the new namespaces (without a mount) when a later step failed.
Result<void> enter_private_mount_namespace();

// Whether enter_private_mount_namespace() succeeded in this process.
bool in_private_mount_namespace();

// Mounts `layers` (directories, lowest first, as the image lists them; at least two distinct
// ones, a layer listed twice counting once at its highest place) read only at `target` (an
// existing directory) as one overlay: an upper layer's entry hides a lower one's, directories
// merge. Layers are passed to the kernel as /proc/self/fd/N of O_PATH descriptors, so the mount
// option text stays short (mount(2) takes one page: about 200 layers) whatever the paths are.
// Requires in_private_mount_namespace(): never mounts in the host's namespace.
// Errors: failed_precondition (no private namespace; fewer than two layers or more than fit),
// not_found / io
// naming a layer that cannot be opened, io naming the target and the kernel's reason (e.g. EPERM
// where unprivileged overlay mounts are not allowed, EINVAL on an unsuitable file system).
Result<void> mount_overlay(const std::vector<std::filesystem::path>& layers,
                           const std::filesystem::path& target);

// True when `dir` is the root of a mount (its device differs from its parent's) in this process's
// namespace. False when it cannot be examined.
bool is_mount_point(const std::filesystem::path& dir);

// Detaches whatever is mounted at `dir` in this process's namespace (umount2 MNT_DETACH), if
// anything: before removing a tree that may hold an overlay mount point. Never fails.
void detach_mount(const std::filesystem::path& dir) noexcept;

}  // namespace envd::node
