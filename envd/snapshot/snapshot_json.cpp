// Snapshot -> canonical JSON, emitted straight into one pre-sized string (no intermediate tree: a
// snapshot has ~50,000 files), or hashed as it is written for the snapshot digest. Reading is in
// snapshot_json_read.cpp.

#include <algorithm>
#include <array>
#include <cassert>
#include <charconv>
#include <cstddef>
#include <cstdint>

#include "envd/snapshot/snapshot.hpp"
#include "envd/snapshot/snapshot_error.hpp"
#include "envd/snapshot/snapshot_json_detail.hpp"

namespace envd::snapshot {
namespace {

// --- writing -------------------------------------------------------------------------------
//
// The output must be byte-identical to nlohmann's dump(-1, ' ', false, strict) of the same
// document (the snapshot digest is taken over these bytes, and documents written before this
// writer existed must keep their digests): object keys in byte order, no whitespace, strings
// escaped as nlohmann does with ensure_ascii off. Keys below are written by hand in sorted order;
// snapshot_json_test.cpp checks the result against nlohmann's dump of the same tree.

// A JSON location ("/environments/0/unowned/3/path"), kept as a chain of stack frames and turned
// into text only when an error is reported, so the common path allocates nothing for it.
struct Where {
  const Where* parent = nullptr;
  std::string_view key;  // member name; empty for an array element
  std::size_t index = 0;

  Where member(std::string_view k) const { return Where{this, k, 0}; }
  Where element(std::size_t i) const { return Where{this, {}, i}; }
};

// "" for the root frame, so its children render as "/environments/0".
std::string location(const Where& w) {
  if (w.parent == nullptr) return std::string();
  return location(*w.parent) + "/" + (w.key.empty() ? std::to_string(w.index) : std::string(w.key));
}

// A quoted string for an error message, with control characters, quotes, backslashes and bytes
// >= 0x7f as \xNN, so a message about a malformed name stays printable and valid UTF-8.
std::string printable(std::string_view s) {
  static constexpr char k_hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size() + 2);
  out += '"';
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
      out += "\\x";
      out += k_hex[c >> 4];
      out += k_hex[c & 0xf];
    } else {
      out += ch;
    }
  }
  out += '"';
  return out;
}

// Length of the well-formed UTF-8 sequence at s[0..n), or 0 if it is not one (RFC 3629 §4, the
// same set nlohmann's decoder accepts: no overlong forms, surrogates or code points > U+10FFFF).
// https://www.rfc-editor.org/rfc/rfc3629#section-4
std::size_t utf8_sequence_length(const unsigned char* s, std::size_t n) {
  auto in = [](unsigned char c, unsigned char lo, unsigned char hi) { return c >= lo && c <= hi; };
  unsigned char c = s[0];
  if (in(c, 0xc2, 0xdf)) return n >= 2 && in(s[1], 0x80, 0xbf) ? 2 : 0;
  if (in(c, 0xe0, 0xef)) {
    if (n < 3) return 0;
    unsigned char lo = c == 0xe0 ? 0xa0 : 0x80;
    unsigned char hi = c == 0xed ? 0x9f : 0xbf;
    return in(s[1], lo, hi) && in(s[2], 0x80, 0xbf) ? 3 : 0;
  }
  if (in(c, 0xf0, 0xf4)) {
    if (n < 4) return 0;
    unsigned char lo = c == 0xf0 ? 0x90 : 0x80;
    unsigned char hi = c == 0xf4 ? 0x8f : 0xbf;
    return in(s[1], lo, hi) && in(s[2], 0x80, 0xbf) && in(s[3], 0x80, 0xbf) ? 4 : 0;
  }
  return 0;  // a continuation byte, C0, C1 or F5-FF in lead position
}

// What a string byte needs: copy as is, an escape, or (>= 0x80) UTF-8 validation.
enum class ByteClass : unsigned char { plain, escape, multibyte };

constexpr std::array<ByteClass, 256> k_byte_class = [] {
  std::array<ByteClass, 256> t{};
  for (int c = 0; c < 256; ++c) {
    if (c < 0x20 || c == '"' || c == '\\') {
      t[c] = ByteClass::escape;
    } else if (c >= 0x80) {
      t[c] = ByteClass::multibyte;
    } else {
      t[c] = ByteClass::plain;  // includes DEL (0x7f), which nlohmann passes through
    }
  }
  return t;
}();

// The escapes with a short form (RFC 8259 §7); 0 elsewhere: other control characters are
// written \u00xx. https://www.rfc-editor.org/rfc/rfc8259#section-7
constexpr std::array<char, 128> k_short_escape = [] {
  std::array<char, 128> t{};
  t['"'] = '"';
  t['\\'] = '\\';
  t['\b'] = 'b';
  t['\f'] = 'f';
  t['\n'] = 'n';
  t['\r'] = 'r';
  t['\t'] = 't';
  return t;
}();

// The volatile fields (created, host, envd_version): written, left out (the digest), or written
// as "" (the document in an image).
enum class Volatile { include, exclude, blank };

// Appends canonical JSON text to one buffer. For to_json the buffer is sized once and becomes
// the document; for digest_of it is a small window whose full chunks go to SHA-256, so the ~10 MB
// text is never held (faulting in that many fresh pages took about as long as writing it).
class CanonicalWriter {
 public:
  // Writes the whole document into a string reserved to `reserve` bytes; take() returns it.
  explicit CanonicalWriter(std::size_t reserve) { m_out.reserve(reserve); }
  // Writes into `buffer`, emptied first (its capacity is kept: one buffer serves many items).
  explicit CanonicalWriter(std::string&& buffer) : m_out(std::move(buffer)) { m_out.clear(); }
  // Hashes the document as it is written; digest() returns its SHA-256.
  explicit CanonicalWriter(oci::Sha256& hash) : m_hash(&hash) { m_out.reserve(2 * k_chunk); }

  // Literal JSON text (punctuation and keys, which need no escaping).
  void raw(std::string_view text) { m_out.append(text); }

  void uint(std::uint64_t value) {
    char buf[20];
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, value);
    m_out.append(buf, static_cast<std::size_t>(end - buf));
  }

  void boolean(bool value) { m_out.append(value ? "true" : "false"); }

  // A JSON string, escaped as nlohmann's dump does with ensure_ascii off: \" \\ \b \f \n \r \t,
  // other bytes < 0x20 as \u00xx (lowercase hex), everything else (DEL, UTF-8) as is.
  // Errors: invalid_argument naming `where` and the string when it is not valid UTF-8.
  Result<void> string(std::string_view s, const Where& where) {
    static constexpr char k_hex[] = "0123456789abcdef";
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const std::size_t n = s.size();
    m_out.push_back('"');
    std::size_t run = 0;  // start of the bytes not yet copied
    std::size_t i = 0;
    while (i < n) {
      switch (k_byte_class[p[i]]) {
        case ByteClass::plain:
          ++i;
          break;
        case ByteClass::multibyte: {
          std::size_t len = utf8_sequence_length(p + i, n - i);
          if (len == 0)
            return bad(location(where),
                       "invalid UTF-8 at byte " + std::to_string(i) + " of " + printable(s));
          i += len;
          break;
        }
        case ByteClass::escape: {
          m_out.append(s.data() + run, i - run);
          if (char e = k_short_escape[p[i]]) {
            const char text[2] = {'\\', e};
            m_out.append(text, 2);
          } else {
            const char text[6] = {'\\', 'u', '0', '0', k_hex[p[i] >> 4], k_hex[p[i] & 0xf]};
            m_out.append(text, 6);
          }
          run = ++i;
          break;
        }
      }
    }
    m_out.append(s.data() + run, n - run);
    m_out.push_back('"');
    return {};
  }

  // Called between entries: when hashing, hands the buffered text to the hash once a chunk is full.
  void flush_if_hashing() {
    if (m_hash != nullptr && m_out.size() >= k_chunk) {
      m_hash->update(m_out);
      m_out.clear();
    }
  }

  std::string take() {
    assert(m_hash == nullptr);
    return std::move(m_out);
  }

  oci::Digest digest() {
    assert(m_hash != nullptr);
    m_hash->update(m_out);
    m_out.clear();
    return m_hash->finish();
  }

 private:
  static constexpr std::size_t k_chunk = 64 * 1024;
  std::string m_out;
  oci::Sha256* m_hash = nullptr;
};

// --- what the writer refuses: anything its own parse() would reject -------------------------

bool is_absolute_path(std::string_view p) {
  return !p.empty() && p.front() == '/' && (p.size() == 1 || is_safe_relative_path(p.substr(1)));
}

Result<void> check_absolute(std::string_view p, const Where& where) {
  if (!is_absolute_path(p))
    return bad(location(where), "must be a normalised absolute path: " + printable(p));
  return {};
}

Result<void> write_absolute(CanonicalWriter& w, std::string_view p, const Where& where) {
  ENVD_TRY_VOID(check_absolute(p, where));
  return w.string(p, where);
}

// Keys: digest, link?, mode, path, size, type (regular) or mode, path, target, type (symlink).
// "link" is written only when set, so the documents and digests of snapshots without hard links
// are those written before the field existed.
Result<void> write_file(CanonicalWriter& w, const FileEntry& f, const Where& where) {
  if (!is_safe_relative_path(f.path))
    return bad(location(where.member("path")),
               "unsafe path " + printable(f.path) + " (absolute, empty or with ..)");
  if (f.mode > 07777)
    return bad(location(where.member("mode")), "must be permission bits (<= 07777)");
  if (!f.link.empty()) ENVD_TRY_VOID(check_link_fields(f, location(where.member("link"))));
  if (f.type == FileType::regular) {
    if (!f.digest)
      return bad(location(where.member("digest")),
                 "regular file " + printable(f.path) + " has no digest");
    w.raw("{\"digest\":\"");
    w.raw(f.digest->view());  // "sha256:" + lowercase hex: nothing to escape
    if (!f.link.empty()) {
      w.raw("\",\"link\":");
      ENVD_TRY_VOID(w.string(f.link, where.member("link")));
      w.raw(",\"mode\":");
    } else {
      w.raw("\",\"mode\":");
    }
    w.uint(f.mode);
    w.raw(",\"path\":");
    ENVD_TRY_VOID(w.string(f.path, where.member("path")));
    w.raw(",\"size\":");
    w.uint(f.size);
    w.raw(",\"type\":\"file\"}");
  } else {
    if (f.target.empty() || f.target.find('\0') != std::string::npos)
      return bad(location(where.member("target")),
                 "symlink " + printable(f.path) + " needs a non-empty target without NUL");
    w.raw("{\"mode\":");
    w.uint(f.mode);
    w.raw(",\"path\":");
    ENVD_TRY_VOID(w.string(f.path, where.member("path")));
    w.raw(",\"target\":");
    ENVD_TRY_VOID(w.string(f.target, where.member("target")));
    w.raw(",\"type\":\"symlink\"}");
  }
  return {};
}

Result<void> write_files(CanonicalWriter& w, const std::vector<FileEntry>& files,
                         const Where& where) {
  w.raw("[");
  for (std::size_t i = 0; i < files.size(); ++i) {
    Where at = where.element(i);
    // parse() requires this order; std::string's < compares bytes as unsigned, like JSON's.
    if (i > 0 && !(files[i - 1].path < files[i].path))
      return bad(location(at), "files must be sorted by path without duplicates (" +
                                   printable(files[i].path) + ")");
    if (i > 0) w.raw(",");
    ENVD_TRY_VOID(write_file(w, files[i], at));
    w.flush_if_hashing();
  }
  w.raw("]");
  return {};
}

// Keys: build*, channel*, direct_url?, editable_root?, files, installer, manager, modified, name,
// requested, subdir*, version (* conda only; ? when set).
Result<void> write_package(CanonicalWriter& w, const Package& p, const Where& where) {
  if (p.name.empty()) return bad(location(where.member("name")), "must not be empty");
  const bool conda = p.manager == PackageManager::conda;
  w.raw("{");
  if (conda) {
    w.raw("\"build\":");
    ENVD_TRY_VOID(w.string(p.build, where.member("build")));
    w.raw(",\"channel\":");
    ENVD_TRY_VOID(w.string(p.channel, where.member("channel")));
    w.raw(",");
  }
  if (!p.direct_url.empty()) {
    w.raw("\"direct_url\":");
    ENVD_TRY_VOID(w.string(p.direct_url, where.member("direct_url")));
    w.raw(",");
  }
  if (p.editable_root) {
    w.raw("\"editable_root\":");
    ENVD_TRY_VOID(write_absolute(w, *p.editable_root, where.member("editable_root")));
    w.raw(",");
  }
  w.raw("\"files\":");
  ENVD_TRY_VOID(write_files(w, p.files, where.member("files")));
  w.raw(",\"installer\":");
  ENVD_TRY_VOID(w.string(p.installer, where.member("installer")));
  w.raw(",\"manager\":\"");
  w.raw(to_string(p.manager));
  w.raw("\",\"modified\":[");
  const Where modified = where.member("modified");
  for (std::size_t i = 0; i < p.modified.size(); ++i) {
    Where at = modified.element(i);
    if (!is_safe_relative_path(p.modified[i]))
      return bad(location(at), "unsafe path " + printable(p.modified[i]));
    if (i > 0) w.raw(",");
    ENVD_TRY_VOID(w.string(p.modified[i], at));
  }
  w.raw("],\"name\":");
  ENVD_TRY_VOID(w.string(p.name, where.member("name")));
  w.raw(",\"requested\":");
  w.boolean(p.requested);
  if (conda) {
    w.raw(",\"subdir\":");
    ENVD_TRY_VOID(w.string(p.subdir, where.member("subdir")));
  }
  w.raw(",\"version\":");
  ENVD_TRY_VOID(w.string(p.version, where.member("version")));
  w.raw("}");
  return {};
}

// Keys: base_prefix?, kind, name, packages, partial, prefix, python_version,
// system_site_packages, unowned.
Result<void> write_environment(CanonicalWriter& w, const Environment& e, const Where& where,
                               LinkCheck links) {
  w.raw("{");
  if (e.base_prefix) {
    w.raw("\"base_prefix\":");
    ENVD_TRY_VOID(write_absolute(w, *e.base_prefix, where.member("base_prefix")));
    w.raw(",");
  }
  w.raw("\"kind\":\"");
  w.raw(to_string(e.kind));
  w.raw("\",\"name\":");
  ENVD_TRY_VOID(w.string(e.name, where.member("name")));
  w.raw(",\"packages\":[");
  const Where packages = where.member("packages");
  for (std::size_t i = 0; i < e.packages.size(); ++i) {
    if (i > 0) w.raw(",");
    ENVD_TRY_VOID(write_package(w, e.packages[i], packages.element(i)));
    w.flush_if_hashing();
  }
  w.raw("],\"partial\":");
  w.boolean(e.partial);
  w.raw(",\"prefix\":");
  ENVD_TRY_VOID(write_absolute(w, e.prefix, where.member("prefix")));
  w.raw(",\"python_version\":");
  ENVD_TRY_VOID(w.string(e.python_version, where.member("python_version")));
  w.raw(",\"system_site_packages\":");
  w.boolean(e.system_site_packages);
  w.raw(",\"unowned\":");
  ENVD_TRY_VOID(write_files(w, e.unowned, where.member("unowned")));
  w.raw("}");
  if (links == LinkCheck::full) ENVD_TRY_VOID(check_links(e, location(where)));
  return {};
}

// Keys: dirty, files, git_commit?, ignored, role, root.
Result<void> write_source(CanonicalWriter& w, const SourceTree& s, const Where& where,
                          LinkCheck links) {
  w.raw("{\"dirty\":");
  w.boolean(s.dirty);
  w.raw(",\"files\":");
  ENVD_TRY_VOID(write_files(w, s.files, where.member("files")));
  if (s.git_commit) {
    w.raw(",\"git_commit\":");
    ENVD_TRY_VOID(w.string(*s.git_commit, where.member("git_commit")));
  }
  w.raw(",\"ignored\":{");
  // std::map orders keys by std::string's <, which compares bytes as unsigned: byte order.
  const Where ignored = where.member("ignored");
  bool first = true;
  for (const auto& [origin, count] : s.ignored) {
    if (!first) w.raw(",");
    first = false;
    ENVD_TRY_VOID(w.string(origin, ignored));
    w.raw(":");
    w.uint(count);
  }
  w.raw("},\"role\":\"");
  w.raw(to_string(s.role));
  w.raw("\",\"root\":");
  ENVD_TRY_VOID(write_absolute(w, s.root, where.member("root")));
  w.raw("}");
  if (links == LinkCheck::full) ENVD_TRY_VOID(check_links(s, location(where)));
  return {};
}

// A generous guess at the output size, so the string is allocated once.
std::size_t estimated_size(const Snapshot& s) {
  auto files_size = [](const std::vector<FileEntry>& files) {
    std::size_t n = 2;
    for (const auto& f : files) n += 160 + f.path.size() + f.target.size() + f.link.size();
    return n;
  };
  std::size_t n = 512 + s.created.size() + s.host.size() + s.envd_version.size();
  for (const auto& e : s.environments) {
    n += 256 + e.name.size() + e.prefix.size() + files_size(e.unowned);
    for (const auto& p : e.packages) {
      n += 256 + p.name.size() + p.version.size() + p.build.size() + p.channel.size() +
           p.direct_url.size() + files_size(p.files);
      for (const auto& m : p.modified) n += 4 + m.size();
    }
  }
  for (const auto& src : s.sources) n += 256 + src.root.size() + files_size(src.files);
  return n;
}

// The whole document, with or without the volatile fields. Top-level keys in byte order:
// created, envd_version, environments, host, media_type, platform, sources ("envd_version" sorts
// before "environments": 'd' < 'i' at index 3).
Result<void> write_document(CanonicalWriter& w, const Snapshot& s, Volatile volatile_fields,
                            LinkCheck links = LinkCheck::full) {
  const bool with_volatile = volatile_fields != Volatile::exclude;
  const bool blank = volatile_fields == Volatile::blank;
  const Where root;
  w.raw("{");
  if (with_volatile) {
    w.raw("\"created\":");
    ENVD_TRY_VOID(w.string(blank ? "" : s.created, root.member("created")));
    w.raw(",\"envd_version\":");
    ENVD_TRY_VOID(w.string(blank ? "" : s.envd_version, root.member("envd_version")));
    w.raw(",");
  }
  w.raw("\"environments\":[");
  const Where environments = root.member("environments");
  for (std::size_t i = 0; i < s.environments.size(); ++i) {
    if (i > 0) w.raw(",");
    ENVD_TRY_VOID(write_environment(w, s.environments[i], environments.element(i), links));
  }
  w.raw("],");
  if (with_volatile) {
    w.raw("\"host\":");
    ENVD_TRY_VOID(w.string(blank ? "" : s.host, root.member("host")));
    w.raw(",");
  }
  w.raw("\"media_type\":\"");
  w.raw(k_media_type);
  w.raw("\",\"platform\":{\"arch\":");
  const Where platform = root.member("platform");
  ENVD_TRY_VOID(w.string(s.platform.arch, platform.member("arch")));
  w.raw(",\"libc\":");
  ENVD_TRY_VOID(w.string(s.platform.libc, platform.member("libc")));
  w.raw(",\"os\":");
  ENVD_TRY_VOID(w.string(s.platform.os, platform.member("os")));
  w.raw("},\"sources\":[");
  const Where sources = root.member("sources");
  for (std::size_t i = 0; i < s.sources.size(); ++i) {
    if (i > 0) w.raw(",");
    ENVD_TRY_VOID(write_source(w, s.sources[i], sources.element(i), links));
  }
  w.raw("]}");
  return {};
}

}  // namespace

Result<std::string> to_json(const Snapshot& snapshot) {
  CanonicalWriter w(estimated_size(snapshot));
  ENVD_TRY_VOID(write_document(w, snapshot, Volatile::include));
  return w.take();
}

Result<std::string> fragment_to_json(const Snapshot& snapshot) {
  CanonicalWriter w(estimated_size(snapshot));
  ENVD_TRY_VOID(write_document(w, snapshot, Volatile::include, LinkCheck::per_file));
  return w.take();
}

Result<std::string> to_json_without_volatile(const Snapshot& snapshot) {
  CanonicalWriter w(estimated_size(snapshot));
  ENVD_TRY_VOID(write_document(w, snapshot, Volatile::blank));
  return w.take();
}

Result<oci::Digest> digest_of(const Snapshot& snapshot) {
  oci::Sha256 hash;
  CanonicalWriter w(hash);
  ENVD_TRY_VOID(write_document(w, snapshot, Volatile::exclude));
  return w.digest();
}

namespace {

std::string joined_key(std::string_view scope, char kind, std::string_view rest) {
  std::string key;
  key.reserve(scope.size() + rest.size() + 3);
  key.append(scope).push_back('\0');
  key.push_back(kind);
  key.push_back('\0');
  key.append(rest);
  return key;
}

// SHA-256 of what `write` writes, written into `buffer` (reused across items: a hashing writer
// would allocate its 128 KiB window for each of ~50,000 items).
template <typename Write>
Result<oci::Digest> item_digest(std::string& buffer, Write&& write) {
  CanonicalWriter w(std::move(buffer));
  ENVD_TRY_VOID(write(w));
  buffer = w.take();
  return oci::sha256_of(buffer);
}

}  // namespace

std::string package_key(std::string_view prefix, std::string_view name, PackageManager manager) {
  std::string rest(name);
  rest.push_back('\0');
  rest.append(to_string(manager));
  return joined_key(prefix, 'p', rest);
}

std::string unowned_key(std::string_view prefix, std::string_view path) {
  return joined_key(prefix, 'u', path);
}

std::string source_key(std::string_view root, std::string_view path) {
  return joined_key(root, 's', path);
}

Result<std::vector<ItemIndex::Item>> item_digests(const Snapshot& snapshot) {
  std::vector<ItemIndex::Item> out;
  std::string buffer;
  const Where root;
  auto add_files = [&](const std::vector<FileEntry>& files, auto key_of,
                       const Where& where) -> Result<void> {
    for (std::size_t i = 0; i < files.size(); ++i) {
      ENVD_TRY(auto d, item_digest(buffer, [&](CanonicalWriter& w) {
                 return write_file(w, files[i], where.element(i));
               }));
      out.push_back({key_of(files[i].path), std::move(d)});
    }
    return {};
  };
  const Where environments = root.member("environments");
  for (std::size_t e = 0; e < snapshot.environments.size(); ++e) {
    const Environment& env = snapshot.environments[e];
    const Where at = environments.element(e);
    const Where packages = at.member("packages");
    for (std::size_t i = 0; i < env.packages.size(); ++i) {
      const Package& p = env.packages[i];
      ENVD_TRY(auto d, item_digest(buffer, [&](CanonicalWriter& w) {
                 return write_package(w, p, packages.element(i));
               }));
      out.push_back({package_key(env.prefix, p.name, p.manager), std::move(d)});
    }
    ENVD_TRY_VOID(add_files(
        env.unowned, [&](std::string_view path) { return unowned_key(env.prefix, path); },
        at.member("unowned")));
  }
  const Where sources = root.member("sources");
  for (std::size_t s = 0; s < snapshot.sources.size(); ++s) {
    const SourceTree& src = snapshot.sources[s];
    ENVD_TRY_VOID(add_files(
        src.files, [&](std::string_view path) { return source_key(src.root, path); },
        sources.element(s).member("files")));
  }
  std::sort(out.begin(), out.end(),
            [](const ItemIndex::Item& a, const ItemIndex::Item& b) { return a.key < b.key; });
  return out;
}

}  // namespace envd::snapshot
