// Resolution of default prefix, source tree and state directory.
#include "envd/cli/defaults.hpp"

#include <CLI/CLI.hpp>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

extern char** environ;

namespace envd::cli {
namespace {

std::optional<std::string> env_var(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

// Runs python3 on PATH to print sys.prefix; nullopt when there is no python3 or it fails.
std::optional<std::string> python_sys_prefix() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return std::nullopt;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  const char* argv[] = {"python3", "-I", "-c", "import sys; print(sys.prefix)", nullptr};
  pid_t pid = 0;
  int rc = ::posix_spawnp(&pid, "python3", &actions, nullptr, const_cast<char**>(argv), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  std::string out;
  if (rc == 0) {
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fds[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  if (rc != 0) return std::nullopt;
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return std::nullopt;
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  if (out.empty()) return std::nullopt;
  return out;
}

}  // namespace

Result<std::filesystem::path> default_prefix() {
  if (auto p = env_var("CONDA_PREFIX")) return std::filesystem::path(*p);
  if (auto p = env_var("VIRTUAL_ENV")) return std::filesystem::path(*p);
  if (auto p = python_sys_prefix()) return std::filesystem::path(*p);
  return Error(ErrorCode::not_found,
               "no active environment: CONDA_PREFIX and VIRTUAL_ENV are unset and there is no "
               "python3 on PATH; name one with --prefix DIR");
}

std::optional<std::filesystem::path> enclosing_work_tree(const std::filesystem::path& dir) {
  std::error_code ec;
  auto p = std::filesystem::absolute(dir, ec);
  if (ec) return std::nullopt;
  for (;;) {
    if (std::filesystem::exists(p / ".git", ec)) return p;
    if (p == p.root_path() || p.empty()) return std::nullopt;
    p = p.parent_path();
  }
}

std::filesystem::path envd_home() {
  if (auto h = env_var("ENVD_HOME")) return *h;
  if (auto home = env_var("HOME")) return std::filesystem::path(*home) / ".local/share/envd";
  return std::filesystem::path("/tmp/envd-home");
}

void add_scan_options(CLI::App& cmd, ScanArgs& args) {
  cmd.add_option("--prefix", args.prefixes,
                 "Environment prefix (repeatable); default: $CONDA_PREFIX, $VIRTUAL_ENV, or the "
                 "prefix of python3 on PATH");
  cmd.add_option("--src", args.src,
                 "Source tree root; default: the git work tree containing the current directory");
  cmd.add_flag("--no-src", args.no_src, "Capture no source tree");
  cmd.add_option("--allow-secret", args.allow_secrets,
                 "Allow a source path that the secret deny-list blocks (gitignore pattern; "
                 "repeatable)");
}

void add_target_options(CLI::App& cmd, TargetArgs& args) {
  cmd.add_option("--name", args.name,
                 "Image name NAMESPACE/NAME[:TAG]; default: the config's name, else "
                 "local/<environment name>:latest");
  cmd.add_option("--builder", args.builder,
                 "Builder URL http(s)://HOST[:PORT]; default: $ENVD_BUILDER, else the config's "
                 "builder; if none is set, the embedded builder under $ENVD_HOME/builder");
  cmd.add_option("--compression", args.compression,
                 "Layer compression; default: the config's, else the builder's (zstd)")
      ->check(CLI::IsMember({"zstd", "gzip"}));
}

Result<agent::SnapshotOptions> snapshot_options(const ScanArgs& scan) {
  ENVD_TRY(auto config, load_user_config());
  return snapshot_options(scan, config);
}

Result<agent::SnapshotOptions> snapshot_options(const ScanArgs& scan, const UserConfig& config) {
  const auto& [prefixes, src, no_src, allow_secrets] = scan;
  agent::SnapshotOptions options;
  if (prefixes.empty()) {
    ENVD_TRY(auto p, default_prefix());
    options.prefixes.push_back(p);
  } else {
    for (const auto& p : prefixes) options.prefixes.emplace_back(p);
  }
  if (!src.empty()) {
    options.src = src;
  } else if (!no_src) {
    std::error_code ec;
    if (auto tree = enclosing_work_tree(std::filesystem::current_path(ec))) options.src = *tree;
  }
  options.state_dir = envd_home();
  options.secret_allow = config.allow_secrets;
  options.secret_allow.insert(options.secret_allow.end(), allow_secrets.begin(),
                              allow_secrets.end());
  options.extra_ignores = config.ignore;
  options.envd_version = ENVD_VERSION;
  return options;
}

}  // namespace envd::cli
