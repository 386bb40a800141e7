#include "agent/watch_scope.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <set>
#include <utility>

#include "envd/util/unique_fd.hpp"

namespace envd::agent::watch_scope {

namespace fs = std::filesystem;

std::string join(const std::string& dir, std::string_view name) {
  if (dir.empty()) return std::string(name);
  return dir + "/" + std::string(name);
}

std::optional<std::string> read_small_file(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd.valid()) return std::nullopt;
  std::string out;
  char buf[8192];
  ssize_t n = 0;
  while ((n = ::read(fd.get(), buf, sizeof buf)) > 0 && out.size() < (1U << 20)) {
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

bool is_metadata_name(std::string_view name) {
  for (std::string_view suffix : {".dist-info", ".egg-info", ".pth", ".egg-link", ".egg"}) {
    if (name.ends_with(suffix)) return true;
  }
  return false;
}

bool is_rule_file(std::string_view name) {
  return name == ".gitignore" || name == ".envdignore";
}

std::vector<Entry> list_dir(const std::string& abs) {
  std::vector<Entry> out;
  DIR* d = ::opendir(abs.c_str());
  if (d == nullptr) return out;
  while (const dirent* e = ::readdir(d)) {
    std::string_view name = e->d_name;
    if (name == "." || name == "..") continue;
    bool dir = e->d_type == DT_DIR;
    if (e->d_type == DT_UNKNOWN) {
      struct stat st {};
      dir = ::lstat(join(abs, name).c_str(), &st) == 0 && S_ISDIR(st.st_mode);
    }
    out.push_back({std::string(name), dir});
  }
  ::closedir(d);
  return out;
}

std::vector<std::string> site_packages_of(const std::string& prefix) {
  std::vector<std::string> out;
  std::set<std::pair<dev_t, ino_t>> seen;
  for (const char* lib : {"lib", "lib64"}) {
    const std::string lib_dir = join(prefix, lib);
    for (const Entry& py : list_dir(lib_dir)) {
      if (!py.name.starts_with("python")) continue;
      for (const char* leaf : {"site-packages", "dist-packages"}) {
        const std::string dir = join(join(lib_dir, py.name), leaf);
        struct stat st {};
        if (::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode) &&
            seen.emplace(st.st_dev, st.st_ino).second) {
          out.push_back(dir);
        }
      }
    }
  }
  return out;
}

void find_git(Tree& t) {
  fs::path dir = t.root;
  std::string prefix;
  for (;;) {
    struct stat st {};
    const fs::path dot_git = dir / ".git";
    if (::lstat(dot_git.c_str(), &st) == 0) {
      t.in_git = true;
      t.git_prefix = prefix;
      fs::path git_dir = dot_git;
      if (S_ISREG(st.st_mode)) {  // a gitfile: "gitdir: PATH" (worktrees, submodules)
        auto text = read_small_file(dot_git.string()).value_or("");
        if (text.starts_with("gitdir: ")) {
          fs::path target = text.substr(8, text.find_first_of("\r\n") - 8);
          git_dir = target.is_absolute() ? target : dir / target;
        }
      }
      std::string base;
      const char* xdg = std::getenv("XDG_CONFIG_HOME");
      const char* home = std::getenv("HOME");
      const fs::path global = xdg != nullptr && *xdg != '\0' ? fs::path(xdg) / "git/ignore"
                              : home != nullptr              ? fs::path(home) / ".config/git/ignore"
                                                             : fs::path();
      if (!global.empty()) base += read_small_file(global.string()).value_or("") + "\n";
      base += read_small_file((git_dir / "info/exclude").string()).value_or("");
      t.git_base_rules = std::move(base);
      // .gitignore files from the work tree's top down to the root's parent.
      fs::path walk = dir;
      std::string rel;
      for (;;) {
        if (auto text = read_small_file((walk / ".gitignore").string())) {
          t.gitignores[rel] = std::move(*text);
        }
        if (rel == prefix) break;
        const std::size_t next = prefix.find('/', rel.size());
        rel = prefix.substr(0, next + 1);
        walk = dir / rel;
      }
      t.gitignores.erase(prefix);  // the root's own is loaded by the walk
      return;
    }
    if (!dir.has_relative_path()) return;
    prefix = dir.filename().string() + "/" + prefix;
    dir = dir.parent_path();
  }
}

void rules_for(const Tree& t, const std::optional<std::string>& dir_rel, IgnoreRules& git,
               IgnoreRules& envd) {
  if (!t.extra_rules.empty()) envd.push("", t.extra_rules, "config");
  if (t.in_git && !t.git_base_rules.empty()) git.push("", t.git_base_rules, ".gitignore");
  std::vector<std::string> chain;  // root-relative directories from the root down
  if (dir_rel) {
    const std::string& rel = *dir_rel;
    chain.push_back("");
    for (std::size_t slash = rel.find('/'); slash != std::string::npos;
         slash = rel.find('/', slash + 1)) {
      chain.push_back(rel.substr(0, slash));
    }
    if (!rel.empty()) chain.push_back(rel);
  }
  if (t.in_git) {
    // .gitignore files above the root (within the work tree) apply too.
    for (const auto& [dir, text] : t.gitignores) {
      if (dir.size() < t.git_prefix.size() && t.git_prefix.starts_with(dir)) {
        git.push(dir, text, ".gitignore");
      }
    }
  }
  for (const std::string& dir : chain) {
    if (t.in_git) {
      std::string git_dir = t.git_prefix + dir;
      if (!dir.empty()) git_dir += '/';
      if (auto it = t.gitignores.find(git_dir); it != t.gitignores.end())
        git.push(git_dir, it->second, ".gitignore");
    }
    if (auto it = t.envdignores.find(dir); it != t.envdignores.end())
      envd.push(dir, it->second, ".envdignore");
  }
}

bool ignored(const Tree& t, const IgnoreRules& git, const IgnoreRules& envd, const std::string& rel,
             bool dir) {
  if (dir ? t.listed_dirs.contains(rel) : t.listed.contains(rel)) return false;
  const EntryKind kind = dir ? EntryKind::directory : EntryKind::file;
  if (envd.match(rel, kind)) return true;
  return t.in_git && git.match(t.git_prefix + rel, kind).has_value();
}

void load_rules(Tree& t, const std::string& rel) {
  const std::string abs = join(t.root, rel);
  std::string git_dir = t.git_prefix + rel;
  if (!rel.empty()) git_dir += '/';
  if (auto text = read_small_file(join(abs, ".gitignore"))) {
    t.gitignores[git_dir] = std::move(*text);
  } else {
    t.gitignores.erase(git_dir);
  }
  if (auto text = read_small_file(join(abs, ".envdignore"))) {
    t.envdignores[rel] = std::move(*text);
  } else {
    t.envdignores.erase(rel);
  }
}

}  // namespace envd::agent::watch_scope
