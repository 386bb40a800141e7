#include "envd/util/listen_address.hpp"

#include <charconv>

namespace envd {

Result<std::pair<std::string, int>> parse_listen_address(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return Error(ErrorCode::invalid_argument,
                 "listen address \"" + std::string(text) + "\": " + std::string(why));
  };
  std::size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) return bad("expected HOST:PORT");
  std::string_view host = text.substr(0, colon);
  std::string_view port_text = text.substr(colon + 1);
  if (host.starts_with('[')) {
    if (!host.ends_with(']') || host.size() < 3)
      return bad("unbalanced [ ] around the IPv6 address");
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string_view::npos) {
    return bad("write an IPv6 address in brackets: [::1]:5000");
  }
  if (host.empty()) return bad("empty host");
  int port = -1;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || end != port_text.data() + port_text.size() || port < 0 || port > 65535)
    return bad("port must be a number from 0 to 65535");
  return std::pair<std::string, int>(std::string(host), port);
}

}  // namespace envd
