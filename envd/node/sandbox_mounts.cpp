// The bubblewrap mounts that show an envd image's environments and sources at their absolute
// paths over the host's root (see sandbox_mounts.hpp): a tree of host paths where each node is
// the host's entry as is, a graft (tmpfs with the host's entries put back), or image content.
#include "envd/node/sandbox_mounts.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <tuple>

#include "envd/util/log.hpp"
#include "envd/util/unique_fd.hpp"

namespace envd::node::detail {
namespace {

// Where a big graft's host directory is bound so that its entries can be symlinks into it.
constexpr std::string_view k_mirror_root = "/.envd-host";
// A graft binds each host entry back while it has at most this many; above, symlinks (see .hpp).
constexpr std::size_t k_max_graft_binds = 48;
constexpr int k_max_symlink_hops = 40;

// ---- host paths ------------------------------------------------------------------------------

std::string join_path(const std::vector<std::string>& parts, std::size_t n) {
  if (n == 0) return "/";
  std::string out;
  for (std::size_t i = 0; i < n; ++i) out += "/" + parts[i];
  return out;
}

// An image path resolved through the host's symlinks as far as they lead to existing directories,
// so that a mount lands where the sandbox's path walk will arrive. The last `literal` parts are
// the image path's own last components (the first missing or non-directory part is among them).
struct HostPath {
  std::vector<std::string> parts;
  std::size_t literal = 0;
};

HostPath resolve_on_host(const std::vector<std::string>& image_parts) {
  std::vector<std::string> done;
  std::deque<std::string> todo(image_parts.begin(), image_parts.end());
  std::size_t literal_left = image_parts.size();
  int hops = 0;
  auto consume = [&] {
    if (todo.size() <= literal_left) --literal_left;
    todo.pop_front();
  };
  while (!todo.empty()) {
    const std::string comp = todo.front();
    if (comp == "." || comp == "..") {  // only from symlink targets
      if (comp == ".." && !done.empty()) done.pop_back();
      consume();
      continue;
    }
    std::string path = join_path(done, done.size());
    path += (path == "/" ? "" : "/") + comp;
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) break;
    if (S_ISDIR(st.st_mode)) {
      done.push_back(comp);
      consume();
      continue;
    }
    struct stat target {};
    if (!S_ISLNK(st.st_mode) || ++hops > k_max_symlink_hops || ::stat(path.c_str(), &target) != 0 ||
        !S_ISDIR(target.st_mode))
      break;
    std::array<char, 4096> buf{};
    ssize_t len = ::readlink(path.c_str(), buf.data(), buf.size() - 1);
    if (len <= 0) break;
    std::string_view link(buf.data(), static_cast<std::size_t>(len));
    consume();
    if (link.front() == '/') done.clear();
    auto link_parts = split_path(link);
    todo.insert(todo.begin(), link_parts.begin(), link_parts.end());
  }
  HostPath out;
  out.parts = std::move(done);
  out.parts.insert(out.parts.end(), todo.begin(), todo.end());
  out.literal = todo.size();
  return out;
}

std::string read_link(const std::string& path) {
  std::array<char, 4096> buf{};
  ssize_t len = ::readlink(path.c_str(), buf.data(), buf.size() - 1);
  return len > 0 ? std::string(buf.data(), static_cast<std::size_t>(len)) : std::string();
}

// ---- partial environments: same bytes on the host? ---------------------------------------------

using FileKey = std::tuple<dev_t, ino_t, off_t, std::int64_t, std::int64_t, dev_t, ino_t>;

std::int64_t ns_of(const struct timespec& t) {
  return static_cast<std::int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec;
}

std::mutex g_verdicts_mutex;
std::map<FileKey, bool> g_verdicts;  // (host file, image file) -> same bytes

Result<bool> same_bytes(const std::string& host, const struct stat& host_st,
                        const std::string& image, const struct stat& image_st) {
  FileKey key{host_st.st_dev,         host_st.st_ino,  host_st.st_size, ns_of(host_st.st_mtim),
              ns_of(host_st.st_ctim), image_st.st_dev, image_st.st_ino};
  {
    std::lock_guard lock(g_verdicts_mutex);
    if (auto it = g_verdicts.find(key); it != g_verdicts.end()) return it->second;
  }
  UniqueFd a(::open(host.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!a.valid()) return false;  // unreadable on the host: show the image's
  UniqueFd b(::open(image.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!b.valid()) return unexpected(Error::from_errno("open " + image, errno));
  std::vector<char> x(1 << 18), y(1 << 18);
  bool same = true;
  for (;;) {
    ssize_t n = ::read(a.get(), x.data(), x.size());
    if (n < 0) return unexpected(Error::from_errno("read " + host, errno));
    std::size_t got = 0;
    while (got < static_cast<std::size_t>(n)) {
      ssize_t m = ::read(b.get(), y.data() + got, static_cast<std::size_t>(n) - got);
      if (m < 0) return unexpected(Error::from_errno("read " + image, errno));
      if (m == 0) break;
      got += static_cast<std::size_t>(m);
    }
    if (got != static_cast<std::size_t>(n) || std::memcmp(x.data(), y.data(), got) != 0) {
      same = false;
      break;
    }
    if (n == 0) break;
  }
  std::lock_guard lock(g_verdicts_mutex);
  g_verdicts[key] = same;
  return same;
}

bool is_below(const std::string& path, const std::string& root) {
  return path.size() > root.size() && path.compare(0, root.size(), root) == 0 &&
         (root == "/" || path[root.size()] == '/');
}

class PartialWalk {
 public:
  PartialWalk(const std::filesystem::path& rootfs, const std::vector<std::string>& skip,
              std::vector<std::string>& out)
      : m_rootfs(rootfs.string()), m_skip(skip), m_out(out) {}

  // `path`: an image directory whose host counterpart is a directory too.
  Result<void> walk(const std::string& path) {
    const std::string image_dir = m_rootfs + path;
    DIR* dir = ::opendir(image_dir.c_str());
    if (dir == nullptr) return unexpected(Error::from_errno("open directory " + image_dir, errno));
    std::vector<std::string> names;
    while (const struct dirent* d = ::readdir(dir)) {
      std::string_view name = d->d_name;
      if (name != "." && name != "..") names.emplace_back(name);
    }
    ::closedir(dir);
    std::sort(names.begin(), names.end());
    for (const auto& name : names) {
      std::string child = (path == "/" ? "" : path) + "/" + name;
      if (std::find(m_skip.begin(), m_skip.end(), child) != m_skip.end()) continue;
      ENVD_TRY_VOID(compare(child));
    }
    return {};
  }

 private:
  Result<void> compare(const std::string& path) {
    const std::string image = m_rootfs + path;
    struct stat ist {
    }, hst{};
    if (::lstat(image.c_str(), &ist) != 0)
      return unexpected(Error::from_errno("stat " + image, errno));
    bool on_host = ::lstat(path.c_str(), &hst) == 0;
    if (S_ISDIR(ist.st_mode)) {
      // A host symlink to a directory is looked through: what differs below it is mounted at
      // the directory it leads to (see resolve_on_host).
      struct stat through {};
      if (on_host && ::stat(path.c_str(), &through) == 0 && S_ISDIR(through.st_mode))
        return walk(path);
      m_out.push_back(path);
    } else if (S_ISREG(ist.st_mode)) {
      if (!on_host || !S_ISREG(hst.st_mode) || hst.st_size != ist.st_size) {
        m_out.push_back(path);
      } else {
        ENVD_TRY(bool same, same_bytes(path, hst, image, ist));
        if (!same) m_out.push_back(path);
      }
    } else if (S_ISLNK(ist.st_mode)) {
      if (!on_host || !S_ISLNK(hst.st_mode) || read_link(path) != read_link(image))
        m_out.push_back(path);
    }
    return {};
  }

  std::string m_rootfs;
  const std::vector<std::string>& m_skip;
  std::vector<std::string>& m_out;
};

// ---- the mount tree ----------------------------------------------------------------------------

struct Node {
  enum class Kind { host, graft, image, image_symlink };
  Kind kind = Kind::host;
  std::string source;  // image: host path of the content; image_symlink: the link's target
  std::map<std::string, Node> children;
};

class TreeBuilder {
 public:
  explicit TreeBuilder(std::string rootfs) : m_rootfs(std::move(rootfs)) {
    m_root.kind = Node::Kind::graft;  // bwrap's own tmpfs root
  }

  // Shows the image's entry at `image_path` (absolute) in the sandbox.
  Result<void> place(const std::string& image_path) {
    const auto image_parts = split_path(image_path);
    if (image_parts.empty()) return unexpected(ErrorCode::invalid_argument, "cannot mount over /");
    HostPath host = resolve_on_host(image_parts);
    const std::size_t n = host.parts.size();
    // The image path (and so the rootfs source) of host.parts[0..k], valid in the literal tail.
    auto source_at = [&](std::size_t k) {
      return m_rootfs + join_path(image_parts, image_parts.size() + k + 1 - n);
    };
    Node* node = &m_root;
    for (std::size_t k = 0; k < n; ++k) {
      const std::string path = join_path(host.parts, k + 1);
      auto it = node->children.find(host.parts[k]);
      if (it != node->children.end() &&
          (it->second.kind == Node::Kind::image || it->second.kind == Node::Kind::image_symlink))
        return {};  // already shown from the image
      struct stat st {};
      const bool exists = ::lstat(path.c_str(), &st) == 0;
      const bool last = k + 1 == n;
      if (exists && !last && S_ISDIR(st.st_mode)) {
        node = &node->children[host.parts[k]];
        continue;
      }
      if (!last && k + host.literal < n)  // (the whole path is always the image path itself)
        return unexpected(ErrorCode::internal, "resolving " + image_path + " on the host");
      const std::string source = source_at(k);
      struct stat ist {};
      if (::lstat(source.c_str(), &ist) != 0)
        return unexpected(Error::from_errno("stat " + source, errno));
      if (exists && last) {
        if (S_ISLNK(ist.st_mode) && S_ISLNK(st.st_mode) && read_link(source) == read_link(path))
          return {};
        if ((S_ISDIR(ist.st_mode) && S_ISDIR(st.st_mode)) ||
            (S_ISREG(ist.st_mode) && S_ISREG(st.st_mode))) {
          Node& over = node->children[host.parts[k]];  // mounted over the host's entry
          over = Node{Node::Kind::image, source, {}};
          return {};
        }
      }
      // Missing on the host, or another kind of entry there: needs a mount point on a tmpfs.
      if (node->kind == Node::Kind::host) node->kind = Node::Kind::graft;
      if (node == &m_root) m_root_needs_tmpfs = true;
      Node& child = node->children[host.parts[k]];
      if (S_ISLNK(ist.st_mode))
        child = Node{Node::Kind::image_symlink, read_link(source), {}};
      else
        child = Node{Node::Kind::image, source, {}};
      return {};
    }
    return {};
  }

  // The host's root is shown by one recursive bind of / when nothing has to be created at the
  // top level (neither an image entry the host lacks nor the mirror root of a big graft): ~25
  // fewer binds than putting each top-level entry back on bwrap's tmpfs root, which costs a few
  // ms per launch. Both keep /dev the only mount without nodev.
  Result<MountPlan> emit() {
    if (!m_root_needs_tmpfs) {
      MountPlan plan;
      add(plan, {"--bind", "/", "/", "--dev-bind", "/dev", "/dev"});
      plan.mounts += 2;
      m_mirrored = false;
      for (const auto& [name, child] : m_root.children)
        ENVD_TRY_VOID(emit_node(child, "/" + name, false, plan));
      if (!m_mirrored) return plan;
    }
    MountPlan plan;
    ENVD_TRY_VOID(emit_node(m_root, "", false, plan));
    return plan;
  }

 private:
  static void add(MountPlan& plan, std::initializer_list<std::string> args) {
    plan.args.insert(plan.args.end(), args);
  }

  // A host entry put back under a graft as it is.
  static void emit_host_entry(const std::string& path, MountPlan& plan) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) return;  // gone meanwhile
    if (S_ISLNK(st.st_mode)) {
      add(plan, {"--symlink", read_link(path), path});
      ++plan.symlinks;
      return;
    }
    add(plan, {path == "/dev" ? "--dev-bind" : "--bind", path, path});
    ++plan.mounts;
  }

  Result<void> emit_node(const Node& node, const std::string& path, bool under_graft,
                         MountPlan& plan) {
    switch (node.kind) {
      case Node::Kind::image:
        add(plan, {"--ro-bind", node.source, path});
        plan.image_mounts.emplace_back(path, node.source);
        ++plan.mounts;
        return {};
      case Node::Kind::image_symlink:
        add(plan, {"--symlink", node.source, path});
        ++plan.symlinks;
        return {};
      case Node::Kind::host:
        if (under_graft) emit_host_entry(path, plan);
        for (const auto& [name, child] : node.children)
          ENVD_TRY_VOID(emit_node(child, path + "/" + name, false, plan));
        return {};
      case Node::Kind::graft:
        return emit_graft(node, path, plan);
    }
    return {};
  }

  Result<void> emit_graft(const Node& node, const std::string& path, MountPlan& plan) {
    const std::string dir = path.empty() ? "/" : path;
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0) return unexpected(Error::from_errno("stat " + dir, errno));
    if (!path.empty()) {
      char perms[8];
      std::snprintf(perms, sizeof perms, "%04o", static_cast<unsigned>(st.st_mode & 07777));
      add(plan, {"--perms", perms, "--tmpfs", path});
      ++plan.mounts;
    }
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return unexpected(Error::from_errno("open directory " + dir, errno));
    std::map<std::string, bool> host_entries;  // name -> is a symlink
    while (const struct dirent* e = ::readdir(d)) {
      std::string_view name = e->d_name;
      if (name == "." || name == ".." || (path.empty() && name == k_mirror_root.substr(1)))
        continue;
      bool link = e->d_type == DT_LNK;
      if (e->d_type == DT_UNKNOWN) {
        struct stat est {};
        link = ::fstatat(::dirfd(d), e->d_name, &est, AT_SYMLINK_NOFOLLOW) == 0 &&
               S_ISLNK(est.st_mode);
      }
      host_entries.emplace(std::string(name), link);
    }
    ::closedir(d);
    std::size_t binds = 0;
    for (const auto& [name, link] : host_entries)
      if (!link && !node.children.contains(name)) ++binds;
    const bool mirror = !path.empty() && binds > k_max_graft_binds;
    const std::string mirror_dir = std::string(k_mirror_root) + path;
    if (mirror) {
      m_mirrored = true;
      add(plan, {"--bind", dir, mirror_dir});
      ++plan.mounts;
    }
    std::map<std::string, const Node*> names;
    for (const auto& [name, link] : host_entries) names.emplace(name, nullptr);
    for (const auto& [name, child] : node.children) names[name] = &child;
    for (const auto& [name, child] : names) {
      const std::string child_path = path + "/" + name;
      if (child != nullptr) {
        ENVD_TRY_VOID(emit_node(*child, child_path, true, plan));
      } else if (mirror && !host_entries[name]) {
        add(plan, {"--symlink", mirror_dir + "/" + name, child_path});
        ++plan.symlinks;
      } else {
        emit_host_entry(child_path, plan);
      }
    }
    return {};
  }

  std::string m_rootfs;
  Node m_root;
  bool m_root_needs_tmpfs = false;  // an image entry goes where the host's / has nothing
  bool m_mirrored = false;          // emit used the mirror root (/.envd-host)
};

}  // namespace

Result<std::vector<std::string>> partial_differences(const std::filesystem::path& rootfs,
                                                     const std::string& prefix,
                                                     const std::vector<std::string>& skip) {
  std::vector<std::string> out;
  struct stat st {};
  if (::stat(prefix.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return std::vector{prefix};
  PartialWalk walk(rootfs, skip, out);
  ENVD_TRY_VOID(walk.walk(prefix));
  return out;
}

Result<MountPlan> plan_host_mounts(const std::filesystem::path& rootfs, const ImageRoots& roots) {
  std::vector<std::string> all;
  for (const auto& e : roots.environments) all.push_back(e.prefix);
  all.insert(all.end(), roots.sources.begin(), roots.sources.end());
  auto roots_below = [&](const std::string& root) {
    std::vector<std::string> below;
    for (const auto& r : all)
      if (is_below(r, root)) below.push_back(r);
    return below;
  };

  std::vector<std::string> notes;
  std::vector<std::string> places;
  auto add_root = [&](const std::string& root, bool partial) -> Result<void> {
    struct stat st {};
    if (::lstat((rootfs.string() + root).c_str(), &st) != 0) {
      notes.push_back("image has nothing at " + root + "; left as on the host");
      return {};
    }
    if (!partial) {
      places.push_back(root);
      return {};
    }
    auto skip = roots_below(root);
    skip.push_back("/" + std::string(k_snapshot_in_image.substr(0, k_snapshot_in_image.find('/'))));
    ENVD_TRY(auto diffs, partial_differences(rootfs, root, skip));
    log::debug("sandbox", "partial environment compared with the host",
               {{"prefix", root}, {"from_image", std::to_string(diffs.size())}});
    places.insert(places.end(), diffs.begin(), diffs.end());
    return {};
  };
  for (const auto& e : roots.environments) ENVD_TRY_VOID(add_root(e.prefix, e.partial));
  for (const auto& s : roots.sources) ENVD_TRY_VOID(add_root(s, false));
  std::sort(places.begin(), places.end());
  places.erase(std::unique(places.begin(), places.end()), places.end());

  TreeBuilder tree(rootfs.string());
  for (const auto& p : places) ENVD_TRY_VOID(tree.place(p));
  ENVD_TRY(auto plan, tree.emit());
  plan.notes = std::move(notes);
  return plan;
}

std::string host_path_of(const MountPlan& plan, const std::string& sandbox_path) {
  const std::pair<std::string, std::string>* best = nullptr;
  for (const auto& m : plan.image_mounts) {
    if ((sandbox_path == m.first || is_below(sandbox_path, m.first)) &&
        (best == nullptr || m.first.size() > best->first.size()))
      best = &m;
  }
  if (best == nullptr) return sandbox_path;
  return best->second + sandbox_path.substr(best->first.size());
}

}  // namespace envd::node::detail
