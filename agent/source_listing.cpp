// Lists a source tree for a snapshot: one directory walk that asks libgit2 (index plus one status
// run) what git tracks and ignores, and applies .envdignore and config patterns everywhere.
#include "agent/source_listing.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <git2.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <memory>
#include <unordered_set>
#include <utility>

#include "agent/ignore_pattern.hpp"

namespace envd::agent {
namespace {

constexpr std::string_view k_envdignore = ".envdignore";
constexpr std::string_view k_origin_git = ".gitignore";
constexpr std::string_view k_origin_envd = ".envdignore";
constexpr std::string_view k_origin_config = "config";
constexpr std::string_view k_origin_special = "special";
constexpr std::size_t k_max_ignore_file = 1 << 20;

void init_libgit2() {
  // One init per process before any libgit2 call; a function-local static makes the first caller
  // do it thread-safely. Never shut down: another thread may still be using libgit2.
  static const int k_init = git_libgit2_init();
  (void)k_init;
}

template <class T, void (*Free)(T*)>
struct GitDeleter {
  void operator()(T* p) const { Free(p); }
};
using RepoPtr = std::unique_ptr<git_repository, GitDeleter<git_repository, git_repository_free>>;
using IndexPtr = std::unique_ptr<git_index, GitDeleter<git_index, git_index_free>>;
using StatusPtr =
    std::unique_ptr<git_status_list, GitDeleter<git_status_list, git_status_list_free>>;

std::string git_message() {
  const git_error* e = git_error_last();
  return e != nullptr && e->message != nullptr ? e->message : "unknown libgit2 error";
}

// Length of the well-formed UTF-8 sequence starting at s[i], or 0 (RFC 3629 table 3-7: no
// overlong forms, no surrogates, nothing above U+10FFFF).
std::size_t utf8_sequence(std::string_view s, std::size_t i) {
  const auto at = [&](std::size_t k) -> unsigned {
    return k < s.size() ? static_cast<unsigned char>(s[k]) : 0u;
  };
  const auto cont = [&](std::size_t k) { return (at(k) & 0xC0u) == 0x80u; };
  const unsigned c = at(i);
  const unsigned c1 = at(i + 1);
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return cont(i + 1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 > 0x9F)) return 0;
    return cont(i + 1) && cont(i + 2) ? 3 : 0;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if ((c == 0xF0 && c1 < 0x90) || (c == 0xF4 && c1 > 0x8F)) return 0;
    return cont(i + 1) && cont(i + 2) && cont(i + 3) ? 4 : 0;
  }
  return 0;
}

bool is_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8_sequence(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

// The path with each byte that is not part of valid UTF-8 written as \xNN, so that a warning
// about an unencodable name can itself be logged and put in JSON.
std::string escape_path(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8_sequence(s, i);
    if (n != 0) {
      out.append(s.substr(i, n));
      i += n;
      continue;
    }
    char buf[8];
    std::snprintf(buf, sizeof buf, "\\x%02X", static_cast<unsigned char>(s[i]));
    out += buf;
    ++i;
  }
  return out;
}

std::string join_path(const std::string& dir, std::string_view name) {
  std::string out = dir;
  if (out.empty() || out.back() != '/') out += '/';
  out += name;
  return out;
}

struct DirEntry {
  std::string name;
  unsigned char type = DT_UNKNOWN;  // DT_REG, DT_DIR, DT_LNK, ...
};

// The root may be a symlink the user chose; below it, a directory was one when its parent was
// read, and a symlink that has replaced it since must not be followed out of the tree.
enum class FinalSymlink { follow, refuse };

// Reads one directory, sorted by name.
Result<std::vector<DirEntry>> read_directory(const std::string& path, FinalSymlink symlink) {
  const int flags =
      O_RDONLY | O_DIRECTORY | O_CLOEXEC | (symlink == FinalSymlink::refuse ? O_NOFOLLOW : 0);
  const int fd = ::open(path.c_str(), flags);
  if (fd < 0) return Error::from_errno("open directory " + escape_path(path), errno);
  DIR* dir = ::fdopendir(fd);
  if (dir == nullptr) {
    const int err = errno;
    ::close(fd);
    return Error::from_errno("open directory " + escape_path(path), err);
  }
  std::vector<DirEntry> entries;
  int err = 0;
  for (;;) {
    errno = 0;
    const dirent* de = ::readdir(dir);
    if (de == nullptr) {
      err = errno;
      break;
    }
    const std::string_view name = de->d_name;
    if (name == "." || name == "..") continue;
    unsigned char type = de->d_type;
    if (type == DT_UNKNOWN) {  // some file systems do not fill d_type
      struct stat st {};
      if (::fstatat(::dirfd(dir), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // gone
      type = IFTODT(st.st_mode);
    }
    entries.push_back({std::string(name), type});
  }
  ::closedir(dir);
  if (err != 0) return Error::from_errno("read directory " + escape_path(path), err);
  std::sort(entries.begin(), entries.end(),
            [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
  return entries;
}

Result<std::string> read_ignore_file(const std::string& path) {
  // O_NONBLOCK: should a FIFO have replaced the file since the directory was read, opening it
  // must not wait for a writer.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return Error::from_errno("open " + escape_path(path), errno);
  std::string text;
  char buf[8192];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return Error::from_errno("read " + escape_path(path), err);
    }
    if (n == 0 || text.size() >= k_max_ignore_file) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return text;
}

std::string_view special_kind(unsigned char type) {
  switch (type) {
    case DT_FIFO:
      return "FIFO";
    case DT_SOCK:
      return "socket";
    case DT_CHR:
      return "character device";
    case DT_BLK:
      return "block device";
    default:
      return "special file";
  }
}

// What one repository says about the listed tree: its index, and one status run (untracked,
// ignored, changed). Paths are relative to that repository's work tree.
struct GitView {
  RepoPtr repo;
  std::unordered_set<std::string> tracked;     // index entries other than submodules
  std::unordered_set<std::string> submodules;  // gitlinks (mode 160000)
  std::unordered_set<std::string> untracked;   // not ignored; nested repositories end in '/'
  std::unordered_set<std::string> ignored;     // whole ignored directories end in '/'
  std::unordered_set<std::string> parents;     // "a/", "a/b/": directories holding any of those
  bool dirty = false;

  void add_parents(std::string_view path) {
    // Deepest first: once a directory is known, so are all above it.
    for (std::size_t slash = path.rfind('/', path.size() - 2); slash != std::string_view::npos;
         slash = slash == 0 ? std::string_view::npos : path.rfind('/', slash - 1)) {
      if (!parents.emplace(path.substr(0, slash + 1)).second) break;
    }
  }
};

// `prefix` ("" or "dir/") limits the view to one directory of the work tree. Reads .git, writes
// nothing: no GIT_STATUS_OPT_UPDATE_INDEX, so a stale index is never rewritten.
Result<GitView> load_git_view(RepoPtr repo, const std::string& prefix) {
  GitView view;
  view.repo = std::move(repo);
  git_index* raw_index = nullptr;
  if (git_repository_index(&raw_index, view.repo.get()) != 0) {
    return Error(ErrorCode::io, "read git index: " + git_message());
  }
  const IndexPtr index(raw_index);
  // The index is sorted by path, so the entries below `prefix` are one run.
  std::size_t pos = 0;
  if (git_index_find_prefix(&pos, index.get(), prefix.c_str()) == 0) {
    const std::size_t count = git_index_entrycount(index.get());
    for (; pos < count; ++pos) {
      const git_index_entry* entry = git_index_get_byindex(index.get(), pos);
      const std::string_view path = entry->path;
      if (!path.starts_with(prefix)) break;
      (entry->mode == GIT_FILEMODE_COMMIT ? view.submodules : view.tracked).emplace(path);
      view.add_parents(path);
    }
  }

  git_status_options options;
  git_status_options_init(&options, GIT_STATUS_OPTIONS_VERSION);
  options.show = GIT_STATUS_SHOW_INDEX_AND_WORKDIR;
  // Ignored directories come back as one "dir/" entry, unvisited: counting them costs nothing.
  options.flags = GIT_STATUS_OPT_INCLUDE_UNTRACKED | GIT_STATUS_OPT_RECURSE_UNTRACKED_DIRS |
                  GIT_STATUS_OPT_INCLUDE_IGNORED | GIT_STATUS_OPT_DISABLE_PATHSPEC_MATCH;
  std::string pathspec = prefix;
  char* pathspec_ptr = pathspec.data();
  if (!prefix.empty()) options.pathspec = {&pathspec_ptr, 1};
  git_status_list* raw_list = nullptr;
  if (git_status_list_new(&raw_list, view.repo.get(), &options) != 0) {
    return Error(ErrorCode::io, "git status: " + git_message());
  }
  const StatusPtr list(raw_list);
  const std::size_t count = git_status_list_entrycount(list.get());
  for (std::size_t i = 0; i < count; ++i) {
    const git_status_entry* entry = git_status_byindex(list.get(), i);
    const git_diff_delta* delta =
        entry->index_to_workdir != nullptr ? entry->index_to_workdir : entry->head_to_index;
    if (delta == nullptr) continue;
    const char* path =
        delta->new_file.path != nullptr ? delta->new_file.path : delta->old_file.path;
    view.add_parents(path);
    if (entry->status == GIT_STATUS_IGNORED) {
      view.ignored.emplace(path);
      continue;
    }
    view.dirty = true;
    if ((entry->status & GIT_STATUS_WT_NEW) != 0) view.untracked.emplace(path);
  }
  return view;
}

Result<std::optional<std::string>> head_commit(git_repository* repo) {
  git_oid oid;
  const int rc = git_reference_name_to_id(&oid, repo, "HEAD");
  if (rc == GIT_ENOTFOUND || rc == GIT_EUNBORNBRANCH) return std::optional<std::string>();
  if (rc != 0) return Error(ErrorCode::io, "resolve HEAD: " + git_message());
  char hex[GIT_OID_HEXSZ + 1];
  git_oid_tostr(hex, sizeof hex, &oid);
  return std::optional<std::string>(hex);
}

// The repository whose work tree holds `root`, found as `git` run there would (searching up),
// and root's directory in it ("" or "dir/"). No repository when there is none, it is bare, or
// root lies inside a .git directory: then the tree is listed without git.
struct GitRoot {
  RepoPtr repo;
  std::string prefix;
};

Result<GitRoot> find_git_root(const std::string& root) {
  init_libgit2();
  git_repository* raw = nullptr;
  const int rc = git_repository_open_ext(&raw, root.c_str(), 0, nullptr);
  if (rc == GIT_ENOTFOUND) return GitRoot{};
  if (rc != 0) {
    // GIT_EOWNER: git's safe.directory check; the user must decide, as with git itself.
    return Error(rc == GIT_EOWNER ? ErrorCode::failed_precondition : ErrorCode::io,
                 "open git repository: " + git_message());
  }
  RepoPtr repo(raw);
  const char* workdir = git_repository_workdir(repo.get());
  if (workdir == nullptr) return GitRoot{};
  std::error_code ec;
  const std::string real_root = std::filesystem::canonical(root, ec).string();
  if (ec) return Error(ErrorCode::io, "resolve " + root + ": " + ec.message());
  std::string real_workdir = std::filesystem::canonical(workdir, ec).string();
  if (ec) return Error(ErrorCode::io, "resolve " + std::string(workdir) + ": " + ec.message());
  if (!real_workdir.ends_with('/')) real_workdir += '/';
  GitRoot found;
  if (real_root + "/" != real_workdir) {
    if (!real_root.starts_with(real_workdir)) return GitRoot{};
    found.prefix = real_root.substr(real_workdir.size()) + "/";
    if (found.prefix.starts_with(".git/")) return GitRoot{};
  }
  found.repo = std::move(repo);
  return found;
}

// Lists one tree. The walk itself enumerates (so it sees what git skips silently: FIFOs,
// unreadable directories, undecodable names); git only decides what is tracked or ignored.
class Walker {
 public:
  Walker(std::string root, const SourceOptions& options, Diagnostics& diagnostics,
         SourceListing& out)
      : m_root(std::move(root)), m_options(options), m_diagnostics(diagnostics), m_out(out) {}

  IgnoreRules& rules() { return m_rules; }

  // `rel` is the root-relative directory ("" or "a/b/"); `git_rel` the same directory relative
  // to the work tree of `git` (null outside git). Fails only when there are too many files, or
  // when the root itself cannot be read.
  Result<void> walk(const std::string& abs, const std::string& rel, GitView* git,
                    const std::string& git_rel) {
    auto entries = read_directory(abs, rel.empty() ? FinalSymlink::follow : FinalSymlink::refuse);
    if (!entries) {
      if (rel.empty()) return entries.error();
      m_diagnostics.warn(escape_path(abs), entries.error().message() + "; directory skipped");
      return {};
    }
    const bool pushed = push_envdignore(abs, rel, *entries);
    Result<void> result = walk_entries(abs, rel, git, git_rel, *entries);
    if (pushed) m_rules.pop();
    return result;
  }

 private:
  bool push_envdignore(const std::string& abs, const std::string& rel,
                       const std::vector<DirEntry>& entries) {
    const auto it = std::find_if(entries.begin(), entries.end(), [](const DirEntry& e) {
      return e.name == k_envdignore && e.type == DT_REG;
    });
    if (it == entries.end()) return false;
    const std::string path = join_path(abs, k_envdignore);
    auto text = read_ignore_file(path);
    if (!text) {
      m_diagnostics.warn(escape_path(path), text.error().message() + "; its patterns not applied");
      return false;
    }
    m_rules.push(rel, *text, std::string(k_origin_envd));
    return true;
  }

  Result<void> walk_entries(const std::string& abs, const std::string& rel, GitView* git,
                            const std::string& git_rel, const std::vector<DirEntry>& entries) {
    for (const DirEntry& entry : entries) {
      if (entry.name == ".git") continue;  // git's data, or a nested repository's link to it
      const std::string rel_path = rel + entry.name;
      const std::string abs_path = join_path(abs, entry.name);
      const bool is_dir = entry.type == DT_DIR;
      const std::string git_path = git != nullptr ? git_rel + entry.name : std::string();
      if (git != nullptr && git->ignored.contains(is_dir ? git_path + "/" : git_path)) {
        count(k_origin_git);
        continue;
      }
      if (auto origin = m_rules.match(rel_path, is_dir ? EntryKind::directory : EntryKind::file)) {
        count(*origin);
        continue;
      }
      if (!is_utf8(entry.name)) {
        // The snapshot is JSON, which holds only Unicode text.
        m_diagnostics.warn(escape_path(abs_path), "name is not valid UTF-8; skipped");
        count(k_origin_special);
        continue;
      }
      if (is_dir) {
        ENVD_TRY_VOID(walk_directory(abs_path, rel_path, git, git_path));
      } else if (entry.type == DT_REG || entry.type == DT_LNK) {
        if (git != nullptr && !git->tracked.contains(git_path) &&
            !git->untracked.contains(git_path)) {
          // Neither tracked nor untracked: ignored inside an ignored directory that also holds
          // tracked files (libgit2's status leaves those out), or created after the status run.
          if (ignored_by_git(*git, git_path)) {
            count(k_origin_git);
          } else {
            m_diagnostics.warn(escape_path(abs_path),
                               "not seen by git status (created during the scan?); skipped");
          }
          continue;
        }
        if (m_out.paths.size() >= m_options.max_files) return too_many_files();
        m_out.paths.push_back(rel_path);
      } else {
        // FIFOs, sockets and devices have no content to capture (reading a FIFO blocks). git
        // never lists them, so ask it whether this one was meant to be ignored anyway.
        if (git != nullptr && ignored_by_git(*git, git_path)) {
          count(k_origin_git);
          continue;
        }
        m_diagnostics.warn(escape_path(abs_path), std::string(special_kind(entry.type)) +
                                                      " is not a regular file or symlink; skipped");
        count(k_origin_special);
      }
    }
    return {};
  }

  Result<void> walk_directory(const std::string& abs, const std::string& rel_path, GitView* git,
                              const std::string& git_path) {
    const std::string rel = rel_path + "/";
    if (git == nullptr) return walk(abs, rel, nullptr, {});
    const std::string git_rel = git_path + "/";
    if (!git->submodules.contains(git_path) && !git->untracked.contains(git_rel)) {
      // Status reported nothing below this directory. If git ignores it (inside an ignored
      // directory that also holds tracked files, which libgit2's status does not break down),
      // count it once rather than asking about each file below.
      if (!git->parents.contains(git_rel) && ignored_by_git(*git, git_path)) {
        count(k_origin_git);
        return {};
      }
      return walk(abs, rel, git, git_rel);
    }
    // A submodule or a repository inside the work tree: the outer repository sees only its
    // link, so its files are listed with its own index and ignore rules.
    git_repository* raw = nullptr;
    if (git_repository_open_ext(&raw, abs.c_str(), GIT_REPOSITORY_OPEN_NO_SEARCH, nullptr) != 0) {
      return walk(abs, rel, nullptr, {});  // e.g. a submodule not checked out: an empty dir
    }
    auto nested = load_git_view(RepoPtr(raw), {});
    if (!nested) {
      m_diagnostics.warn(escape_path(abs), "nested repository: " + nested.error().message() +
                                               "; listed without git's rules");
      return walk(abs, rel, nullptr, {});
    }
    return walk(abs, rel, &*nested, {});
  }

  // Asks git's ignore rules (with parent directories) about one path the status run did not
  // report; a few calls per tree at most, so the per-call cost does not matter.
  static bool ignored_by_git(const GitView& git, const std::string& git_path) {
    int ignored = 0;
    return git_ignore_path_is_ignored(&ignored, git.repo.get(), git_path.c_str()) == 0 &&
           ignored != 0;
  }

  void count(std::string_view origin) { ++m_out.ignored[std::string(origin)]; }

  Error too_many_files() const {
    return Error(ErrorCode::failed_precondition,
                 "more than " + std::to_string(m_options.max_files) +
                     " files to capture; exclude generated or data directories with patterns in " +
                     escape_path(m_root) + "/.envdignore (gitignore syntax), or raise the limit");
  }

  std::string m_root;
  const SourceOptions& m_options;
  Diagnostics& m_diagnostics;
  SourceListing& m_out;
  IgnoreRules m_rules;
};

}  // namespace

Result<SourceListing> list_source_tree(const std::filesystem::path& root,
                                       const SourceOptions& options, Diagnostics& diagnostics) {
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(root, ec);
  if (ec) {
    return Error(ErrorCode::invalid_argument,
                 "source root " + escape_path(root.string()) + ": " + ec.message());
  }
  abs = abs.lexically_normal();
  if (!abs.has_filename() && abs.has_relative_path()) abs = abs.parent_path();  // drop a final '/'
  const std::string root_str = abs.string();
  const std::string context = "list source tree " + escape_path(root_str);

  struct stat st {};
  if (::stat(root_str.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) return Error(ErrorCode::not_found, context + ": no such directory");
    return Error::from_errno(context, err);
  }
  if (!S_ISDIR(st.st_mode)) {
    return Error(ErrorCode::invalid_argument, context + ": not a directory");
  }

  SourceListing out;
  out.root = abs;
  Walker walker(root_str, options, diagnostics, out);
  if (!options.extra_ignores.empty()) {
    std::string text;
    for (const std::string& pattern : options.extra_ignores) text += pattern + "\n";
    walker.rules().push("", text, std::string(k_origin_config));
  }

  auto git_root = find_git_root(root_str);
  if (!git_root) return git_root.error().with_context(context);
  Result<void> walked;
  if (git_root->repo == nullptr) {
    walked = walker.walk(root_str, "", nullptr, {});
  } else {
    git_repository* repo = git_root->repo.get();
    auto view = load_git_view(std::move(git_root->repo), git_root->prefix);
    if (!view) return view.error().with_context(context);
    const bool root_ignored =
        std::any_of(view->ignored.begin(), view->ignored.end(), [&](const std::string& path) {
          return path.ends_with('/') && git_root->prefix.starts_with(path);
        });
    if (root_ignored) {
      // Everything below is ignored by git, yet the user chose this directory as the source:
      // list it as a plain tree rather than as nothing.
      diagnostics.warn(escape_path(root_str),
                       "the source root is ignored by git; listed without git's rules");
      walked = walker.walk(root_str, "", nullptr, {});
    } else {
      auto commit = head_commit(repo);
      if (!commit) return commit.error().with_context(context);
      out.git_commit = std::move(*commit);
      out.dirty = view->dirty;
      walked = walker.walk(root_str, "", &*view, git_root->prefix);
    }
  }
  if (!walked) return walked.error().with_context(context);
  std::sort(out.paths.begin(), out.paths.end());
  return out;
}

}  // namespace envd::agent
