// RegistryClient and copy_image against real registries: our RegistryServer (monolithic and
// chunked pushes, mounts, indexes, tokens) and Debian's docker-registry (an image skopeo pushed;
// htpasswd basic auth). Misbehaving servers are in registry_client_faults_test.cpp.
#include "envd/registry/registry_client.hpp"

#include <crypt.h>

#include <map>

#include "../../builder/registry_fixture.hpp"
#include "builder/auth.hpp"
#include "distribution_fixture.hpp"
#include "envd/registry/image_copy.hpp"
#include "envd/store/memory_blob_store.hpp"
#include "test_servers.hpp"

namespace envd::registry {
namespace {

namespace fs = std::filesystem;
using builder::registry_test::Registry;
using envd::test::ScratchDir;
using namespace test_support;

struct LocalImages {
  store::MemoryBlobStore blobs;
  std::map<std::string, ManifestLocation> refs;

  oci::Descriptor add_image(const std::vector<std::string>& layers, const std::string& tag) {
    oci::ImageConfig config;
    config.architecture = "amd64";
    config.os = "linux";
    std::vector<oci::Descriptor> descs;
    for (const auto& l : layers) {
      REQUIRE(blobs.put(l).has_value());
      config.diff_ids.push_back(oci::sha256_of(l));
      descs.push_back(descriptor_of(oci::media_type::k_layer_gzip, l));
    }
    std::string config_json = oci::serialize(config);
    REQUIRE(blobs.put(config_json).has_value());
    oci::ImageManifest m{descriptor_of(oci::media_type::k_config, config_json), descs, {}};
    return add_manifest(oci::serialize(m), std::string(oci::media_type::k_manifest), tag);
  }
  oci::Descriptor add_manifest(const std::string& bytes, const std::string& type,
                               const std::string& tag) {
    auto d = blobs.put(bytes);
    REQUIRE(d.has_value());
    refs.insert_or_assign(d->str(), ManifestLocation{*d, type});
    if (!tag.empty()) refs.insert_or_assign(tag, ManifestLocation{*d, type});
    return oci::Descriptor{type, *d, bytes.size(), {}};
  }
  StoreImageSource source() {
    return StoreImageSource(blobs, "test/img",
                            [this](const std::string& ref) -> Result<ManifestLocation> {
                              auto it = refs.find(ref);
                              if (it == refs.end())
                                return unexpected(ErrorCode::not_found, "no " + ref);
                              return it->second;
                            });
  }
};

}  // namespace

TEST_CASE("our registry: push (monolithic and chunked), skip, mount, pull back verified") {
  Registry reg;
  LocalImages local;
  std::vector<std::string> layers = {bytes(3000, 1), bytes(10000, 2), std::string()};
  auto image = local.add_image(layers, "v1");
  ClientOptions o = fast_options();
  o.chunk_size = 4096;  // the 10000-byte layer goes in three PATCH chunks
  auto client = client_for(reg.url(), o);
  REQUIRE(client->ping().has_value());

  auto source = local.source();
  auto copied = copy_image(source, "v1", *client, "team/img", "v1");
  REQUIRE_MESSAGE(copied.has_value(), why(copied));
  CHECK(copied->manifest_digest == image.digest);
  CHECK(copied->blobs_copied == 4);
  CHECK(copied->blobs_skipped == 0);
  auto config = oci::parse_manifest(*local.blobs.read_all(image.digest))->config;
  CHECK(copied->bytes_copied == 3000 + 10000 + config->size);
  auto tagged = reg.index->resolve("team/img", "v1");
  REQUIRE(tagged.has_value());
  REQUIRE(tagged->has_value());
  CHECK((*tagged)->digest == image.digest);

  auto again = copy_image(source, "v1", *client, "team/img", "v1");
  REQUIRE(again.has_value());
  CHECK(again->blobs_copied == 0);
  CHECK(again->blobs_skipped == 4);

  auto m = client->get_manifest("team/img", "v1");
  REQUIRE_MESSAGE(m.has_value(), why(m));
  CHECK(m->digest == image.digest);
  CHECK(m->media_type == oci::media_type::k_manifest);
  CHECK(client->get_manifest("team/img", image.digest.str()).has_value());
  auto absent = client->get_manifest("team/img", oci::sha256_of("nothing").str());
  REQUIRE_FALSE(absent.has_value());
  CHECK(absent.error().code() == ErrorCode::not_found);

  ScratchDir pulled;
  auto store = store::FsBlobStore::create(pulled / "store");
  REQUIRE(store.has_value());
  auto info = oci::parse_manifest(m->bytes);
  REQUIRE(info.has_value());
  std::vector<oci::Descriptor> blobs = info->layers;
  blobs.push_back(*info->config);
  auto fetched = client->fetch_blobs("team/img", blobs, **store);
  REQUIRE_MESSAGE(fetched.has_value(), why(fetched));
  for (const auto& b : blobs)
    CHECK(*(*store)->read_all(b.digest) == *local.blobs.read_all(b.digest));
  auto size = client->head_blob("team/img", blobs[0].digest);
  REQUIRE(size.has_value());
  CHECK(*size == std::optional<std::uint64_t>(3000));
  CHECK(*client->head_blob("team/img", oci::sha256_of("x")) == std::nullopt);

  // Same registry, another repository: blobs are mounted, not uploaded.
  store::MemoryBlobStore staging;
  RegistryImageSource remote(*client, "team/img", staging);
  auto mounted = copy_image(remote, "v1", *client, "team/other", "v2");
  REQUIRE_MESSAGE(mounted.has_value(), why(mounted));
  CHECK(mounted->blobs_mounted == 4);
  CHECK(mounted->blobs_copied == 0);
  CHECK(staging.list()->empty());  // nothing had to be downloaded
}

TEST_CASE("an index and its manifests copy, children first") {
  Registry reg;
  LocalImages local;
  auto a = local.add_image({bytes(100, 3)}, "");
  auto b = local.add_image({bytes(200, 4), bytes(100, 3)}, "");
  nlohmann::json index = {
      {"schemaVersion", 2},
      {"mediaType", oci::media_type::k_index},
      {"manifests",
       {{{"mediaType", a.media_type}, {"digest", a.digest.str()}, {"size", a.size}},
        {{"mediaType", b.media_type}, {"digest", b.digest.str()}, {"size", b.size}}}}};
  auto top = local.add_manifest(index.dump(), std::string(oci::media_type::k_index), "multi");
  auto client = client_for(reg.url());
  auto source = local.source();
  auto copied = copy_image(source, "multi", *client, "team/multi", "v1");
  REQUIRE_MESSAGE(copied.has_value(), why(copied));
  CHECK(copied->manifests == 3);
  CHECK(copied->blobs_copied == 4);  // two configs, two layers: the shared one once
  auto m = client->get_manifest("team/multi", "v1");
  REQUIRE(m.has_value());
  CHECK(m->digest == top.digest);
  CHECK(m->media_type == oci::media_type::k_index);
  CHECK(client->get_manifest("team/multi", b.digest.str()).has_value());
}

TEST_CASE("our registry's tokens: accepted as bearer credentials; missing or wrong refused") {
  builder::ServerOptions so;
  so.auth.tokens = {{"ci", builder::token_hash("ci-token"), {"team"}, builder::Access::push}};
  Registry reg(so);
  LocalImages local;
  local.add_image({bytes(500, 5)}, "v1");
  auto source = local.source();

  ClientOptions o = fast_options();
  o.credentials[reg.url()] = Credentials{{}, {}, "ci-token"};
  auto client = client_for(reg.url(), o);
  auto copied = copy_image(source, "v1", *client, "team/img", "v1");
  REQUIRE_MESSAGE(copied.has_value(), why(copied));

  auto anonymous = client_for(reg.url());
  auto denied = anonymous->get_manifest("team/img", "v1");
  REQUIRE_FALSE(denied.has_value());
  CHECK(denied.error().code() == ErrorCode::permission_denied);

  o.credentials[reg.url()] = Credentials{{}, {}, "wrong"};
  auto wrong = client_for(reg.url(), o);
  auto refused = copy_image(source, "v1", *wrong, "team/img2", "v1");
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code() == ErrorCode::permission_denied);
  CHECK_FALSE(reg.index->resolve("team/img2", "v1")->has_value());
}

TEST_CASE("docker-registry: pull an image skopeo pushed, digests verified") {
  ScratchDir work;
  Distribution dist(work / "dist");
  std::string digest = write_oci_layout(work / "layout", work / "build");
  auto push = envd::test::run_command({"skopeo", "copy", "--dest-tls-verify=false",
                                       "oci:" + (work / "layout").string() + ":v1",
                                       "docker://" + dist.host() + "/ns/img:v1"});
  REQUIRE_MESSAGE(push.exit_code == 0, push.err);

  auto client = client_for(dist.host());
  REQUIRE(client->ping().has_value());
  auto m = client->get_manifest("ns/img", "v1");
  REQUIRE_MESSAGE(m.has_value(), why(m));
  CHECK(m->digest.str() == digest);
  auto info = oci::parse_manifest(m->bytes, m->media_type);
  REQUIRE(info.has_value());
  std::vector<oci::Descriptor> blobs = info->layers;
  blobs.push_back(*info->config);
  ScratchDir pulled;
  auto store = store::FsBlobStore::create(pulled / "store");
  REQUIRE(store.has_value());
  auto fetched = client->fetch_blobs("ns/img", blobs, **store);
  REQUIRE_MESSAGE(fetched.has_value(), why(fetched));
  for (const auto& b : blobs) {
    auto expected =
        envd::test::read_file(work / "layout" / "blobs" / "sha256" / std::string(b.digest.hex()));
    CHECK(*(*store)->read_all(b.digest) == expected);
  }
  auto unknown = client->get_manifest("ns/img", "nope");
  REQUIRE_FALSE(unknown.has_value());
  CHECK(unknown.error().code() == ErrorCode::not_found);
}

TEST_CASE("docker-registry with htpasswd (bcrypt) basic auth: push chunked, pull, skopeo agrees") {
  ScratchDir work;
  char* salt = ::crypt_gensalt("$2b$", 5, nullptr, 0);
  REQUIRE(salt != nullptr);
  char* hash = ::crypt("s3cret", salt);
  REQUIRE(hash != nullptr);
  envd::test::write_file(work / "htpasswd", std::string("mirror:") + hash + "\n");
  Distribution dist(work / "dist", work / "htpasswd");

  auto anonymous = client_for(dist.host());
  auto denied = anonymous->ping();
  REQUIRE_FALSE(denied.has_value());
  CHECK(denied.error().code() == ErrorCode::permission_denied);

  ClientOptions o = fast_options();
  o.credentials[dist.host()] = Credentials{"mirror", "s3cret", {}};
  o.chunk_size = 2048;
  auto client = client_for(dist.host(), o);
  LocalImages local;
  auto image = local.add_image({bytes(5000, 6), bytes(700, 7)}, "v1");
  auto source = local.source();
  auto copied = copy_image(source, "v1", *client, "mirror/img", "v1");
  REQUIRE_MESSAGE(copied.has_value(), why(copied));
  CHECK(copied->blobs_copied == 3);

  auto inspect =
      envd::test::run_command({"skopeo", "inspect", "--tls-verify=false", "--creds",
                               "mirror:s3cret", "docker://" + dist.host() + "/mirror/img:v1"});
  REQUIRE_MESSAGE(inspect.exit_code == 0, inspect.err);
  CHECK(nlohmann::json::parse(inspect.out)["Digest"] == image.digest.str());

  ScratchDir pulled;
  auto store = store::FsBlobStore::create(pulled / "store");
  REQUIRE(store.has_value());
  auto layer = oci::Descriptor{"", oci::sha256_of(bytes(5000, 6)), 5000, {}};
  auto fetched = client->fetch_blob_to_store("mirror/img", layer, **store);
  REQUIRE_MESSAGE(fetched.has_value(), why(fetched));
  CHECK((*store)->contains(layer.digest));

  o.credentials[dist.host()] = Credentials{"mirror", "wrong", {}};
  auto wrong = client_for(dist.host(), o);
  auto refused = wrong->get_manifest("mirror/img", "v1");
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code() == ErrorCode::permission_denied);
}

TEST_CASE("TLS: verified against a configured CA; unverifiable certificates refused") {
  ScratchDir certs;
  auto gen = envd::test::run_command(
      {"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
       "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout",
       (certs / "key.pem").string(), "-out", (certs / "cert.pem").string()});
  REQUIRE_MESSAGE(gen.exit_code == 0, gen.err);
  builder::ServerOptions so;
  so.tls = builder::TlsConfig{certs / "cert.pem", certs / "key.pem"};
  Registry reg(so);

  ClientOptions o = fast_options();
  o.https_hosts = {reg.url()};  // loopback speaks http unless told otherwise
  auto untrusted = client_for(reg.url(), o);
  CHECK(untrusted->scheme() == Scheme::https);
  auto refused = untrusted->ping();
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code() == ErrorCode::permission_denied);
  CHECK(refused.error().message().find("certificate") != std::string::npos);

  o.ca_file = (certs / "cert.pem").string();
  auto trusted = client_for(reg.url(), o);
  auto ok = trusted->ping();
  CHECK_MESSAGE(ok.has_value(), why(ok));

  o.ca_file.clear();
  o.tls_verify = TlsVerify::off;
  auto unverified = client_for(reg.url(), o);
  CHECK(unverified->ping().has_value());
}

}  // namespace envd::registry
