// Reading where an envd image's files belong from its /.envd/snapshot.json (see image_roots.hpp),
// streaming past the file lists, which are nearly all of the document; and the small record of
// the same written beside an assembled rootfs.
#include "envd/node/image_roots.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string_view>

#include "envd/util/log.hpp"
#include "envd/util/unique_fd.hpp"

namespace envd::node::detail {
namespace {

// ---- snapshot.json: skipping the file lists ----------------------------------------------------

// Copies a JSON document fed in chunks, replacing the value of every "packages", "unowned" and
// "files" member that is an array by []. Streams: a 10 MB document is never held in memory
// (touching fresh memory is what costs most on slow virtual machines). Anything malformed is left
// for the JSON parser to reject.
class ListStripper {
 public:
  void feed(std::string_view in) {
    std::size_t i = 0;
    while (i < in.size()) {
      switch (m_state) {
        case State::normal: {
          std::size_t q = in.find('"', i);
          std::size_t end = q == std::string_view::npos ? in.size() : q;
          m_out.append(in.substr(i, end - i));
          i = end;
          if (q != std::string_view::npos) {
            m_out.push_back('"');
            m_token.clear();
            m_state = State::string;
            ++i;
          }
          break;
        }
        case State::string:
        case State::skip_string: {
          const void* q = std::memchr(in.data() + i, '"', in.size() - i);
          std::size_t end = q == nullptr ? in.size() : static_cast<const char*>(q) - in.data();
          if (const void* b = std::memchr(in.data() + i, '\\', end - i); b != nullptr)
            end = static_cast<const char*>(b) - in.data();
          take(in.substr(i, end - i));
          i = end;
          if (i == in.size()) break;
          const char c = in[i++];
          take(std::string_view(&c, 1));
          const bool skipping = m_state == State::skip_string;
          if (c == '\\')
            m_state = skipping ? State::skip_escape : State::escape;
          else if (skipping)
            m_state = State::skip;
          else
            m_state = is_list_key() ? State::after_key : State::normal;
          break;
        }
        case State::escape:
        case State::skip_escape:
          take(in.substr(i++, 1));
          m_state = m_state == State::escape ? State::string : State::skip_string;
          break;
        case State::after_key:
        case State::after_colon: {
          const char c = in[i];
          if (c == ' ' || c == '\n' || c == '\r' || c == '\t') {
            m_out.push_back(c);
            ++i;
          } else if (m_state == State::after_key && c == ':') {
            m_out.push_back(c);
            m_state = State::after_colon;
            ++i;
          } else if (m_state == State::after_colon && c == '[') {
            m_out.append("[]");
            m_depth = 1;
            m_state = State::skip;
            ++i;
          } else {
            m_state = State::normal;  // c is looked at again
          }
          break;
        }
        case State::skip:
          for (; i < in.size() && m_state == State::skip; ++i) {
            const char c = in[i];
            if (c == '"') {
              m_state = State::skip_string;
            } else if (c == '[') {
              ++m_depth;
            } else if (c == ']' && --m_depth == 0) {
              m_state = State::normal;
            }
          }
          break;
      }
    }
  }

  std::string& out() { return m_out; }

 private:
  enum class State {
    normal,
    string,
    escape,
    after_key,
    after_colon,
    skip,
    skip_string,
    skip_escape
  };

  // String bytes: copied unless skipped; the start of each kept string is kept for key matching.
  void take(std::string_view bytes) {
    if (m_state == State::skip_string || m_state == State::skip_escape) return;
    m_out.append(bytes);
    if (m_token.size() < 16) m_token.append(bytes.substr(0, 16 - m_token.size()));
  }
  bool is_list_key() const {
    return m_token == "packages\"" || m_token == "unowned\"" || m_token == "files\"";
  }

  State m_state = State::normal;
  std::string m_out;
  std::string m_token;  // the current string's first bytes and its closing quote
  std::size_t m_depth = 0;
};

// Opens a file of the image: never through a symlink in its last component, never anything but a
// regular file (a FIFO would block, /dev/zero never end).
Result<UniqueFd> open_regular(const std::filesystem::path& file) {
  UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd.valid()) {
    if (errno == ELOOP)
      return unexpected(ErrorCode::invalid_argument, file.string() + " is a symlink");
    return unexpected(Error::from_errno("open " + file.string(), errno));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0)
    return unexpected(Error::from_errno("stat " + file.string(), errno));
  if (!S_ISREG(st.st_mode))
    return unexpected(ErrorCode::invalid_argument, file.string() + " is not a regular file");
  return fd;
}

Result<std::string> read_stripped(const std::filesystem::path& file) {
  ENVD_TRY(UniqueFd fd, open_regular(file));
  ListStripper stripper;
  std::vector<char> buf(1 << 16);
  for (;;) {
    ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return unexpected(Error::from_errno("read " + file.string(), errno));
    if (n == 0) break;
    stripper.feed(std::string_view(buf.data(), static_cast<std::size_t>(n)));
  }
  return std::move(stripper.out());
}

}  // namespace

std::vector<std::string> split_path(std::string_view path) {
  std::vector<std::string> out;
  std::size_t i = 0;
  while (i < path.size()) {
    std::size_t slash = path.find('/', i);
    if (slash == std::string_view::npos) slash = path.size();
    if (slash > i) out.emplace_back(path.substr(i, slash - i));
    i = slash + 1;
  }
  return out;
}

bool is_normal_absolute(std::string_view path) {
  if (path == "/") return true;
  if (path.empty() || path.front() != '/' || path.back() == '/') return false;
  if (path.find('\0') != std::string_view::npos) return false;
  std::size_t i = 1;
  while (i <= path.size()) {
    std::size_t slash = path.find('/', i);
    if (slash == std::string_view::npos) slash = path.size();
    std::string_view comp = path.substr(i, slash - i);
    if (comp.empty() || comp == "." || comp == "..") return false;
    i = slash + 1;
  }
  return true;
}

namespace {

enum class Document { snapshot, record };

// The roots named by a snapshot (its file lists stripped) or a record, checked.
Result<ImageRoots> parse_roots(const std::string& text, Document kind, const std::string& what) {
  auto bad = [&](const std::string& msg) {
    return unexpected(ErrorCode::invalid_argument, what + ": " + msg);
  };
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return bad(std::string("not JSON: ") + e.what());
  }
  if (kind == Document::record) {
    const auto media_type = doc.is_object() ? doc.find("media_type") : doc.end();
    if (media_type == doc.end() || !media_type->is_string() ||
        media_type->get<std::string>() != k_roots_record_media_type)
      return bad("media_type is not " + std::string(k_roots_record_media_type));
  }
  ImageRoots roots;
  try {
    const auto& envs = doc.at("environments");
    for (std::size_t i = 0; i < envs.size(); ++i) {
      const auto& e = envs.at(i);
      const std::string where = "environments[" + std::to_string(i) + "]";
      ImageEnvironment env;
      env.prefix = e.at("prefix").get<std::string>();
      env.kind = e.at("kind").get<std::string>();
      env.partial = e.value("partial", false);
      // "/" only as a partial environment (a system interpreter's part of it): never mounted whole.
      if (!is_normal_absolute(env.prefix) || (env.prefix == "/" && !env.partial))
        return bad(where + ".prefix \"" + env.prefix + "\" is not a normalised absolute path");
      roots.environments.push_back(std::move(env));
    }
    const auto& sources = doc.value("sources", nlohmann::json::array());
    for (std::size_t i = 0; i < sources.size(); ++i) {
      std::string root = sources.at(i).at("root").get<std::string>();
      if (!is_normal_absolute(root) || root == "/")
        return bad("sources[" + std::to_string(i) + "].root \"" + root +
                   "\" is not a normalised absolute path");
      roots.sources.push_back(std::move(root));
    }
  } catch (const nlohmann::json::exception& e) {
    return bad(e.what());
  }
  return roots;
}

}  // namespace

Result<ImageRoots> read_image_roots(const std::filesystem::path& snapshot_file) {
  const std::string what = "snapshot " + snapshot_file.string();
  ENVD_TRY(auto text, read_stripped(snapshot_file));
  return parse_roots(text, Document::snapshot, what);
}

std::filesystem::path roots_record_path(const std::filesystem::path& rootfs) {
  std::filesystem::path out = rootfs;
  out += ".roots.json";
  return out;
}

std::string roots_record_text(const ImageRoots& roots) {
  nlohmann::json envs = nlohmann::json::array();
  for (const auto& e : roots.environments)
    envs.push_back({{"prefix", e.prefix}, {"kind", e.kind}, {"partial", e.partial}});
  nlohmann::json sources = nlohmann::json::array();
  for (const auto& s : roots.sources) sources.push_back({{"root", s}});
  nlohmann::json doc = {{"media_type", k_roots_record_media_type},
                        {"environments", std::move(envs)},
                        {"sources", std::move(sources)}};
  return doc.dump() + "\n";
}

Result<ImageRoots> read_roots_record(const std::filesystem::path& file) {
  ENVD_TRY(UniqueFd fd, open_regular(file));
  std::string text;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return unexpected(Error::from_errno("read " + file.string(), errno));
    if (n == 0) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  return parse_roots(text, Document::record, "roots record " + file.string());
}

Result<bool> write_roots_record(const std::filesystem::path& rootfs) {
  return write_roots_record(rootfs / k_snapshot_in_image, roots_record_path(rootfs));
}

Result<bool> write_roots_record(const std::filesystem::path& snapshot,
                                const std::filesystem::path& record) {
  struct stat st {};
  if (::lstat(snapshot.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return false;  // not an envd image
    return unexpected(Error::from_errno("stat " + snapshot.string(), errno));
  }
  auto roots = read_image_roots(snapshot);
  if (!roots) {
    if (roots.error().code() != ErrorCode::invalid_argument) return unexpected(roots.error());
    log::warn("node", "image roots not recorded: the snapshot is refused",
              {{"snapshot", snapshot.string()}, {"error", roots.error().message()}});
    return false;
  }
  // Not synced: the record is as durable as the rootfs beside it, whose directory the caller
  // commits (renamed into place whole, synced or under a deferred-sync record). A record cut
  // short by a crash anyway would be refused by a launch, which reads the snapshot instead.
  const std::string text = roots_record_text(*roots);
  UniqueFd fd(::open(record.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644));
  if (!fd.valid()) return unexpected(Error::from_errno("create " + record.string(), errno));
  std::size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return unexpected(Error::from_errno("write " + record.string(), errno));
    done += static_cast<std::size_t>(n);
  }
  return true;
}

Result<ImageRoots> load_image_roots(const std::filesystem::path& rootfs) {
  const auto record = roots_record_path(rootfs);
  auto roots = read_roots_record(record);
  if (roots) return roots;
  if (roots.error().code() != ErrorCode::not_found)
    log::warn("sandbox", "roots record unusable; reading the snapshot instead",
              {{"record", record.string()}, {"error", roots.error().message()}});
  return read_image_roots(rootfs / k_snapshot_in_image);
}

}  // namespace envd::node::detail
