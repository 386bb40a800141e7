// Canonical JSON serialisation and exception-free parsing on top of nlohmann-json.
#include "envd/util/json_detail.hpp"

namespace envd::json {

Result<std::string> canonical_dump(const nlohmann::json& value) {
  try {
    return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::strict);
  } catch (const nlohmann::json::exception& e) {
    return Error(ErrorCode::invalid_argument, std::string("serialise JSON: ") + e.what());
  }
}

Result<nlohmann::json> parse(std::string_view text, std::string_view what) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    return Error(ErrorCode::invalid_argument, std::string(what) + ": invalid JSON at byte " +
                                                  std::to_string(e.byte) + ": " + e.what());
  }
}

}  // namespace envd::json
