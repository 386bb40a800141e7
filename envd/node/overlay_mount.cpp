#include "envd/node/overlay_mount.hpp"

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>

#include "envd/util/atomic_file.hpp"  // read_file

namespace envd::node {
namespace {

namespace fs = std::filesystem;

std::atomic<bool> g_private{false};
std::mutex g_enter_mutex;

// mount(2) copies at most one page of option text.
constexpr std::size_t k_max_mount_data = 4095;

std::string errno_text(int err) {
  return std::strerror(err);
}

Result<void> write_proc_file(const char* path, const std::string& text) {
  int fd = ::open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    // After unshare the process's /proc files belong to root unless it is dumpable.
    return Error(ErrorCode::failed_precondition,
                 std::string("open ") + path + ": " + errno_text(err) +
                     (err == EACCES ? " (a non-dumpable process: started setuid, with file "
                                      "capabilities, or after changing its uid?)"
                                    : ""));
  }
  ssize_t n = ::write(fd, text.data(), text.size());
  int err = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(text.size()))
    return Error(ErrorCode::failed_precondition,
                 std::string("write ") + path + ": " + errno_text(n < 0 ? err : EIO));
  return {};
}

Result<void> enter_locked() {
  const uid_t uid = ::geteuid();
  const gid_t gid = ::getegid();
  // Root without CAP_SYS_ADMIN (e.g. in a container) may still make a user namespace.
  bool as_user = uid != 0;
  if (!as_user && ::unshare(CLONE_NEWNS) != 0) {
    if (errno != EPERM)
      return Error(ErrorCode::failed_precondition, "make a mount namespace: " + errno_text(errno));
    as_user = true;
  }
  if (as_user) {
    // Ubuntu's AppArmor lets the unshare succeed but then withholds the capabilities (no mount),
    // which would leave this process (and the bubblewrap it starts) in a namespace for nothing.
    if (auto restricted = read_file("/proc/sys/kernel/apparmor_restrict_unprivileged_userns");
        restricted && restricted->starts_with('1'))
      return Error(ErrorCode::failed_precondition,
                   "AppArmor restricts unprivileged user namespaces here "
                   "(kernel.apparmor_restrict_unprivileged_userns = 1)");
    if (::unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) {
      int err = errno;
      return Error(ErrorCode::failed_precondition,
                   "make a user and mount namespace: " + errno_text(err) +
                       (err == EINVAL ? " (the process already runs threads)"
                                      : " (user namespaces disabled here?)"));
    }
    // gid_map may only be written by an unprivileged process once setgroups is denied.
    auto r = write_proc_file("/proc/self/setgroups", "deny");
    if (r)
      r = write_proc_file("/proc/self/uid_map",
                          std::to_string(uid) + " " + std::to_string(uid) + " 1\n");
    if (r)
      r = write_proc_file("/proc/self/gid_map",
                          std::to_string(gid) + " " + std::to_string(gid) + " 1\n");
    if (!r) return r.error().with_context("map ids in the new user namespace");
  }
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_SLAVE, nullptr) != 0)
    return Error(ErrorCode::failed_precondition,
                 "make the new namespace's mounts slaves of the host's: " + errno_text(errno));
  return {};
}

}  // namespace

Result<void> enter_private_mount_namespace() {
  std::lock_guard guard(g_enter_mutex);
  if (g_private) return {};
  ENVD_TRY_VOID(enter_locked());
  g_private = true;
  return {};
}

bool in_private_mount_namespace() {
  return g_private;
}

Result<void> mount_overlay(const std::vector<fs::path>& layers, const fs::path& target) {
  if (!g_private)
    return Error(
        ErrorCode::failed_precondition,
        "overlay mount at " + target.string() + ": this process has no private mount namespace");
  // The topmost copy of a layer listed twice shows all the lower copy would (nothing in a layer
  // hides anything in itself), and the kernel refuses a repeated lower directory.
  std::vector<fs::path> top_first;
  for (auto it = layers.rbegin(); it != layers.rend(); ++it)
    if (std::find(top_first.begin(), top_first.end(), *it) == top_first.end())
      top_first.push_back(*it);
  if (top_first.size() < 2)
    return Error(ErrorCode::failed_precondition,
                 "overlay mount at " + target.string() +
                     ": fewer than two distinct layers (a read-only overlay needs two)");
  std::vector<int> fds;
  auto close_all = [&fds] {
    for (int fd : fds) ::close(fd);
  };
  // lowerdir lists the top layer first.
  std::string data = "lowerdir=";
  for (const auto& layer : top_first) {
    int fd = ::open(layer.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      close_all();
      return Error(err == ENOENT ? ErrorCode::not_found : ErrorCode::io,
                   "overlay mount at " + target.string() + ": open layer " + layer.string() + ": " +
                       errno_text(err));
    }
    if (!fds.empty()) data += ':';
    fds.push_back(fd);
    data += "/proc/self/fd/" + std::to_string(fd);
  }
  if (data.size() > k_max_mount_data) {
    close_all();
    return Error(ErrorCode::failed_precondition, "overlay mount at " + target.string() + ": " +
                                                     std::to_string(top_first.size()) +
                                                     " layers do not fit in one mount");
  }
  int rc =
      ::mount("overlay", target.c_str(), "overlay", MS_RDONLY | MS_NODEV | MS_NOSUID, data.c_str());
  int err = errno;
  close_all();  // the mount holds the layers itself
  if (rc != 0)
    return Error(ErrorCode::io, "overlay mount of " + std::to_string(top_first.size()) +
                                    " layers at " + target.string() + ": " + errno_text(err));
  return {};
}

bool is_mount_point(const fs::path& dir) {
  struct stat self {};
  struct stat parent {};
  if (::lstat(dir.c_str(), &self) != 0 || !S_ISDIR(self.st_mode)) return false;
  if (::stat((dir / "..").c_str(), &parent) != 0) return false;
  return self.st_dev != parent.st_dev || self.st_ino == parent.st_ino;
}

void detach_mount(const fs::path& dir) noexcept {
  if (g_private) (void)::umount2(dir.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW);
}

}  // namespace envd::node
