// Lists a source tree: git-aware inside a work tree (tracked plus untracked-not-ignored files),
// a plain directory walk otherwise; .envdignore (gitignore syntax) applies in both. Also the
// secret deny-list that blocks a snapshot containing credentials.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/diagnostics.hpp"
#include "envd/util/error.hpp"

namespace envd::agent {

struct SourceListing {
  std::filesystem::path root;             // absolute, lexically normalised (symlinks kept)
  std::optional<std::string> git_commit;  // HEAD commit hex; none outside git / unborn HEAD
  // Modified, staged, deleted or untracked files vs HEAD, below root only (git status there).
  bool dirty = false;
  // Entries left out, by the rule that left them out: ".gitignore" (any git ignore source:
  // .gitignore files, .git/info/exclude, core.excludesFile), ".envdignore", "config"
  // (SourceOptions::extra_ignores) and "special" (FIFOs, sockets, devices, names that are not
  // UTF-8). An ignored directory counts once, however much it holds. Origins with no entries
  // are absent.
  std::map<std::string, std::uint64_t> ignored;
  // Root-relative '/'-separated paths of regular files and symlinks to capture, sorted bytewise.
  // In a git work tree: tracked files still present plus untracked files git does not ignore;
  // submodules and repositories nested in the tree are listed the same way with their own
  // rules. Symlinks are listed, never followed (a symlink to a directory is one entry). ".git"
  // is never listed. FIFOs, sockets, devices, names that are not valid UTF-8 (the snapshot is
  // JSON) and unreadable directories are skipped with a warning naming them.
  std::vector<std::string> paths;
};

struct SourceOptions {
  std::uint64_t max_files = 200000;  // more than this: failed_precondition naming the limit
  // gitignore-syntax patterns relative to root, applied like a root .envdignore of lower
  // precedence than any .envdignore file (which may re-include with "!pattern").
  std::vector<std::string> extra_ignores;
};

// Lists the tree at `root`, a git work tree, a directory inside one (then only files below
// root, relative to root), or a plain directory. `.envdignore` files (gitignore(5) syntax, in
// root and any subdirectory) exclude entries in all cases, even tracked ones. Reads only: the
// tree and its .git are left untouched (the git index is never refreshed). Warnings go to
// `diagnostics`.
// Errors: not_found (root missing), invalid_argument (root not a directory), failed_precondition
// (more than options.max_files files; or a repository git refuses to open, safe.directory),
// permission_denied (root unreadable), io (git index or status unreadable).
// Thread-safe: concurrent calls share nothing but libgit2's process-wide initialisation.
Result<SourceListing> list_source_tree(const std::filesystem::path& root,
                                       const SourceOptions& options, Diagnostics& diagnostics);

// Secret deny-list. Returns the rule that blocks `relative_path`, e.g. "private key (*.pem,
// *.key)", ".env file (.env, .env.*)", or nullopt. The list (by base name unless a path is shown):
//   .env, .env.* (not .env.example, .env.sample, .env.template);
//   id_rsa*, id_dsa*, id_ecdsa*, id_ed25519* (not *.pub);
//   *.pem, *.key holding a private key ("PRIVATE KEY-----" in `head`; not certificates);
//   *.p12, *.pfx, *.ppk; *.json that is a Google Cloud service-account key (by `head`);
//   .aws/credentials, .netrc, _netrc, .pypirc, .git-credentials, .docker/config.json,
//   .kube/config, .config/gcloud/credentials.db.
// `head` is the file's first bytes (up to 4 KiB); it must be passed whenever
// secret_rule_needs_head() says so. Empty means no content: an empty file, or a symlink (whose
// target is captured, not its content). Pure.
std::optional<std::string> secret_rule_for(std::string_view relative_path, std::string_view head);

// Whether secret_rule_for() decides `relative_path` by its content (*.pem, *.key, *.json), so
// that callers read the head only of those files. Pure.
bool secret_rule_needs_head(std::string_view relative_path);

// Whether `relative_path` (root-relative) is matched by `allow_patterns`, gitignore-syntax
// patterns relative to the root: a path is allowed when it, or a directory above it, matches
// and the last matching pattern is not a "!" negation. Lets a user keep a file the deny-list
// would block (a test fixture key, say). Pure.
bool secret_allowed(std::string_view relative_path, const std::vector<std::string>& allow_patterns);

}  // namespace envd::agent
