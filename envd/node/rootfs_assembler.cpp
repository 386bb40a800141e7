// Assembles a root filesystem from unpacked layers by hardlinking their files (no data copied)
// and applying OCI whiteouts, every step relative to directory fds opened with O_NOFOLLOW.
// Whiteouts: https://github.com/opencontainers/image-spec/blob/v1.1.0/layer.md#whiteouts
#include "envd/node/rootfs_assembler.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <map>
#include <string_view>

namespace envd::node {

namespace {

constexpr int k_dir_flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
constexpr std::string_view k_whiteout_prefix = ".wh.";
constexpr std::string_view k_meta_prefix = ".wh..wh.";  // AUFS metadata, of which only:
constexpr std::string_view k_opaque = ".wh..wh..opq";

std::string join(const std::vector<std::string>& path, std::size_t n) {
  std::string out;
  for (std::size_t i = 0; i < n; ++i) {
    if (i != 0) out += '/';
    out += path[i];
  }
  return out;
}

std::string child_path(const std::string& rel, std::string_view name) {
  return rel.empty() ? std::string(name) : rel + "/" + std::string(name);
}

std::vector<std::string> split(const std::string& rel) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start < rel.size()) {
    std::size_t slash = rel.find('/', start);
    if (slash == std::string::npos) slash = rel.size();
    out.push_back(rel.substr(start, slash - start));
    start = slash + 1;
  }
  return out;
}

struct DirEntry {
  std::string name;
  unsigned char type;  // DT_*; DT_UNKNOWN resolved with fstatat
};

unsigned char type_of(mode_t mode) {
  if (S_ISDIR(mode)) return DT_DIR;
  if (S_ISREG(mode)) return DT_REG;
  if (S_ISLNK(mode)) return DT_LNK;
  return DT_UNKNOWN;
}

// The entries of a directory, "." and ".." left out, read with getdents64 straight from `dirfd`
// (no opendir: one syscall less per directory, no second fd). Reads from the fd's offset, so
// callers pass a directory fd they opened and have not read yet.
Result<std::vector<DirEntry>> list_dir(int dirfd, std::string_view what) {
  std::vector<DirEntry> out;
  alignas(struct dirent64) char buffer[32 * 1024];
  for (;;) {
    ssize_t n = ::getdents64(dirfd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return unexpected(Error::from_errno("read directory " + std::string(what), errno));
    if (n == 0) return out;
    for (ssize_t offset = 0; offset < n;) {
      const auto* d = reinterpret_cast<const struct dirent64*>(buffer + offset);
      offset += d->d_reclen;
      std::string_view name = d->d_name;
      if (name == "." || name == "..") continue;
      unsigned char type = d->d_type;
      if (type == DT_UNKNOWN) {
        struct stat st {};
        if (::fstatat(dirfd, d->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0) type = type_of(st.st_mode);
      }
      out.push_back({std::string(name), type});
    }
  }
}

struct DirMeta {
  mode_t mode;
  struct timespec mtime;
};

// Merges layers into dest one after the other. Directory modes and mtimes are applied at the end
// (children first): creating entries would change a directory's mtime, and a read-only directory
// would stop a rootless daemon from creating the next layer's entries in it.
class Assembler {
 public:
  explicit Assembler(AssembleStats& stats) : m_stats(stats) {}

  Result<void> merge_layer(const std::filesystem::path& layer, int dest_fd) {
    m_layer = layer.string();
    UniqueFd layer_fd(::open(layer.c_str(), k_dir_flags));
    if (!layer_fd.valid()) return unexpected(Error::from_errno("open layer " + m_layer, errno));
    ENVD_TRY_VOID(record_dir(layer_fd.get(), ""));
    std::string rel;
    return merge_dir(layer_fd.get(), dest_fd, rel);
  }

  // Applies the recorded directory modes and mtimes, deepest first (reverse byte order puts every
  // path before its ancestors). Directories replaced since they were recorded are skipped.
  Result<void> finish(int dest_fd) {
    DirCursor cursor(dest_fd);
    for (auto it = m_dirs.rbegin(); it != m_dirs.rend(); ++it) {
      std::vector<std::string> path = split(it->first);
      auto fd = cursor.open(path, path.size(), DirCursor::Missing::fail);
      if (!fd) continue;
      struct timespec times[2] = {it->second.mtime, it->second.mtime};
      if (::fchmod(*fd, it->second.mode) != 0 || ::futimens(*fd, times) != 0)
        return unexpected(Error::from_errno("set mode and mtime of /" + it->first, errno));
    }
    return {};
  }

 private:
  Error entry_error(ErrorCode code, const std::string& rel, const std::string& msg) const {
    return Error(code, "layer " + m_layer + ": entry \"" + rel + "\": " + msg);
  }
  Error entry_errno(const std::string& rel, std::string_view op, int err) const {
    return Error::from_errno(op, err).with_context("layer " + m_layer + ": entry \"" + rel + "\"");
  }

  Result<void> record_dir(int layer_dir_fd, const std::string& rel) {
    struct stat st {};
    if (::fstat(layer_dir_fd, &st) != 0) return unexpected(entry_errno(rel, "stat", errno));
    m_dirs[rel] = DirMeta{static_cast<mode_t>(st.st_mode & 0777), st.st_mtim};
    return {};
  }

  Result<void> merge_dir(int layer_dir, int dest_dir, std::string& rel) {
    ENVD_TRY(std::vector<DirEntry> entries, list_dir(layer_dir, m_layer + "/" + rel));
    // Whiteouts and the opaque marker hide lower layers' content only, so they go first: this
    // layer's own entries of the same names are added afterwards.
    for (const DirEntry& e : entries) {
      if (e.name != k_opaque) continue;
      UniqueFd fresh(::openat(dest_dir, ".", k_dir_flags));  // dest_dir's offset is not ours
      if (!fresh.valid()) return unexpected(entry_errno(rel, "open", errno));
      ENVD_TRY(std::vector<DirEntry> lower, list_dir(fresh.get(), "/" + rel));
      for (const DirEntry& l : lower)
        ENVD_TRY_VOID(remove_tree_at(dest_dir, l.name, &m_stats.removed));
    }
    for (const DirEntry& e : entries) {
      std::string_view name = e.name;
      if (!name.starts_with(k_whiteout_prefix) || name.starts_with(k_meta_prefix)) continue;
      std::string target(name.substr(k_whiteout_prefix.size()));
      if (target.empty() || target == "." || target == "..")
        return unexpected(entry_error(ErrorCode::invalid_argument, child_path(rel, name),
                                      "whiteout names \"" + target + "\", not an entry"));
      ENVD_TRY_VOID(remove_tree_at(dest_dir, target, &m_stats.removed));
    }
    for (const DirEntry& e : entries) {
      if (std::string_view(e.name).starts_with(k_whiteout_prefix)) continue;
      std::size_t mark = rel.size();
      rel = child_path(rel, e.name);
      Result<void> step = e.type == DT_DIR ? merge_child_dir(layer_dir, dest_dir, e.name, rel)
                          : (e.type == DT_REG || e.type == DT_LNK)
                              ? link_entry(layer_dir, dest_dir, e, rel)
                              : Result<void>();
      rel.resize(mark);
      if (!step) return step;
    }
    return {};
  }

  // A directory replaces whatever non-directory lower layers had at its path (as overlayfs shows
  // an upper directory over a lower file or symlink) and merges with a lower directory.
  Result<void> merge_child_dir(int layer_dir, int dest_dir, const std::string& name,
                               std::string& rel) {
    UniqueFd layer_child(::openat(layer_dir, name.c_str(), k_dir_flags));
    if (!layer_child.valid()) return unexpected(entry_errno(rel, "open", errno));
    UniqueFd dest_child;
    for (int attempt = 0; attempt < 2 && !dest_child.valid(); ++attempt) {
      if (::mkdirat(dest_dir, name.c_str(), 0700) == 0) {
        ++m_stats.directories;
      } else if (errno != EEXIST) {
        return unexpected(entry_errno(rel, "mkdir", errno));
      }
      dest_child = UniqueFd(::openat(dest_dir, name.c_str(), k_dir_flags));
      if (dest_child.valid()) break;
      if (errno != ENOTDIR && errno != ELOOP) return unexpected(entry_errno(rel, "open", errno));
      // A file or symlink from a lower layer: removed, never followed.
      if (::unlinkat(dest_dir, name.c_str(), 0) != 0)
        return unexpected(entry_errno(rel, "unlink", errno));
    }
    if (!dest_child.valid()) return unexpected(entry_error(ErrorCode::io, rel, "cannot create"));
    ENVD_TRY_VOID(record_dir(layer_child.get(), rel));
    return merge_dir(layer_child.get(), dest_child.get(), rel);
  }

  // Files and symlinks are hardlinked (a symlink itself, as linkat without AT_SYMLINK_FOLLOW
  // does): no data copied, mode and mtime kept.
  Result<void> link_entry(int layer_dir, int dest_dir, const DirEntry& e, const std::string& rel) {
    if (::linkat(layer_dir, e.name.c_str(), dest_dir, e.name.c_str(), 0) != 0) {
      if (errno != EEXIST) return unexpected(entry_errno(rel, "hardlink into the rootfs", errno));
      ENVD_TRY_VOID(remove_tree_at(dest_dir, e.name));
      if (::linkat(layer_dir, e.name.c_str(), dest_dir, e.name.c_str(), 0) != 0)
        return unexpected(entry_errno(rel, "hardlink into the rootfs", errno));
    }
    ++(e.type == DT_LNK ? m_stats.symlinks : m_stats.files);
    return {};
  }

  AssembleStats& m_stats;
  std::string m_layer;
  std::map<std::string, DirMeta> m_dirs;
};

}  // namespace

Result<int> DirCursor::open(const std::vector<std::string>& path, std::size_t n, Missing missing) {
  std::size_t common = 0;
  while (common < m_names.size() && common < n && m_names[common] == path[common]) ++common;
  m_names.resize(common);
  m_fds.resize(common);
  for (std::size_t i = common; i < n; ++i) {
    int parent = i == 0 ? m_root : m_fds[i - 1].get();
    const char* name = path[i].c_str();
    int fd = ::openat(parent, name, k_dir_flags);
    if (fd < 0 && errno == ENOENT && missing == Missing::create) {
      if (::mkdirat(parent, name, 0755) != 0 && errno != EEXIST)
        return unexpected(Error::from_errno("mkdir " + join(path, i + 1), errno));
      fd = ::openat(parent, name, k_dir_flags);
      if (fd >= 0 && ::fchmod(fd, 0755) != 0) {
        int err = errno;
        ::close(fd);
        return unexpected(Error::from_errno("chmod " + join(path, i + 1), err));
      }
    }
    if (fd < 0) {
      int err = errno;
      if (err == ENOTDIR || err == ELOOP) {
        struct stat st {};
        bool is_link =
            ::fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode);
        return unexpected(ErrorCode::invalid_argument,
                          "parent " + join(path, i + 1) +
                              (is_link ? " is a symlink (never followed)" : " is not a directory"));
      }
      if (err == ENOENT)
        return unexpected(ErrorCode::not_found, join(path, i + 1) + " does not exist");
      return unexpected(Error::from_errno("open " + join(path, i + 1), err));
    }
    m_names.push_back(path[i]);
    m_fds.emplace_back(fd);
  }
  return n == 0 ? m_root : m_fds[n - 1].get();
}

void DirCursor::reset() {
  m_names.clear();
  m_fds.clear();
}

Result<void> remove_tree_at(int dirfd, const std::string& name, std::uint64_t* removed) {
  if (::unlinkat(dirfd, name.c_str(), 0) == 0) {
    if (removed != nullptr) ++*removed;
    return {};
  }
  if (errno == ENOENT) return {};
  if (errno != EISDIR && errno != EPERM)
    return unexpected(Error::from_errno("remove " + name, errno));
  UniqueFd child(::openat(dirfd, name.c_str(), k_dir_flags));
  if (!child.valid() && errno == EACCES &&
      ::fchmodat(dirfd, name.c_str(), 0700, AT_SYMLINK_NOFOLLOW) == 0)
    child = UniqueFd(::openat(dirfd, name.c_str(), k_dir_flags));
  if (!child.valid()) return unexpected(Error::from_errno("open " + name, errno));
  // A read-only directory (a layer's 0555) would stop a rootless caller from emptying it.
  struct stat st {};
  if (::fstat(child.get(), &st) == 0 && (st.st_mode & 0700) != 0700) ::fchmod(child.get(), 0700);
  ENVD_TRY(std::vector<DirEntry> entries, list_dir(child.get(), name));
  for (const DirEntry& e : entries) {
    auto r = remove_tree_at(child.get(), e.name, removed);
    if (!r) return unexpected(r.error().with_context("remove " + name));
  }
  if (::unlinkat(dirfd, name.c_str(), AT_REMOVEDIR) != 0)
    return unexpected(Error::from_errno("remove directory " + name, errno));
  if (removed != nullptr) ++*removed;
  return {};
}

Result<AssembleStats> assemble_rootfs(const std::vector<std::filesystem::path>& layers,
                                      const std::filesystem::path& dest) {
  if (::mkdir(dest.c_str(), 0700) != 0)
    return unexpected(Error::from_errno("create rootfs " + dest.string(), errno));
  UniqueFd dest_fd(::open(dest.c_str(), k_dir_flags));
  if (!dest_fd.valid()) return unexpected(Error::from_errno("open rootfs " + dest.string(), errno));
  AssembleStats stats;
  Assembler assembler(stats);
  for (const std::filesystem::path& layer : layers) {
    auto r = assembler.merge_layer(layer, dest_fd.get());
    if (!r) return unexpected(r.error().with_context("assemble " + dest.string()));
  }
  auto r = assembler.finish(dest_fd.get());
  if (!r) return unexpected(r.error().with_context("assemble " + dest.string()));
  return stats;
}

}  // namespace envd::node
