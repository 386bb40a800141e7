// Test support for the registry tests: a RegistryServer on 127.0.0.1 (OS-chosen port) over a
// FsBlobStore and RegistryIndex in a scratch directory, and small helpers for OCI error bodies.
#pragma once

#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
#define CPPHTTPLIB_OPENSSL_SUPPORT  // must match how libcpp-httplib was built (class layouts)
#endif
#include <doctest/doctest.h>
#include <httplib.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "builder/registry_index.hpp"
#include "builder/registry_server.hpp"
#include "envd/oci/image.hpp"
#include "envd/store/fs_blob_store.hpp"
#include "support/scratch_dir.hpp"

namespace envd::builder::registry_test {

using envd::test::ScratchDir;

// The error message of a failed Result, "" for a value (doctest may evaluate messages eagerly).
template <class R>
inline std::string why(const R& r) {
  return r ? std::string() : r.error().message();
}

// A server on 127.0.0.1 with an OS-chosen port over a FsBlobStore and index in a scratch dir.
struct Registry {
  ScratchDir scratch;
  ServerOptions options;
  std::unique_ptr<store::FsBlobStore> blobs;
  std::unique_ptr<RegistryIndex> index;
  std::unique_ptr<RegistryServer> server;
  int port = 0;

  explicit Registry(ServerOptions o = {}) : options(std::move(o)) {
    auto b = store::FsBlobStore::create(scratch / "store");
    REQUIRE(b.has_value());
    blobs = std::move(*b);
    auto i = RegistryIndex::open(scratch / "registry.sqlite");
    REQUIRE(i.has_value());
    index = std::move(*i);
    options.upload_dir = scratch / "uploads";
    restart();
  }
  void restart() {
    server.reset();
    auto s = RegistryServer::create(*blobs, *index, options);
    REQUIRE_MESSAGE(s.has_value(), why(s));
    server = std::move(*s);
    auto p = server->start();
    REQUIRE(p.has_value());
    port = *p;
  }
  httplib::Client client(const std::string& token = {}) const {
    httplib::Client c("127.0.0.1", port);
    if (!token.empty()) c.set_bearer_token_auth(token);
    return c;
  }
  std::string url() const { return "127.0.0.1:" + std::to_string(port); }
  std::size_t stored_blobs() const { return blobs->list()->size(); }
};

inline std::string code_of(const httplib::Result& r) {
  auto j = nlohmann::json::parse(r->body, nullptr, false);
  if (j.is_discarded() || !j.contains("errors") || j["errors"].empty()) return "(no error body)";
  return j["errors"][0]["code"].get<std::string>();
}

inline std::string digest_of(std::string_view data) {
  return oci::sha256_of(data).str();
}

inline oci::Descriptor descriptor(std::string_view media_type, std::string_view data) {
  return oci::Descriptor{std::string(media_type), oci::sha256_of(data), data.size(), {}};
}

}  // namespace envd::builder::registry_test
