// Lists a source tree: with libgit2 inside a git work tree (tracked plus untracked-not-ignored
// files, .gitignore rules), plain directory walk otherwise; .envdignore (gitignore syntax) applies
// in both. Also the secret deny-list that blocks a snapshot containing credentials.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "agent/diagnostics.hpp"
#include "envd/util/error.hpp"

namespace envd::agent {

struct SourceListing {
  std::filesystem::path root;                    // absolute, normalised
  std::optional<std::string> git_commit;         // HEAD commit hex; none outside git / unborn HEAD
  bool dirty = false;                            // modified, staged, deleted or untracked vs HEAD
  std::map<std::string, std::uint64_t> ignored;  // ".gitignore" / ".envdignore" / "special" -> entries
  // Root-relative paths of regular files and symlinks to capture, sorted. Symlinks are listed,
  // never followed. FIFOs, sockets and devices are skipped with a warning. ".git" is never listed.
  std::vector<std::string> paths;
};

struct SourceOptions {
  std::uint64_t max_files = 200000;  // more than this: failed_precondition naming the count
  std::vector<std::string> extra_ignores;  // gitignore-syntax patterns from config
};

// Errors: not_found (root missing), invalid_argument (root not a directory),
// failed_precondition (too many files), io.
Result<SourceListing> list_source_tree(const std::filesystem::path& root,
                                       const SourceOptions& options, Diagnostics& diagnostics);

// Secret deny-list. Returns the rule that blocks `relative_path` ("private key (*.pem, *.key)",
// ".env file", ...) or nullopt. `head` is the file's first bytes (up to 4 KiB), used to tell a
// private key from a certificate; pass empty when unknown.
std::optional<std::string> secret_rule_for(std::string_view relative_path, std::string_view head);

// Patterns (gitignore syntax, matched against root-relative paths) that allow a path the
// deny-list would block.
bool secret_allowed(std::string_view relative_path, const std::vector<std::string>& allow_patterns);

}  // namespace envd::agent
