// Test support: run a program (no shell) and capture its exit code, stdout and stderr.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace envd::test {

struct CommandResult {
  int exit_code = -1;  // 128+N when killed by signal N
  std::string out;
  std::string err;
};

// Runs argv[0] (looked up on PATH) with `env_overrides` added to the environment, in `cwd` when
// not empty. stdin is /dev/null.
CommandResult run_command(const std::vector<std::string>& argv,
                          const std::map<std::string, std::string>& env_overrides = {},
                          const std::filesystem::path& cwd = {});

// The envd binary under test.
std::string envd_binary();

}  // namespace envd::test
