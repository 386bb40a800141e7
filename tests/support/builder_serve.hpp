// Test support: `envd builder serve` as a child process on a free loopback port, for tests that
// talk to a real builder service.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "support/child_process.hpp"
#include "support/run_command.hpp"

namespace envd::test {

// `envd builder serve ARGS`: the constructor waits for its "listening" line (pass "--listen",
// "127.0.0.1:0" for a free port); stopped with SIGTERM by stop() or the destructor.
class Serve : public ChildProcess {
 public:
  Serve(const std::vector<std::string>& args, const std::map<std::string, std::string>& env,
        const std::filesystem::path& log)
      : ChildProcess(argv_of(args), env, log, "envd builder listening on "),
        m_port(loopback_port()) {}

  int port() const { return m_port; }
  std::string host() const { return "127.0.0.1:" + std::to_string(m_port); }
  std::string url() const { return "http://" + host(); }

 private:
  static std::vector<std::string> argv_of(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {envd_binary(), "builder", "serve"};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }
  int m_port;
};

}  // namespace envd::test
