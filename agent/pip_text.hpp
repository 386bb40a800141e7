// Text and path handling shared by the pip metadata reader: PEP 503 names, core-metadata
// headers, PEP 376 RECORD rows and hashes, file:// URLs, lexical path normalisation.
// Internal to agent/pip_metadata.cpp (and its tests); pure functions unless noted.
#pragma once

#include <algorithm>
#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "envd/oci/digest.hpp"
#include "envd/util/error.hpp"

namespace envd::agent::pip_text {

using Parts = std::vector<std::string>;

struct NameVersion {
  std::string name, version;
};

// Calls f(line) for each line, without its '\r\n' / '\n', until f returns false.
template <class F>
void for_each_line(std::string_view text, F&& f) {
  for (std::size_t pos = 0; pos < text.size();) {
    auto eol = std::min(text.find('\n', pos), text.size());
    auto line = text.substr(pos, eol - pos);
    if (!f(line.ends_with("\r") ? line.substr(0, line.size() - 1) : line)) return;
    pos = eol + 1;
  }
}

// PEP 376 RECORD (https://peps.python.org/pep-0376/#record) is CSV as Python's csv module writes
// it: ',' separated, '"' quoting with '""' for a quote, so a path may contain commas. Calls
// row(line, first field, second field or "") for each row with a field, in order. Returns the
// line of an unterminated quote, whose row is dropped as csv would swallow the rest.
template <class Row>
std::optional<std::size_t> for_each_csv_row(std::string_view text, Row&& row) {
  std::size_t line = 1;
  for (std::size_t pos = 0; pos < text.size();) {
    // Fast path: a line without quotes or stray '\r' is its fields split at ','.
    auto eol = std::min(text.find('\n', pos), text.size());
    auto body = text.substr(pos, eol - pos);
    if (body.ends_with('\r')) body.remove_suffix(1);
    if (body.find('"') == body.npos && body.find('\r') == body.npos) {
      if (!body.empty()) {
        auto comma = body.find(',');
        auto rest = comma == body.npos ? std::string_view() : body.substr(comma + 1);
        row(line, body.substr(0, comma), rest.substr(0, rest.find(',')));
      }
      ++line;
      pos = eol + 1;
      continue;
    }
    // General case: one row, which quoted newlines may spread over several lines.
    std::vector<std::string> fields;
    std::string field;
    bool quoted = false, started = false;
    const std::size_t row_line = line;
    for (std::size_t i = pos;; ++i) {
      char c = i < text.size() ? text[i] : '\n';
      if (quoted && i == text.size()) return row_line;
      if (quoted) {
        if (c == '"' && i + 1 < text.size() && text[i + 1] == '"')
          field += text[++i];
        else if (c == '"')
          quoted = false;
        else
          field += c;
        line += c == '\n' ? 1 : 0;
      } else if (c == '"' && field.empty()) {
        quoted = started = true;
      } else if (c == ',') {
        fields.push_back(std::exchange(field, {}));
        started = true;
      } else if (c == '\n') {
        if (started) fields.push_back(std::exchange(field, {}));
        if (!fields.empty())
          row(row_line, std::string_view(fields[0]),
              fields.size() > 1 ? std::string_view(fields[1]) : std::string_view());
        ++line;
        pos = i + 1;
        break;
      } else if (c != '\r') {
        field += c;
        started = true;
      }
    }
  }
  return std::nullopt;
}

// `s` without leading and trailing blanks (space, tab, CR, LF).
std::string trim(std::string_view s);
// ASCII lowercase (metadata keys and names are ASCII; other bytes pass unchanged).
char lower(char c);
std::string lower(std::string_view s);

// PEP 503 (https://peps.python.org/pep-0503/#normalized-names): lowercase, runs of -_. -> '-'.
std::string pep503(std::string_view name);

// The lines of `text` as for_each_line gives them.
std::vector<std::string_view> lines(std::string_view text);

// PEP 376 metadata files are UTF-8; NUL or a broken sequence means the file is not what it claims.
bool valid_utf8_text(std::string_view s);

// Reads a regular file only: a FIFO named METADATA would block the scan.
Result<std::string> read_text(const std::filesystem::path& path);

// read_text() into `buffer`, which keeps its (already touched) memory from one file to the next:
// fresh pages are costly, and RECORD files add up to megabytes. The view lives until the next use.
Result<std::string_view> read_text(const std::filesystem::path& path, std::string& buffer);

// Whether `p` is a directory (following symlinks) / exists at all (not following); false on errors.
bool is_dir(const std::filesystem::path& p);
bool entry_exists(const std::filesystem::path& p);

// Resolves "", "." and ".." lexically onto `base`. nullopt when a relative path climbs above
// `base`'s start; for an absolute path ".." at "/" stays at "/" as POSIX does.
std::optional<Parts> resolve(Parts base, std::string_view rel, bool absolute);

// parts[from..] joined with '/'.
std::string join(const Parts& parts, std::size_t from = 0);
// "/" + `path` resolved lexically ("/a/./b/../c" -> "/a/c").
std::string absolute_normal(std::string_view path);

// resolve() on strings: appends `rel`'s parts to `out`, the '/'-joined `depth` parts of the base.
// false when a relative path climbs above the base's start.
bool append_normal(std::string& out, std::size_t& depth, std::string_view rel, bool absolute);

// Core metadata is RFC 822 style; the headers end at the first blank line and the body after it
// may hold anything (https://packaging.python.org/en/latest/specifications/core-metadata/).
NameVersion parse_headers(std::string_view text);

// "foo-1.0" (dist-info; PEP 427 escaping keeps '-' out of both parts) or "Foo-1.0-py3.11"
// (egg-info): name before the first '-', version up to the next.
NameVersion from_stem(std::string_view stem);

// A RECORD hash "sha256=<urlsafe base64, no padding>" as a Digest; nullopt for other algorithms
// or a malformed value.
std::optional<oci::Digest> parse_record_hash(std::string_view value);

// "file:///a%20b" (or file://localhost/...) -> "/a b"; nullopt for other schemes, remote hosts.
std::optional<std::string> file_url_path(std::string_view url);

// Where conda-build, Anaconda's build root and pip's temporary build dirs put sources. A
// direct_url.json naming one of these was written on a build machine: it is not the user's source.
bool is_build_farm_path(std::string_view p);

// recursive_directory_iterator(skip_permission_denied) without its per-entry path objects: appends
// `rel`/... for each non-directory under directory `name` (relative to `dir_fd`), depth first in
// readdir order, and returns the errno that stopped the listing (0: none). An unreadable directory
// is skipped; symlinks are listed, not followed.
int list_tree(int dir_fd, const char* name, std::string& rel, std::vector<std::string>& out);

}  // namespace envd::agent::pip_text
