// Parsing image references and choosing the scheme for a registry host.
#include "envd/registry/reference.hpp"

#include <arpa/inet.h>

#include <cctype>
#include <charconv>

namespace envd::registry {
namespace {

bool is_lower_alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

// One path component: [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
bool is_valid_component(std::string_view c) {
  if (c.empty() || !is_lower_alnum(c.front()) || !is_lower_alnum(c.back())) return false;
  std::size_t i = 0;
  while (i < c.size()) {
    if (is_lower_alnum(c[i])) {
      ++i;
      continue;
    }
    std::size_t start = i;
    while (i < c.size() && !is_lower_alnum(c[i])) ++i;
    std::string_view sep = c.substr(start, i - start);
    bool dashes = sep.find_first_not_of('-') == std::string_view::npos;
    if (sep != "." && sep != "_" && sep != "__" && !dashes) return false;
  }
  return true;
}

bool is_hostname(std::string_view h) {
  if (h.empty() || h.size() > 253) return false;
  std::size_t start = 0;
  while (start <= h.size()) {
    std::size_t dot = h.find('.', start);
    std::string_view label = h.substr(start, dot == std::string_view::npos ? dot : dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-')
      return false;
    for (char c : label)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-') return false;
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return true;
}

Unexpected bad(std::string_view text, std::string_view why) {
  return unexpected(ErrorCode::invalid_argument,
                    "invalid image reference \"" + std::string(text) + "\": " + std::string(why));
}

bool looks_like_host(std::string_view first) {
  return first.find('.') != std::string_view::npos || first.find(':') != std::string_view::npos ||
         first == "localhost" || first.starts_with('[');
}

}  // namespace

bool is_valid_repository(std::string_view name) {
  if (name.empty() || name.size() > 255) return false;
  std::size_t start = 0;
  while (true) {
    std::size_t slash = name.find('/', start);
    std::string_view c =
        name.substr(start, slash == std::string_view::npos ? slash : slash - start);
    if (!is_valid_component(c)) return false;
    if (slash == std::string_view::npos) return true;
    start = slash + 1;
  }
}

bool is_valid_tag(std::string_view tag) {
  if (tag.empty() || tag.size() > 128) return false;
  auto word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  if (!word(tag.front())) return false;
  for (char c : tag)
    if (!word(c) && c != '.' && c != '-') return false;
  return true;
}

std::string Reference::reference() const {
  if (digest) return digest->str();
  return tag.empty() ? "latest" : tag;
}

std::string Reference::str() const {
  std::string out = host.empty() ? repository : host + "/" + repository;
  if (!tag.empty()) out += ":" + tag;
  if (digest) out += "@" + digest->str();
  return out;
}

Result<HostPort> split_host_port(std::string_view authority, int default_port) {
  HostPort out;
  std::string_view port_text;
  if (authority.starts_with('[')) {
    std::size_t close = authority.find(']');
    if (close == std::string_view::npos)
      return unexpected(ErrorCode::invalid_argument,
                        "invalid host \"" + std::string(authority) + "\": unclosed '['");
    out.host = std::string(authority.substr(1, close - 1));
    std::string_view rest = authority.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':')
        return unexpected(ErrorCode::invalid_argument,
                          "invalid host \"" + std::string(authority) + "\": text after ']'");
      port_text = rest.substr(1);
      if (port_text.empty()) port_text = "x";  // "[::1]:" is an empty port: rejected below
    }
    in6_addr v6{};
    if (::inet_pton(AF_INET6, out.host.c_str(), &v6) != 1)
      return unexpected(ErrorCode::invalid_argument,
                        "invalid host \"" + std::string(authority) + "\": not an IPv6 address");
  } else {
    std::size_t colon = authority.find(':');
    out.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) {
      port_text = authority.substr(colon + 1);
      if (port_text.empty()) port_text = "x";
    }
    if (!is_hostname(out.host))
      return unexpected(ErrorCode::invalid_argument,
                        "invalid host \"" + std::string(authority) + "\"");
  }
  out.port = default_port;
  if (!port_text.empty()) {
    int port = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc() || end != port_text.data() + port_text.size() || port < 1 || port > 65535)
      return unexpected(ErrorCode::invalid_argument,
                        "invalid port in \"" + std::string(authority) + "\"");
    out.port = port;
  }
  return out;
}

Result<Reference> parse_reference(std::string_view text) {
  if (text.empty()) return bad(text, "empty");
  Reference ref;
  std::string_view rest = text;
  if (std::size_t at = rest.find('@'); at != std::string_view::npos) {
    auto d = oci::Digest::parse(rest.substr(at + 1));
    if (!d) return bad(text, d.error().message());
    ref.digest = *d;
    rest = rest.substr(0, at);
  }
  if (std::size_t slash = rest.find('/');
      slash != std::string_view::npos && looks_like_host(rest.substr(0, slash))) {
    ref.host = std::string(rest.substr(0, slash));
    if (auto hp = split_host_port(ref.host, 0); !hp) return bad(text, hp.error().message());
    rest = rest.substr(slash + 1);
  }
  std::size_t last_slash = rest.rfind('/');
  std::size_t colon = rest.rfind(':');
  if (colon != std::string_view::npos &&
      (last_slash == std::string_view::npos || colon > last_slash)) {
    ref.tag = std::string(rest.substr(colon + 1));
    if (!is_valid_tag(ref.tag)) return bad(text, "invalid tag \"" + ref.tag + "\"");
    rest = rest.substr(0, colon);
  }
  if (rest.empty()) return bad(text, "no repository name");
  if (!is_valid_repository(rest))
    return bad(text, "invalid repository name \"" + std::string(rest) +
                         "\" (lowercase letters, digits and . _ - between them, '/' between "
                         "components)");
  if (rest.find('/') == std::string_view::npos)
    return bad(text, "repository \"" + std::string(rest) + "\" must be NAMESPACE/NAME");
  ref.repository = std::string(rest);
  return ref;
}

std::string_view to_string(Scheme scheme) {
  return scheme == Scheme::http ? "http" : "https";
}

bool is_loopback_host(std::string_view host) {
  std::string h;
  if (auto hp = split_host_port(host, 0); hp) {
    h = hp->host;
  } else {
    h = std::string(host);  // a bare IPv6 address ("::1") has colons but no brackets
  }
  if (h.size() == 9) {
    bool localhost = true;
    for (std::size_t i = 0; i < 9; ++i)
      localhost = localhost && std::tolower(static_cast<unsigned char>(h[i])) == "localhost"[i];
    if (localhost) return true;
  }
  in_addr v4{};
  if (::inet_pton(AF_INET, h.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (::inet_pton(AF_INET6, h.c_str(), &v6) == 1) return IN6_IS_ADDR_LOOPBACK(&v6);
  return false;
}

Scheme default_scheme(std::string_view host) {
  return is_loopback_host(host) ? Scheme::http : Scheme::https;
}

}  // namespace envd::registry
