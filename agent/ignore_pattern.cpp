// Gitignore(5) patterns: a port of git's wildmatch plus the line syntax and precedence rules.
// Spec: https://git-scm.com/docs/gitignore#_pattern_format
#include "agent/ignore_pattern.hpp"

#include <cassert>
#include <cctype>

namespace envd::agent {
namespace {

// Results of one wildmatch step, as in git's wildmatch.c: the two abort values let a '*' stop
// trying longer prefixes once the rest of the pattern cannot match anywhere.
enum WildResult { k_wild_match, k_wild_no_match, k_wild_abort_all, k_wild_abort_to_starstar };

bool is_glob_special(unsigned char c) {
  return c == '*' || c == '?' || c == '[' || c == '\\';
}

// Whether `c` is in the POSIX class `name`; nullopt for an unknown class (a malformed pattern).
std::optional<bool> in_class(std::string_view name, unsigned char c) {
  if (name == "alnum") return std::isalnum(c) != 0;
  if (name == "alpha") return std::isalpha(c) != 0;
  if (name == "blank") return c == ' ' || c == '\t';
  if (name == "cntrl") return std::iscntrl(c) != 0;
  if (name == "digit") return std::isdigit(c) != 0;
  if (name == "graph") return std::isgraph(c) != 0;
  if (name == "lower") return std::islower(c) != 0;
  if (name == "print") return std::isprint(c) != 0;
  if (name == "punct") return std::ispunct(c) != 0;
  if (name == "space") return std::isspace(c) != 0;
  if (name == "upper") return std::isupper(c) != 0;
  if (name == "xdigit") return std::isxdigit(c) != 0;
  return std::nullopt;
}

// git's dowild() over string_views: index past the end reads as '\0', as the C original's
// terminator, so the control flow can stay identical to the well-tested original.
class Wild {
 public:
  Wild(std::string_view glob, std::string_view text, bool slash_special)
      : m_pat(glob), m_text(text), m_pathname(slash_special) {}

  WildResult run(std::size_t p, std::size_t t) const {
    for (; pc(p) != 0; ++t, ++p) {
      unsigned char p_ch = pc(p);
      unsigned char t_ch = tc(t);
      if (t_ch == 0 && p_ch != '*') return k_wild_abort_all;
      switch (p_ch) {
        case '\\':
          p_ch = pc(++p);
          [[fallthrough]];
        default:
          if (t_ch != p_ch) return k_wild_no_match;
          continue;
        case '?':
          if (m_pathname && t_ch == '/') return k_wild_no_match;
          continue;
        case '*': {
          bool match_slash = !m_pathname;
          if (pc(++p) == '*') {
            const std::size_t first_star = p - 1;
            while (pc(++p) == '*') {
            }
            // "**" is special only as a whole path component: "**/", "/**/", "/**".
            if (m_pathname && (first_star == 0 || m_pat[first_star - 1] == '/') &&
                (pc(p) == 0 || pc(p) == '/' || (pc(p) == '\\' && pc(p + 1) == '/'))) {
              // "a/**/b" also matches "a/b": try the rest with "**/" matching nothing.
              if (pc(p) == '/' && run(p + 1, t) == k_wild_match) return k_wild_match;
              match_slash = true;
            }
          }
          if (pc(p) == 0) {
            // A trailing "*" matches the rest of this component only; "**" everything.
            if (!match_slash && m_text.find('/', t) != std::string_view::npos) {
              return k_wild_no_match;
            }
            return k_wild_match;
          }
          if (!match_slash && pc(p) == '/') {
            // "*/" matches exactly the rest of this component.
            const std::size_t slash = m_text.find('/', t);
            if (slash == std::string_view::npos) return k_wild_no_match;
            t = slash;
            break;  // the loop's increments step over the '/' in both
          }
          for (;;) {
            if (t_ch == 0) break;
            if (!is_glob_special(pc(p))) {
              // Skip ahead to the next occurrence of the literal that follows the '*'.
              p_ch = pc(p);
              while ((t_ch = tc(t)) != 0 && (match_slash || t_ch != '/')) {
                if (t_ch == p_ch) break;
                ++t;
              }
              if (t_ch != p_ch) return k_wild_no_match;
            }
            const WildResult matched = run(p, t);
            if (matched != k_wild_no_match) {
              if (!match_slash || matched != k_wild_abort_to_starstar) return matched;
            } else if (!match_slash && t_ch == '/') {
              return k_wild_abort_to_starstar;
            }
            t_ch = tc(++t);
          }
          return k_wild_abort_all;
        }
        case '[': {
          p_ch = pc(++p);
          if (p_ch == '^') p_ch = '!';
          const bool negated = p_ch == '!';
          if (negated) p_ch = pc(++p);
          unsigned char prev_ch = 0;
          bool matched = false;
          do {
            if (p_ch == 0) return k_wild_abort_all;
            if (p_ch == '\\') {
              p_ch = pc(++p);
              if (p_ch == 0) return k_wild_abort_all;
              if (t_ch == p_ch) matched = true;
            } else if (p_ch == '-' && prev_ch != 0 && pc(p + 1) != 0 && pc(p + 1) != ']') {
              p_ch = pc(++p);
              if (p_ch == '\\') {
                p_ch = pc(++p);
                if (p_ch == 0) return k_wild_abort_all;
              }
              if (t_ch <= p_ch && t_ch >= prev_ch) matched = true;
              p_ch = 0;  // a range cannot start another range
            } else if (p_ch == '[' && pc(p + 1) == ':') {
              const std::size_t name_start = p += 2;
              while ((p_ch = pc(p)) != 0 && p_ch != ']') ++p;
              if (p_ch == 0) return k_wild_abort_all;
              if (p == name_start || m_pat[p - 1] != ':') {
                // No ":]": the '[' was an ordinary member of the set.
                p = name_start - 2;
                p_ch = '[';
                if (t_ch == p_ch) matched = true;
                continue;
              }
              const auto in = in_class(m_pat.substr(name_start, p - 1 - name_start), t_ch);
              if (!in) return k_wild_abort_all;
              if (*in) matched = true;
              p_ch = 0;
            } else if (t_ch == p_ch) {
              matched = true;
            }
          } while (prev_ch = p_ch, (p_ch = pc(++p)) != ']');
          if (matched == negated || (m_pathname && t_ch == '/')) return k_wild_no_match;
          continue;
        }
      }
    }
    return t >= m_text.size() ? k_wild_match : k_wild_no_match;
  }

 private:
  unsigned char pc(std::size_t i) const {
    return i < m_pat.size() ? static_cast<unsigned char>(m_pat[i]) : 0;
  }
  unsigned char tc(std::size_t i) const {
    return i < m_text.size() ? static_cast<unsigned char>(m_text[i]) : 0;
  }

  std::string_view m_pat;
  std::string_view m_text;
  bool m_pathname;
};

// Drops unescaped trailing spaces, as git's trim_trailing_spaces().
std::string_view trim_trailing_spaces(std::string_view line) {
  std::size_t end = line.size();
  std::optional<std::size_t> first_space;
  for (std::size_t i = 0; i < line.size(); ++i) {
    if (line[i] == ' ') {
      if (!first_space) first_space = i;
    } else if (line[i] == '\\') {
      ++i;  // escaped character, possibly a space, is kept
      if (i >= line.size()) return line;
      first_space.reset();
    } else {
      first_space.reset();
    }
  }
  if (first_space) end = *first_space;
  return line.substr(0, end);
}

}  // namespace

bool wildmatch(std::string_view glob, std::string_view text, SlashMode mode) {
  return Wild(glob, text, mode == SlashMode::special).run(0, 0) == k_wild_match;
}

void IgnoreRules::push(std::string_view base, std::string_view text, std::string origin) {
  Frame frame;
  frame.base = std::string(base);
  if (!frame.base.empty() && frame.base.back() != '/') frame.base += '/';
  frame.origin = std::move(origin);
  while (!text.empty()) {
    const std::size_t eol = text.find('\n');
    std::string_view line = text.substr(0, eol);
    text = eol == std::string_view::npos ? std::string_view() : text.substr(eol + 1);
    // git drops the '\r' of "\r\n" line ends too (dir.c, add_patterns_from_buffer).
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || line.front() == '#') continue;
    line = trim_trailing_spaces(line);
    Pattern pattern;
    if (!line.empty() && line.front() == '!') {
      pattern.negated = true;
      line.remove_prefix(1);
    }
    if (!line.empty() && line.back() == '/') {
      pattern.directory_only = true;
      line.remove_suffix(1);
    }
    pattern.anchored = line.find('/') != std::string_view::npos;
    if (!line.empty() && line.front() == '/') line.remove_prefix(1);
    if (line.empty()) continue;
    pattern.glob = std::string(line);
    frame.patterns.push_back(std::move(pattern));
  }
  m_frames.push_back(std::move(frame));
}

void IgnoreRules::pop() {
  assert(!m_frames.empty());
  m_frames.pop_back();
}

std::optional<std::string_view> IgnoreRules::match(std::string_view path, EntryKind kind) const {
  const std::size_t slash = path.rfind('/');
  const std::string_view basename = slash == std::string_view::npos ? path : path.substr(slash + 1);
  for (auto frame = m_frames.rbegin(); frame != m_frames.rend(); ++frame) {
    if (path.size() <= frame->base.size() || !path.starts_with(frame->base)) continue;
    const std::string_view below = path.substr(frame->base.size());
    for (auto p = frame->patterns.rbegin(); p != frame->patterns.rend(); ++p) {
      if (p->directory_only && kind != EntryKind::directory) continue;
      const bool hit = p->anchored ? wildmatch(p->glob, below, SlashMode::special)
                                   : wildmatch(p->glob, basename, SlashMode::ordinary);
      if (!hit) continue;
      if (p->negated) return std::nullopt;
      return std::string_view(frame->origin);
    }
  }
  return std::nullopt;
}

std::optional<std::string_view> IgnoreRules::match_with_parents(std::string_view path,
                                                                EntryKind kind) const {
  for (std::size_t slash = path.find('/'); slash != std::string_view::npos;
       slash = path.find('/', slash + 1)) {
    if (auto origin = match(path.substr(0, slash), EntryKind::directory)) return origin;
  }
  return match(path, kind);
}

}  // namespace envd::agent
