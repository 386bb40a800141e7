// Who may do what on the builder's HTTP API: tokens from the builder config (stored as SHA-256
// hashes), each limited to repository namespaces and to pull or push; the loopback-only
// single-user mode when no token is configured.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "envd/util/error.hpp"

namespace envd::builder {

// Access rights, ordered: push includes pull.
enum class Access { pull, push };

std::string_view to_string(Access access);

// One configured token.
struct TokenGrant {
  std::string name;                     // who holds it (logged, never the token itself)
  std::string sha256_hex;               // SHA-256 of the token text, 64 lowercase hex digits
  std::vector<std::string> namespaces;  // "*" or repository prefixes: "team" covers team/...
  Access access = Access::pull;
};

struct AuthConfig {
  std::vector<TokenGrant> tokens;
};

// An authenticated caller: a token holder, or the local user in loopback mode.
struct Principal {
  std::string name;
  Access access = Access::pull;
  std::vector<std::string> namespaces;

  // Whether this caller may do `access` on `repository`. A namespace entry "team" (or "team/")
  // matches "team" and everything under "team/", never "teamx/..."; "*" matches everything.
  bool may(std::string_view repository, Access access) const;
};

// Hex SHA-256 of a token, as stored in the config.
std::string token_hash(std::string_view token);

// Whether `host` (a listen address) only accepts connections from this machine: localhost,
// 127.0.0.0/8, ::1.
bool is_loopback_host(std::string_view host);

// Checks Authorization headers against the configured tokens. Immutable after create();
// thread-safe.
class Authenticator {
 public:
  // Errors: failed_precondition when no token is configured and `listen_host` is not loopback
  // (anyone on the network would have full access); invalid_argument for a malformed grant
  // (hash not 64 lowercase hex, no namespaces, empty name).
  static Result<Authenticator> create(AuthConfig config, std::string_view listen_host);

  // True when no token is configured: every caller is the local user with push on "*".
  bool open_access() const { return m_tokens.empty(); }

  // The caller named by an Authorization header value ("Bearer <token>", or "Basic
  // base64(user:token)" as `skopeo --creds user:token` sends; the user name is ignored).
  // nullopt when the header is missing, malformed or names no configured token (in open-access
  // mode every caller is the local user, header or not).
  std::optional<Principal> authenticate(std::string_view authorization) const;

 private:
  explicit Authenticator(std::vector<TokenGrant> tokens) : m_tokens(std::move(tokens)) {}
  std::vector<TokenGrant> m_tokens;
};

}  // namespace envd::builder
