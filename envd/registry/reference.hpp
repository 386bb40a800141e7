// Image references as the command line takes them (DESIGN.md §5):
// HOST[:PORT]/NAMESPACE/NAME[:TAG|@DIGEST] for a registry, NAMESPACE/NAME[:TAG|@DIGEST] for the
// local store; and which scheme (http or https) a registry host is spoken to with.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "envd/oci/digest.hpp"
#include "envd/util/error.hpp"

namespace envd::registry {

// A repository name as the distribution spec allows it: path components matching
// [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)* joined by '/', at most 255 characters in all.
// https://github.com/opencontainers/distribution-spec/blob/v1.1.0/spec.md#pulling-manifests
bool is_valid_repository(std::string_view name);

// A tag: [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}.
bool is_valid_tag(std::string_view tag);

struct Reference {
  std::string host;        // "registry.example.com:5000", "[::1]:5000"; empty: the local store
  std::string repository;  // "team/env": NAMESPACE/NAME, two or more components
  std::string tag;         // "v1"; empty when none was written
  std::optional<oci::Digest> digest;

  bool is_local() const { return host.empty(); }
  // What to ask a registry or store for: the digest when given, else the tag, else "latest".
  std::string reference() const;
  // Canonical text: [HOST/]REPOSITORY[:TAG][@DIGEST].
  std::string str() const;
};

// Parses a reference. The first component is a registry host when it contains '.' or ':', is
// "localhost", or is a bracketed IPv6 address; otherwise the reference names the local store.
// Pure. Errors: invalid_argument naming the whole text and the bad part (empty, bad host or port,
// bad repository component, fewer than two repository components, bad tag, bad digest).
Result<Reference> parse_reference(std::string_view text);

enum class Scheme { http, https };

std::string_view to_string(Scheme scheme);

// Whether `host` (a host name or address, optionally with ":PORT", IPv6 in brackets) is this
// machine: localhost, 127.0.0.0/8, ::1.
bool is_loopback_host(std::string_view host);

// Registries on loopback are spoken to over plain http, all others over https (DESIGN.md §5);
// callers override per host (ClientOptions).
Scheme default_scheme(std::string_view host);

// "host:port" split into its parts; the port is `default_port` when absent; IPv6 brackets are
// removed from the host. Errors: invalid_argument naming the text.
struct HostPort {
  std::string host;
  int port = 0;
};
Result<HostPort> split_host_port(std::string_view authority, int default_port);

}  // namespace envd::registry
