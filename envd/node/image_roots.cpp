// Reading where an envd image's files belong from its /.envd/snapshot.json (see image_roots.hpp),
// streaming past the file lists, which are nearly all of the document.
#include "envd/node/image_roots.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string_view>

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

Result<std::string> read_stripped(const std::filesystem::path& file) {
  UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return unexpected(Error::from_errno("open " + file.string(), errno));
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

Result<ImageRoots> read_image_roots(const std::filesystem::path& snapshot_file) {
  const std::string what = "snapshot " + snapshot_file.string();
  ENVD_TRY(auto text, read_stripped(snapshot_file));
  auto bad = [&](const std::string& msg) {
    return unexpected(ErrorCode::invalid_argument, what + ": " + msg);
  };
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return bad(std::string("not JSON: ") + e.what());
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

}  // namespace envd::node::detail
