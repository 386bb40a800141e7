// Token checks for the builder API: Bearer and Basic (password = token) headers, hashed token
// comparison in constant time, namespace matching by whole path components.
#include "builder/auth.hpp"

#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cctype>

#include "envd/oci/digest.hpp"

namespace envd::builder {
namespace {

bool is_lower_hex64(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::optional<std::string> base64_decode(std::string_view in) {
  if (in.empty() || in.size() % 4 != 0 || in.size() > 8192) return std::nullopt;
  std::string out(in.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(in.data()),
                          static_cast<int>(in.size()));
  if (n < 0) return std::nullopt;
  // EVP_DecodeBlock counts the bytes the '=' padding stands for; drop them.
  std::size_t pad = in.ends_with("==") ? 2 : in.ends_with('=') ? 1 : 0;
  out.resize(static_cast<std::size_t>(n) - pad);
  return out;
}

// The token carried by an Authorization header value, if any.
std::optional<std::string> token_from_header(std::string_view header) {
  header = trim(header);
  std::size_t space = header.find(' ');
  if (space == std::string_view::npos) return std::nullopt;
  std::string_view scheme = header.substr(0, space);
  std::string_view rest = trim(header.substr(space + 1));
  if (rest.empty()) return std::nullopt;
  if (iequals(scheme, "Bearer")) return std::string(rest);
  if (iequals(scheme, "Basic")) {
    auto decoded = base64_decode(rest);
    if (!decoded) return std::nullopt;
    std::size_t colon = decoded->find(':');
    if (colon == std::string::npos || colon + 1 == decoded->size()) return std::nullopt;
    return decoded->substr(colon + 1);
  }
  return std::nullopt;
}

}  // namespace

std::string_view to_string(Access access) {
  return access == Access::push ? "push" : "pull";
}

bool Principal::may(std::string_view repository, Access wanted) const {
  if (wanted == Access::push && access != Access::push) return false;
  for (std::string_view ns : namespaces) {
    if (ns == "*") return true;
    while (ns.ends_with('/')) ns.remove_suffix(1);
    if (ns.empty()) continue;
    if (repository == ns) return true;
    if (repository.size() > ns.size() && repository.starts_with(ns) && repository[ns.size()] == '/')
      return true;
  }
  return false;
}

std::string token_hash(std::string_view token) {
  return std::string(oci::sha256_of(token).hex());
}

bool is_loopback_host(std::string_view host) {
  if (host.starts_with('[') && host.ends_with(']')) host = host.substr(1, host.size() - 2);
  if (iequals(host, "localhost")) return true;
  std::string h(host);
  in_addr v4{};
  if (::inet_pton(AF_INET, h.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (::inet_pton(AF_INET6, h.c_str(), &v6) == 1) return IN6_IS_ADDR_LOOPBACK(&v6);
  return false;
}

Result<Authenticator> Authenticator::create(AuthConfig config, std::string_view listen_host) {
  if (config.tokens.empty() && !is_loopback_host(listen_host))
    return Error(ErrorCode::failed_precondition,
                 "no access tokens configured: refusing to listen on " + std::string(listen_host) +
                     " (without tokens the builder only listens on loopback, e.g. 127.0.0.1; "
                     "add tokens to the builder config)");
  for (const auto& t : config.tokens) {
    if (t.name.empty()) return Error(ErrorCode::invalid_argument, "token with an empty name");
    if (!is_lower_hex64(t.sha256_hex))
      return Error(ErrorCode::invalid_argument,
                   "token " + t.name + ": sha256 must be 64 lowercase hex digits");
    if (t.namespaces.empty())
      return Error(ErrorCode::invalid_argument, "token " + t.name + ": no namespaces");
  }
  return Authenticator(std::move(config.tokens));
}

std::optional<Principal> Authenticator::authenticate(std::string_view authorization) const {
  if (open_access()) return Principal{"local", Access::push, {"*"}};
  auto token = token_from_header(authorization);
  if (!token) return std::nullopt;
  std::string hash = token_hash(*token);
  const TokenGrant* match = nullptr;
  // Compare against every grant, in constant time each, so timing says nothing about which (if
  // any) matched.
  for (const auto& t : m_tokens)
    if (CRYPTO_memcmp(t.sha256_hex.data(), hash.data(), 64) == 0 && match == nullptr) match = &t;
  if (match == nullptr) return std::nullopt;
  return Principal{match->name, match->access, match->namespaces};
}

}  // namespace envd::builder
