// Test support: a child process (a server under test, a scheduler) with its output in a log file,
// optionally waiting (bounded) for the line that says it is listening; SIGTERMed when done.
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

#include "support/scratch_dir.hpp"

namespace envd::test {

class ChildProcess {
 public:
  // Runs argv[0] (a path) with `env` added, stderr (and stdout, unless `listening` is given) to
  // `log`. With `listening`, waits up to 30 s for the first stdout line and requires it to contain
  // `listening`.
  ChildProcess(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
               const std::filesystem::path& log, const std::string& listening = "")
      : m_log(log) {
    int out[2];
    REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
    m_pid = ::fork();
    REQUIRE(m_pid >= 0);
    if (m_pid == 0) {
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(listening.empty() ? fd : out[1], 1);
      ::dup2(fd, 2);
      for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
      std::vector<std::string> args = argv;
      std::vector<char*> raw;
      for (auto& a : args) raw.push_back(a.data());
      raw.push_back(nullptr);
      ::execv(raw[0], raw.data());
      _exit(127);
    }
    ::close(out[1]);
    m_out = out[0];  // kept open until stop(): a later write to stdout must not hit EPIPE
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!listening.empty() && m_line.find('\n') == std::string::npos &&
           std::chrono::steady_clock::now() < deadline) {
      pollfd p{m_out, POLLIN, 0};
      if (::poll(&p, 1, 1000) <= 0) continue;
      char buf[512];
      ssize_t n = ::read(m_out, buf, sizeof buf);
      if (n <= 0) break;
      m_line.append(buf, static_cast<std::size_t>(n));
    }
    INFO(argv[0] << " log: " << read_file(log));
    REQUIRE_MESSAGE(m_line.find(listening) != std::string::npos, "no listening line: " << m_line);
  }
  ~ChildProcess() { stop(); }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

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
  // The first stdout line (when waited for).
  const std::string& line() const { return m_line; }
  std::string log() const { return read_file(m_log); }
  // The port in the line's "http://127.0.0.1:PORT".
  int loopback_port() const {
    auto at = m_line.find("http://127.0.0.1:");
    REQUIRE_MESSAGE(at != std::string::npos, "no loopback URL in: " << m_line);
    return std::stoi(m_line.substr(at + 17));
  }

 private:
  std::filesystem::path m_log;
  pid_t m_pid = -1;
  int m_out = -1;
  int m_exit = -1;
  std::string m_line;
};

}  // namespace envd::test
