// Gitignore-syntax patterns (gitignore(5)): parsing and matching against '/'-separated relative
// paths, for .envdignore files, ignore patterns from config and secret allow-lists.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace envd::agent {

// What a path names. A symlink is a file here, even when it points to a directory: a pattern
// "dir/" never matches it (as in git).
enum class EntryKind { file, directory };

// Matches `text` against a glob as git's wildmatch does: '?' any one character, '*' any run,
// '[a-z]', '[!a-z]', '[^a-z]', '[[:alpha:]]' classes, '\' escapes the next character. With
// SlashMode::special, '*', '?' and classes never match '/', and '**' matches across directories
// when it forms a whole component ("**/x", "a/**/b", "a/**"). Pure; case-sensitive.
enum class SlashMode { special, ordinary };
bool wildmatch(std::string_view glob, std::string_view text, SlashMode mode);

// A stack of pattern lists, each relative to a directory, as git keeps .gitignore files while
// walking a tree. Precedence follows gitignore(5): the list pushed last wins, and within a list
// the last matching line wins; a "!pattern" that decides re-includes the path.
// Not thread-safe; const member functions may run concurrently.
class IgnoreRules {
 public:
  // Parses `text` (an ignore file, or patterns one per line) whose patterns apply to paths below
  // `base` ("" for the root, else a relative directory such as "a/b"). `origin` names the source
  // (".envdignore", "config") and is what match() reports. Blank lines and '#' comments are
  // skipped; malformed patterns never match.
  void push(std::string_view base, std::string_view text, std::string origin);
  // Removes the list added by the last push(). Precondition: a push() not yet popped.
  void pop();
  bool empty() const { return m_frames.empty(); }

  // The origin of the pattern deciding that `path` (root-relative, no trailing '/') is ignored,
  // or nullopt when no pattern matches or a negated one decides. Parent directories are not
  // consulted: a walker stops at an ignored directory, so nothing below it is ever asked about.
  std::optional<std::string_view> match(std::string_view path, EntryKind kind) const;
  // Like match(), but first asks about every parent directory of `path`; the first ignored one
  // decides, since a file below an ignored directory cannot be re-included (gitignore(5)).
  std::optional<std::string_view> match_with_parents(std::string_view path, EntryKind kind) const;

 private:
  struct Pattern {
    std::string glob;  // escapes kept; without the leading '!', leading '/' and trailing '/'
    bool negated = false;
    bool directory_only = false;  // had a trailing '/'
    bool anchored = false;        // had a '/' elsewhere: matches the path below the base
  };
  struct Frame {
    std::string base;  // "" or "a/b/"
    std::string origin;
    std::vector<Pattern> patterns;
  };
  std::vector<Frame> m_frames;
};

}  // namespace envd::agent
