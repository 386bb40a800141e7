// Test support for the registry client tests: client options for fast tests, deterministic
// bytes, and small loopback HTTP servers that misbehave on purpose (wrong bytes, cut
// connections, silence, redirects, token realms), stopped by the test.
#pragma once

#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
#define CPPHTTPLIB_OPENSSL_SUPPORT  // must match how libcpp-httplib was built (class layouts)
#endif
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "envd/registry/registry_client.hpp"

namespace envd::registry::test_support {

// The error message of a failed Result, "" for a value (doctest may evaluate messages eagerly).
template <class R>
inline std::string why(const R& r) {
  return r ? std::string() : r.error().message();
}

// Short backoff and timeouts: failures show within seconds.
inline ClientOptions fast_options() {
  ClientOptions o;
  o.backoff_initial = std::chrono::milliseconds(1);
  o.backoff_max = std::chrono::milliseconds(4);
  o.max_attempts = 3;
  o.stall_timeout = std::chrono::milliseconds(5000);
  o.connect_timeout = std::chrono::milliseconds(2000);
  return o;
}

inline std::unique_ptr<RegistryClient> client_for(const std::string& host,
                                                  ClientOptions o = fast_options()) {
  auto c = RegistryClient::create(host, std::move(o));
  REQUIRE(c.has_value());
  return std::move(*c);
}

// Deterministic bytes, different per seed.
inline std::string bytes(std::size_t size, unsigned seed) {
  std::string out(size, '\0');
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& c : out) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return out;
}

// Images in a memory store, tags resolved like the builder's index.

// An httplib server on `host` (a loopback address) with an OS-chosen port, serving on a thread
// until the object goes.
class HttpServer {
 public:
  explicit HttpServer(const std::string& host = "127.0.0.1") : m_host(host) {}
  ~HttpServer() { stop(); }
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  httplib::Server& routes() { return m_server; }
  // Binds and serves; connections made before the thread runs wait in the listen backlog.
  void start() {
    m_port = m_server.bind_to_any_port(m_host);
    REQUIRE(m_port > 0);
    m_thread = std::thread([this] { m_server.listen_after_bind(); });
  }
  void stop() {
    if (!m_thread.joinable()) return;
    m_server.stop();
    m_thread.join();
  }
  int port() const { return m_port; }
  std::string authority() const { return m_host + ":" + std::to_string(m_port); }
  std::string url() const { return "http://" + authority(); }

 private:
  std::string m_host;
  httplib::Server m_server;
  std::thread m_thread;
  int m_port = 0;
};

// A TCP server on 127.0.0.1 that reads each request's headers, writes `reply` (e.g. a status
// line and headers promising a body) and then nothing, keeping the connection open until the
// object goes: a peer that stalls.
class SilentServer {
 public:
  explicit SilentServer(std::string reply) : m_reply(std::move(reply)) {
    m_listen = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(m_listen, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(m_listen, 16) == 0);
    socklen_t len = sizeof a;
    ::getsockname(m_listen, reinterpret_cast<sockaddr*>(&a), &len);
    m_port = ntohs(a.sin_port);
    REQUIRE(::pipe(m_stop) == 0);
    m_thread = std::thread([this] { serve(); });
  }
  ~SilentServer() {
    char c = 0;
    (void)!::write(m_stop[1], &c, 1);
    m_thread.join();
    for (int fd : m_connections) ::close(fd);
    ::close(m_listen);
    ::close(m_stop[0]);
    ::close(m_stop[1]);
  }
  SilentServer(const SilentServer&) = delete;
  SilentServer& operator=(const SilentServer&) = delete;

  std::string authority() const { return "127.0.0.1:" + std::to_string(m_port); }
  int requests() {
    std::lock_guard lock(m_mutex);
    return m_requests;
  }

 private:
  void serve() {
    std::vector<pollfd> fds;
    std::vector<std::string> pending;  // request bytes per connection, until the blank line
    while (true) {
      fds.assign({{m_stop[0], POLLIN, 0}, {m_listen, POLLIN, 0}});
      for (int fd : m_connections) fds.push_back({fd, POLLIN, 0});
      if (::poll(fds.data(), fds.size(), -1) < 0) continue;
      if (fds[0].revents != 0) return;
      if (fds[1].revents & POLLIN) {
        int fd = ::accept(m_listen, nullptr, nullptr);
        if (fd >= 0) {
          m_connections.push_back(fd);
          pending.emplace_back();
        }
      }
      for (std::size_t i = 2; i < fds.size(); ++i) {
        if (!(fds[i].revents & POLLIN)) continue;
        char buf[4096];
        ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
        if (n <= 0) continue;
        std::string& p = pending[i - 2];
        p.append(buf, static_cast<std::size_t>(n));
        if (p.find("\r\n\r\n") != std::string::npos) {
          p.clear();
          {
            std::lock_guard lock(m_mutex);
            ++m_requests;
          }
          (void)!::write(fds[i].fd, m_reply.data(), m_reply.size());
        }
      }
    }
  }

  std::string m_reply;
  int m_listen = -1;
  int m_stop[2] = {-1, -1};
  int m_port = 0;
  std::vector<int> m_connections;
  std::thread m_thread;
  std::mutex m_mutex;
  int m_requests = 0;
};

}  // namespace envd::registry::test_support
