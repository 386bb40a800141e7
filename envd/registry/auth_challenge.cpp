// WWW-Authenticate parsing (RFC 7235 §2.1 and §4.1) and token-server answers.
#include "envd/registry/auth_challenge.hpp"

#include <cctype>

#include "envd/util/json_detail.hpp"

namespace envd::registry {
namespace {

// RFC 7230 tchar.
bool is_tchar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

class Scanner {
 public:
  explicit Scanner(std::string_view s) : m_s(s) {}
  bool done() const { return m_i >= m_s.size(); }
  char peek() const { return done() ? '\0' : m_s[m_i]; }
  void skip_spaces() {
    while (!done() && (m_s[m_i] == ' ' || m_s[m_i] == '\t')) ++m_i;
  }
  void skip_spaces_and_commas() {
    while (!done() && (m_s[m_i] == ' ' || m_s[m_i] == '\t' || m_s[m_i] == ',')) ++m_i;
  }
  std::string_view token() {
    std::size_t start = m_i;
    while (!done() && is_tchar(m_s[m_i])) ++m_i;
    return m_s.substr(start, m_i - start);
  }
  // After a token: whether '=' follows (an auth-param), without consuming anything.
  bool param_follows() const {
    std::size_t j = m_i;
    while (j < m_s.size() && is_tchar(m_s[j])) ++j;
    if (j == m_i) return false;
    while (j < m_s.size() && (m_s[j] == ' ' || m_s[j] == '\t')) ++j;
    return j < m_s.size() && m_s[j] == '=' && (j + 1 >= m_s.size() || m_s[j + 1] != '=');
  }
  std::string value() {
    if (peek() != '"') return std::string(token());
    ++m_i;
    std::string out;
    while (!done() && m_s[m_i] != '"') {
      if (m_s[m_i] == '\\' && m_i + 1 < m_s.size()) ++m_i;
      out += m_s[m_i++];
    }
    if (!done()) ++m_i;  // closing quote
    return out;
  }
  void skip_to_comma() {
    while (!done() && m_s[m_i] != ',') ++m_i;
  }
  void advance() { ++m_i; }

 private:
  std::string_view m_s;
  std::size_t m_i = 0;
};

}  // namespace

std::vector<Challenge> parse_challenges(std::string_view header_value) {
  std::vector<Challenge> out;
  Scanner s(header_value);
  while (true) {
    s.skip_spaces_and_commas();
    if (s.done()) break;
    std::string_view scheme = s.token();
    if (scheme.empty()) {  // not a token: skip this element
      s.advance();
      s.skip_to_comma();
      continue;
    }
    Challenge c;
    c.scheme = lower(scheme);
    s.skip_spaces();
    // Parameters: name=value separated by commas, until a token not followed by '=' starts the
    // next challenge. A token68 (Basic's "credentials" form) is skipped.
    while (!s.done()) {
      s.skip_spaces_and_commas();
      if (!s.param_follows()) {
        if (!s.done() && s.peek() != ',' && !is_tchar(s.peek())) s.skip_to_comma();
        break;
      }
      std::string name = lower(s.token());
      s.skip_spaces();
      s.advance();  // '='
      s.skip_spaces();
      c.params[name] = s.value();
      s.skip_spaces();
    }
    out.push_back(std::move(c));
  }
  return out;
}

Result<std::string> parse_token_response(std::string_view body) {
  ENVD_TRY(nlohmann::json j, json::parse(body, "token response"));
  if (j.is_object()) {
    for (const char* key : {"token", "access_token"}) {
      auto it = j.find(key);
      if (it != j.end() && it->is_string() && !it->get<std::string>().empty())
        return it->get<std::string>();
    }
  }
  return unexpected(ErrorCode::invalid_argument,
                    "token response has neither \"token\" nor \"access_token\"");
}

std::string base64_encode(std::string_view data) {
  static constexpr char k_alphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  std::size_t i = 0;
  auto byte = [&](std::size_t k) { return static_cast<unsigned char>(data[k]); };
  for (; i + 2 < data.size(); i += 3) {
    unsigned v = (byte(i) << 16) | (byte(i + 1) << 8) | byte(i + 2);
    for (int shift : {18, 12, 6, 0}) out += k_alphabet[(v >> shift) & 63];
  }
  if (std::size_t rest = data.size() - i; rest > 0) {
    unsigned v = byte(i) << 16;
    if (rest == 2) v |= byte(i + 1) << 8;
    out += k_alphabet[(v >> 18) & 63];
    out += k_alphabet[(v >> 12) & 63];
    out += rest == 2 ? k_alphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string url_encode(std::string_view text) {
  static constexpr char k_hex[] = "0123456789ABCDEF";
  std::string out;
  for (char c : text) {
    auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) || c == '-' || c == '.' || c == '_' || c == '~') {
      out += c;
    } else {
      out += '%';
      out += k_hex[u >> 4];
      out += k_hex[u & 15];
    }
  }
  return out;
}

}  // namespace envd::registry
