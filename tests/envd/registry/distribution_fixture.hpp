// Test support: Debian's docker-registry (distribution) started on 127.0.0.1 with an OS-chosen
// port and a scratch storage dir, optionally with htpasswd basic auth; stopped by the test.
// Also an OCI layout writer for skopeo to push from. No httplib: usable by integration tests.
#pragma once

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "envd/oci/image.hpp"
#include "support/run_command.hpp"
#include "support/scratch_dir.hpp"

namespace envd::registry::test_support {

namespace fs = std::filesystem;

// A child process, SIGTERMed and reaped when the object goes.
class Child {
 public:
  Child(const std::vector<std::string>& argv, const fs::path& log) {
    m_pid = ::fork();
    REQUIRE(m_pid >= 0);
    if (m_pid == 0) {
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      _exit(127);
    }
  }
  ~Child() {
    ::kill(m_pid, SIGTERM);
    ::waitpid(m_pid, nullptr, 0);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

 private:
  pid_t m_pid = -1;
};

// A port that was free a moment ago (the registry binds it itself).
inline int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// The HTTP status of GET /v2/ on 127.0.0.1:port, 0 when nothing answers.
inline int probe_v2(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  int status = 0;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    std::string req = "GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (::write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[64] = {};
      ssize_t n = ::read(fd, buf, sizeof buf - 1);
      if (n > 12 && std::string_view(buf, 5) == "HTTP/") status = std::atoi(buf + 9);
    }
  }
  ::close(fd);
  return status;
}

// docker-registry serving from `dir`, with htpasswd auth when `htpasswd_file` is given.
struct Distribution {
  int port = 0;
  std::unique_ptr<Child> process;

  explicit Distribution(const fs::path& dir, const fs::path& htpasswd_file = {}) {
    port = free_port();
    std::string config =
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        "    rootdirectory: " +
        (dir / "storage").string() +
        "\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:" + std::to_string(port) + "\n";
    if (!htpasswd_file.empty())
      config +=
          "auth:\n  htpasswd:\n    realm: envd-test\n    path: " + htpasswd_file.string() + "\n";
    envd::test::write_file(dir / "config.yml", config);
    process = std::make_unique<Child>(std::vector<std::string>{"/usr/bin/docker-registry", "serve",
                                                               (dir / "config.yml").string()},
                                      dir / "registry.log");
    // Bounded polling until it answers (200, or 401 with auth).
    int status = 0;
    for (int attempt = 0; attempt < 200 && status == 0; ++attempt) {
      status = probe_v2(port);
      if (status == 0) std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    REQUIRE_MESSAGE(status != 0, envd::test::read_file(dir / "registry.log"));
  }
  std::string host() const { return "127.0.0.1:" + std::to_string(port); }
};

inline oci::Descriptor descriptor_of(std::string_view media_type, std::string_view data) {
  return oci::Descriptor{std::string(media_type), oci::sha256_of(data), data.size(), {}};
}

// An OCI image layout at `dir` with one gzip layer, tagged `tag`, made with tar and gzip.
// Returns the manifest digest.
inline std::string write_oci_layout(const fs::path& dir, const fs::path& work,
                                    const std::string& tag = "v1") {
  envd::test::write_file(work / "rootfs" / "etc" / "hello.txt", "hello from envd\n");
  envd::test::write_file(work / "rootfs" / "bin" / "run.sh", "#!/bin/sh\necho run\n");
  auto tar = envd::test::run_command({"tar", "--format=ustar", "--owner=0", "--group=0",
                                      "--mtime=@0", "-cf", (work / "layer.tar").string(), "-C",
                                      (work / "rootfs").string(), "."});
  REQUIRE(tar.exit_code == 0);
  REQUIRE(envd::test::run_command({"gzip", "-n", "-k", "-f", (work / "layer.tar").string()})
              .exit_code == 0);
  std::string layer_tar = envd::test::read_file(work / "layer.tar");
  std::string layer_gz = envd::test::read_file(work / "layer.tar.gz");
  oci::ImageConfig config;
  config.architecture = "amd64";
  config.os = "linux";
  config.diff_ids = {oci::sha256_of(layer_tar)};
  std::string config_json = oci::serialize(config);
  oci::ImageManifest m{descriptor_of(oci::media_type::k_config, config_json),
                       {descriptor_of(oci::media_type::k_layer_gzip, layer_gz)},
                       {}};
  std::string manifest = oci::serialize(m);
  for (const std::string* blob : {&layer_gz, &config_json, &manifest})
    envd::test::write_file(dir / "blobs" / "sha256" / std::string(oci::sha256_of(*blob).hex()),
                           *blob);
  envd::test::write_file(dir / "oci-layout", R"({"imageLayoutVersion":"1.0.0"})");
  nlohmann::json index = {{"schemaVersion", 2},
                          {"manifests",
                           {{{"mediaType", oci::media_type::k_manifest},
                             {"digest", oci::sha256_of(manifest).str()},
                             {"size", manifest.size()},
                             {"annotations", {{"org.opencontainers.image.ref.name", tag}}}}}}};
  envd::test::write_file(dir / "index.json", index.dump());
  return oci::sha256_of(manifest).str();
}

}  // namespace envd::registry::test_support
