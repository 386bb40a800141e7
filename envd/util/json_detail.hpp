// For .cpp files only (never include from a public header): nlohmann-json plus envd's canonical
// writer. Canonical JSON = keys sorted by byte order, no insignificant whitespace, UTF-8 as is.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "envd/util/error.hpp"

namespace envd::json {

// nlohmann's object_t is a std::map, so keys come out sorted; -1 indent means no whitespace.
// Errors: invalid_argument when a string is not valid UTF-8 (names the offending text).
Result<std::string> canonical_dump(const nlohmann::json& value);

// Parses JSON text; errors name `what` (a file name or document kind) and the parser's position.
Result<nlohmann::json> parse(std::string_view text, std::string_view what);

}  // namespace envd::json
