// A service's listen address from config or flags.
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include "envd/util/error.hpp"

namespace envd {

// Splits "HOST:PORT" or "[IPv6]:PORT" (port 0-65535) into host and port. Errors:
// invalid_argument naming the text.
Result<std::pair<std::string, int>> parse_listen_address(std::string_view text);

}  // namespace envd
