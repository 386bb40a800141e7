// Reading WWW-Authenticate challenges (RFC 7235 §4.1) and token responses of the distribution
// token flow: https://distribution.github.io/distribution/spec/auth/token/
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "envd/util/error.hpp"

namespace envd::registry {

struct Challenge {
  std::string scheme;                         // lowercased: "bearer", "basic"
  std::map<std::string, std::string> params;  // keys lowercased, values unquoted

  std::string param(const std::string& key) const {
    auto it = params.find(key);
    return it == params.end() ? std::string() : it->second;
  }
};

// Every challenge in one header value ("Bearer realm=\"https://a/token\",service=\"r\"", possibly
// several challenges separated by commas). Pure; malformed parts are skipped, never an error.
std::vector<Challenge> parse_challenges(std::string_view header_value);

// The token of a token-server answer: {"token": ...} or {"access_token": ...}.
// Errors: invalid_argument (not JSON, neither field a non-empty string).
Result<std::string> parse_token_response(std::string_view body);

// Base64 (RFC 4648 §4, with padding), for Basic credentials.
std::string base64_encode(std::string_view data);

// Percent-encodes everything but unreserved characters (RFC 3986 §2.3), for query values.
std::string url_encode(std::string_view text);

}  // namespace envd::registry
