// Directory walking that never follows a symlink: DirCursor opens paths component by component
// with O_NOFOLLOW, list_dir reads entries with getdents64, remove_tree_at removes through fds.
#include "envd/node/safe_dir.hpp"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

namespace envd::node {

namespace {

std::string join(const std::vector<std::string>& path, std::size_t n) {
  std::string out;
  for (std::size_t i = 0; i < n; ++i) {
    if (i != 0) out += '/';
    out += path[i];
  }
  return out;
}

unsigned char type_of(mode_t mode) {
  if (S_ISDIR(mode)) return DT_DIR;
  if (S_ISREG(mode)) return DT_REG;
  if (S_ISLNK(mode)) return DT_LNK;
  return DT_UNKNOWN;
}

}  // namespace

Result<int> DirCursor::open(const std::vector<std::string>& path, std::size_t n, Missing missing) {
  std::size_t common = 0;
  while (common < m_names.size() && common < n && m_names[common] == path[common]) ++common;
  m_names.resize(common);
  m_fds.resize(common);
  for (std::size_t i = common; i < n; ++i) {
    int parent = i == 0 ? m_root : m_fds[i - 1].get();
    const char* name = path[i].c_str();
    int fd = ::openat(parent, name, k_nofollow_dir_flags);
    if (fd < 0 && errno == ENOENT && missing == Missing::create) {
      if (::mkdirat(parent, name, 0755) != 0 && errno != EEXIST)
        return unexpected(Error::from_errno("mkdir " + join(path, i + 1), errno));
      fd = ::openat(parent, name, k_nofollow_dir_flags);
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

Result<void> remove_tree_at(int dirfd, const std::string& name, std::uint64_t* removed) {
  if (::unlinkat(dirfd, name.c_str(), 0) == 0) {
    if (removed != nullptr) ++*removed;
    return {};
  }
  if (errno == ENOENT) return {};
  if (errno != EISDIR && errno != EPERM)
    return unexpected(Error::from_errno("remove " + name, errno));
  UniqueFd child(::openat(dirfd, name.c_str(), k_nofollow_dir_flags));
  if (!child.valid() && errno == EACCES &&
      ::fchmodat(dirfd, name.c_str(), 0700, AT_SYMLINK_NOFOLLOW) == 0)
    child = UniqueFd(::openat(dirfd, name.c_str(), k_nofollow_dir_flags));
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

}  // namespace envd::node
