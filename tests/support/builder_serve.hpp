// Test support: `envd builder serve` as a child process on a free loopback port, for tests that
// talk to a real builder service.
#pragma once

#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "support/run_command.hpp"
#include "support/scratch_dir.hpp"

namespace envd::test {

// `envd builder serve ...` as a child process: started by the constructor, which reads the port
// from its "listening" line (pass "--listen", "127.0.0.1:0" for a free port); stopped with
// SIGTERM by stop() or the destructor.
class Serve {
 public:
  Serve(const std::vector<std::string>& args, const std::map<std::string, std::string>& env,
        const std::filesystem::path& log)
      : m_log(log) {
    int out[2];
    REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
    m_pid = ::fork();
    REQUIRE(m_pid >= 0);
    if (m_pid == 0) {
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(out[1], 1);
      ::dup2(fd, 2);
      for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
      std::vector<std::string> argv = {envd::test::envd_binary(), "builder", "serve"};
      argv.insert(argv.end(), args.begin(), args.end());
      std::vector<char*> raw;
      for (auto& a : argv) raw.push_back(a.data());
      raw.push_back(nullptr);
      ::execv(raw[0], raw.data());
      _exit(127);
    }
    ::close(out[1]);
    m_out = out[0];
    // Bounded: the line comes once the port is bound, or the child exits (EOF).
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (m_line.find('\n') == std::string::npos && std::chrono::steady_clock::now() < deadline) {
      pollfd p{m_out, POLLIN, 0};
      if (::poll(&p, 1, 1000) <= 0) continue;
      char buf[512];
      ssize_t n = ::read(m_out, buf, sizeof buf);
      if (n <= 0) break;
      m_line.append(buf, static_cast<std::size_t>(n));
    }
    INFO("serve stderr: " << envd::test::read_file(log));
    REQUIRE_MESSAGE(m_line.find('\n') != std::string::npos, "no listening line: " << m_line);
    auto at = m_line.find("http://127.0.0.1:");
    REQUIRE(at != std::string::npos);
    m_port = std::stoi(m_line.substr(at + 17));
  }
  ~Serve() { stop(); }
  Serve(const Serve&) = delete;
  Serve& operator=(const Serve&) = delete;

  // SIGTERM (after SIGCONT, in case a test stopped it), then the exit code (128+N when killed by
  // signal N).
  int stop() {
    if (m_pid <= 0) return m_exit;
    ::kill(m_pid, SIGCONT);
    ::kill(m_pid, SIGTERM);
    int status = 0;
    ::waitpid(m_pid, &status, 0);
    ::close(m_out);
    m_pid = -1;
    m_exit = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return m_exit;
  }
  pid_t pid() const { return m_pid; }
  int port() const { return m_port; }
  std::string host() const { return "127.0.0.1:" + std::to_string(m_port); }
  std::string url() const { return "http://" + host(); }
  const std::string& line() const { return m_line; }

 private:
  std::filesystem::path m_log;
  pid_t m_pid = -1;
  int m_out = -1;
  int m_port = 0;
  int m_exit = -1;
  std::string m_line;
};

}  // namespace envd::test
