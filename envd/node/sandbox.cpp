// Planning a command's launch in an assembled image: choosing the isolation, building bwrap's
// arguments (sandbox_mounts.cpp for envd images) or relocating (relocation.cpp), the environment,
// the working directory and the command looked up on the image's PATH as the sandbox will see it.
#include "envd/node/sandbox.hpp"

#include <fcntl.h>
#include <pwd.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>

#include "envd/node/relocation.hpp"
#include "envd/node/sandbox_mounts.hpp"
#include "envd/util/atomic_file.hpp"
#include "envd/util/log.hpp"
#include "envd/util/unique_fd.hpp"

extern char** environ;

namespace envd::node {
namespace {

constexpr std::string_view k_default_path =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
constexpr int k_max_symlink_hops = 40;

// ---- bubblewrap: where, and does it work here
// ----------------------------------------------------

std::vector<std::string> split_search_path(std::string_view value) {
  std::vector<std::string> out;
  std::size_t i = 0;
  while (i <= value.size()) {
    std::size_t colon = value.find(':', i);
    if (colon == std::string_view::npos) colon = value.size();
    if (colon > i) out.emplace_back(value.substr(i, colon - i));
    i = colon + 1;
  }
  return out;
}

std::string find_on_host_path(const std::string& name) {
  const char* env = std::getenv("PATH");
  for (const auto& dir : split_search_path(env != nullptr ? env : "/usr/local/bin:/usr/bin:/bin")) {
    std::string candidate = dir + "/" + name;
    if (dir.front() == '/' && ::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return {};
}

struct Probe {
  bool ok = false;
  std::string why;
};

// Runs `bwrap --ro-bind / / BWRAP --version`: the namespaces bwrap needs, nothing else.
Probe run_probe(const std::string& bwrap) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return {false, "pipe: " + std::string(std::strerror(errno))};
  UniqueFd read_end(fds[0]), write_end(fds[1]);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), 2);
  std::vector<std::string> args = {bwrap, "--ro-bind", "/", "/", bwrap, "--version"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  int rc = ::posix_spawn(&pid, bwrap.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  write_end = UniqueFd();
  if (rc != 0) return {false, "cannot run " + bwrap + ": " + std::strerror(rc)};
  std::string err;
  char buf[512];
  ssize_t n;
  while ((n = ::read(read_end.get(), buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
    if (n > 0 && err.size() < 2000) err.append(buf, static_cast<std::size_t>(n));
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return {true, {}};
  while (!err.empty() && (err.back() == '\n' || err.back() == ' ')) err.pop_back();
  if (err.empty()) err = "exit status " + std::to_string(WEXITSTATUS(status));
  return {false, err};
}

// A verdict that bwrap works is also remembered for the rest of the boot in a file of the user's
// (XDG_RUNTIME_DIR, else /tmp), keyed by boot id, user and the bwrap binary: a one-shot command
// (envd node run) then pays one bwrap start, not two. Only "works" is remembered: should it stop
// working (a sysctl changed), the launch fails with bwrap's own message.
std::filesystem::path probe_memo_file() {
  const char* run = std::getenv("XDG_RUNTIME_DIR");
  if (run != nullptr && run[0] == '/') return std::filesystem::path(run) / "envd-bwrap-works";
  return "/tmp/envd-bwrap-works-" + std::to_string(::geteuid());
}

std::string probe_memo_key(const std::string& bwrap) {
  struct stat st {};
  auto boot = read_file("/proc/sys/kernel/random/boot_id");
  if (!boot || boot->empty() || ::stat(bwrap.c_str(), &st) != 0) return {};
  return "boot " + boot->substr(0, boot->find('\n')) + " uid " + std::to_string(::geteuid()) +
         " bwrap " + bwrap + " " + std::to_string(st.st_ino) + " " +
         std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + "\n";
}

bool memo_says_works(const std::filesystem::path& file, const std::string& key) {
  struct stat st {};
  if (key.empty() || ::lstat(file.c_str(), &st) != 0 || !S_ISREG(st.st_mode) ||
      st.st_uid != ::geteuid() || (st.st_mode & 022) != 0)
    return false;
  auto text = read_file(file);
  return text && *text == key;
}

std::mutex g_probe_mutex;
std::map<std::string, Probe> g_probes;  // bwrap path -> verdict

Probe probe_bwrap(const std::string& bwrap) {
  if (bwrap.empty()) return {false, "bwrap not found on PATH"};
  std::lock_guard lock(g_probe_mutex);
  auto it = g_probes.find(bwrap);
  if (it != g_probes.end()) return it->second;
  const auto memo = probe_memo_file();
  const std::string key = probe_memo_key(bwrap);
  const bool remembered = memo_says_works(memo, key);
  Probe probe = remembered ? Probe{true, {}} : run_probe(bwrap);
  if (probe.ok && !key.empty() && !remembered)
    (void)write_file_atomic(memo, key, 0600);  // best effort: a cache
  g_probes.emplace(bwrap, probe);
  return probe;
}

// ---- environment
// ----------------------------------------------------------------------------------

class EnvList {
 public:
  Result<void> add(const std::string& entry, std::string_view origin) {
    auto eq = entry.find('=');
    if (eq == std::string::npos || eq == 0)
      return unexpected(ErrorCode::invalid_argument,
                        std::string(origin) + " entry \"" + entry + "\" is not KEY=VALUE");
    set(entry.substr(0, eq), entry.substr(eq + 1));
    return {};
  }
  void set(const std::string& key, const std::string& value) {
    auto it = m_index.find(key);
    if (it != m_index.end()) {
      m_entries[it->second].second = value;
      return;
    }
    m_index.emplace(key, m_entries.size());
    m_entries.emplace_back(key, value);
  }
  const std::string* get(const std::string& key) const {
    auto it = m_index.find(key);
    return it == m_index.end() ? nullptr : &m_entries[it->second].second;
  }
  std::vector<std::pair<std::string, std::string>>& entries() { return m_entries; }

 private:
  std::vector<std::pair<std::string, std::string>> m_entries;
  std::map<std::string, std::size_t> m_index;
};

std::string home_of_current_user() {
  struct passwd pw {};
  struct passwd* found = nullptr;
  std::vector<char> buf(16384);
  if (::getpwuid_r(::geteuid(), &pw, buf.data(), buf.size(), &found) == 0 && found != nullptr &&
      found->pw_dir != nullptr && found->pw_dir[0] == '/')
    return found->pw_dir;
  return "/";
}

// ---- paths as the sandbox sees them -----------------------------------------------------------

using HostPathOf = std::function<std::string(const std::string&)>;

struct Resolved {
  std::string path;  // in the sandbox, symlinks resolved
  struct stat st {};
};

// Resolves `path` (absolute, in the sandbox) following symlinks the way the sandbox will: every
// step's absolute target is taken in the sandbox, and looked at on the host through `host_of`.
Result<Resolved> resolve(const std::string& path, const HostPathOf& host_of) {
  std::vector<std::string> done;
  auto parts = detail::split_path(path);
  std::deque<std::string> todo(parts.begin(), parts.end());
  int hops = 0;
  Resolved out;
  if (::stat(host_of("/").c_str(), &out.st) != 0)
    return unexpected(Error::from_errno("stat " + host_of("/"), errno));
  while (!todo.empty()) {
    std::string comp = todo.front();
    todo.pop_front();
    if (comp == ".") continue;
    if (comp == "..") {
      if (!done.empty()) done.pop_back();
      continue;
    }
    std::string candidate;
    for (const auto& d : done) candidate += "/" + d;
    candidate += "/" + comp;
    const std::string host = host_of(candidate);
    if (::lstat(host.c_str(), &out.st) != 0) return unexpected(Error::from_errno(path, errno));
    if (S_ISLNK(out.st.st_mode)) {
      if (++hops > k_max_symlink_hops)
        return unexpected(ErrorCode::not_found, path + ": too many levels of symbolic links");
      std::vector<char> buf(static_cast<std::size_t>(out.st.st_size) + 2);
      ssize_t len = ::readlink(host.c_str(), buf.data(), buf.size() - 1);
      if (len <= 0) return unexpected(Error::from_errno(path, errno));
      std::string_view target(buf.data(), static_cast<std::size_t>(len));
      if (target.front() == '/') done.clear();
      auto link = detail::split_path(target);
      todo.insert(todo.begin(), link.begin(), link.end());
      continue;
    }
    if (!todo.empty() && !S_ISDIR(out.st.st_mode))
      return unexpected(ErrorCode::not_found, path + ": " + candidate + " is not a directory");
    done.push_back(comp);
  }
  for (const auto& d : done) out.path += "/" + d;
  if (out.path.empty()) out.path = "/";
  return out;
}

std::string absolute_in(const std::string& dir, const std::string& path) {
  if (!path.empty() && path.front() == '/') return path;
  return (dir == "/" ? "" : dir) + "/" + path;
}

// command[0] as the sandbox will exec it: a path with a '/' as it is (relative to `cwd`), else
// the first executable regular file named so in a PATH directory. The path is not resolved
// further: a venv's bin/python must keep its name for Python to find the venv.
Result<std::string> find_command(const std::string& name, const std::string& path_value,
                                 const std::string& cwd, const HostPathOf& host_of) {
  auto usable = [&](const std::string& candidate) {
    auto r = resolve(candidate, host_of);
    return r && S_ISREG(r->st.st_mode) && (r->st.st_mode & 0111) != 0;
  };
  if (name.find('/') != std::string::npos) {
    std::string candidate = absolute_in(cwd, name);
    if (usable(candidate)) return candidate;
    return unexpected(ErrorCode::not_found,
                      "command " + name + " is not an executable file in the image");
  }
  for (const auto& dir : split_search_path(path_value)) {
    std::string candidate = absolute_in(cwd, dir) + "/" + name;
    if (usable(candidate)) return candidate;
  }
  return unexpected(ErrorCode::not_found,
                    "command " + name + " not found on the image's PATH (" + path_value + ")");
}

bool is_dir_entry(const std::filesystem::path& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// A foreign image: its root as /, read only. When it lacks a /proc, /dev or /tmp directory to
// mount on (a minimal rootfs), its top-level entries are bound one by one on bwrap's tmpfs root.
void foreign_root_args(const std::filesystem::path& rootfs, std::vector<std::string>& args) {
  const bool has_mount_points =
      is_dir_entry(rootfs / "proc") && is_dir_entry(rootfs / "dev") && is_dir_entry(rootfs / "tmp");
  if (has_mount_points) {
    args.insert(args.end(), {"--ro-bind", rootfs.string(), "/"});
  } else {
    std::error_code ec;
    std::vector<std::filesystem::path> entries;
    for (const auto& e : std::filesystem::directory_iterator(rootfs, ec)) entries.push_back(e);
    std::sort(entries.begin(), entries.end());
    for (const auto& p : entries) {
      const std::string name = "/" + p.filename().string();
      if (name == "/proc" || name == "/dev" || name == "/tmp") continue;
      if (std::filesystem::is_symlink(p, ec))
        args.insert(args.end(), {"--symlink", std::filesystem::read_symlink(p, ec).string(), name});
      else
        args.insert(args.end(), {"--ro-bind", p.string(), name});
    }
  }
  args.insert(args.end(), {"--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"});
}

}  // namespace

Result<Isolation> parse_isolation(std::string_view text) {
  if (text == "auto") return Isolation::automatic;
  if (text == "bwrap") return Isolation::bwrap;
  if (text == "none") return Isolation::none;
  return unexpected(ErrorCode::invalid_argument,
                    "isolation \"" + std::string(text) + "\" is not one of auto, bwrap, none");
}

std::string_view to_string(Isolation isolation) {
  switch (isolation) {
    case Isolation::automatic:
      return "auto";
    case Isolation::bwrap:
      return "bwrap";
    case Isolation::none:
      return "none";
  }
  return "auto";
}

Result<LaunchPlan> plan_launch(const RunSpec& spec) {
  const auto started = std::chrono::steady_clock::now();
  if (spec.command.empty() || spec.command.front().empty())
    return unexpected(ErrorCode::invalid_argument, "no command to run");
  struct stat st {};
  if (::stat(spec.rootfs.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return unexpected(ErrorCode::not_found,
                      "image root " + spec.rootfs.string() + " is not a directory");
  const std::filesystem::path rootfs = std::filesystem::absolute(spec.rootfs).lexically_normal();
  const bool envd_image = ::lstat((rootfs / detail::k_snapshot_in_image).c_str(), &st) == 0;

  LaunchPlan plan;
  const std::string bwrap = find_on_host_path("bwrap");
  if (spec.isolation == Isolation::none) {
    plan.isolation = Isolation::none;
  } else {
    Probe probe = probe_bwrap(bwrap);
    if (probe.ok) {
      plan.isolation = Isolation::bwrap;
    } else if (spec.isolation == Isolation::bwrap || !envd_image) {
      const std::string what =
          envd_image ? "isolation bwrap"
                     : "image " + rootfs.string() + " (not built by envd: it runs in its own root)";
      return unexpected(ErrorCode::failed_precondition,
                        what + ": bubblewrap" + (bwrap.empty() ? "" : " " + bwrap) +
                            " cannot make a namespace here: " + probe.why);
    } else {
      plan.isolation = Isolation::none;
      plan.notes.push_back("bubblewrap unusable here (" + probe.why + "): isolation none");
    }
  }
  if (plan.isolation == Isolation::none && !envd_image)
    return unexpected(ErrorCode::failed_precondition,
                      "image " + rootfs.string() + " has no /" +
                          std::string(detail::k_snapshot_in_image) +
                          " (not built by envd): it can only run in its own root, with "
                          "isolation bwrap");

  EnvList env;
  for (const auto& e : spec.image_env) ENVD_TRY_VOID(env.add(e, "image Env"));
  for (const auto& e : spec.extra_env) ENVD_TRY_VOID(env.add(e, "extra environment"));
  if (env.get("PATH") == nullptr) env.set("PATH", std::string(k_default_path));
  if (env.get("HOME") == nullptr)
    env.set("HOME", envd_image ? home_of_current_user() : (::geteuid() == 0 ? "/root" : "/"));
  std::string working_dir = spec.working_dir.empty() ? "/" : absolute_in("/", spec.working_dir);
  std::vector<std::string> command = spec.command;

  HostPathOf host_of;
  std::vector<std::string> args;
  if (plan.isolation == Isolation::bwrap) {
    args = {bwrap, "--die-with-parent", "--new-session"};
    if (!envd_image) {
      foreign_root_args(rootfs, args);
      host_of = [&rootfs](const std::string& p) { return rootfs.string() + p; };
    } else {
      ENVD_TRY(auto roots, detail::load_image_roots(rootfs));
      ENVD_TRY(auto mounts, detail::plan_host_mounts(rootfs, roots));
      args.insert(args.end(), mounts.args.begin(), mounts.args.end());
      plan.notes.insert(plan.notes.end(), mounts.notes.begin(), mounts.notes.end());
      log::debug("sandbox", "mounts planned",
                 {{"mounts", std::to_string(mounts.mounts)},
                  {"symlinks", std::to_string(mounts.symlinks)}});
      host_of = [m = std::move(mounts)](const std::string& p) {
        return detail::host_path_of(m, p);
      };
    }
  } else {
    ENVD_TRY(auto roots, detail::load_image_roots(rootfs));
    ENVD_TRY(auto relocation, detail::relocate_image(rootfs, roots, spec.relocation_dir));
    plan.notes.insert(plan.notes.end(), relocation.notes.begin(), relocation.notes.end());
    for (auto& [key, value] : env.entries()) value = detail::rewrite_paths(value, relocation.moves);
    working_dir = detail::rewrite_paths(working_dir, relocation.moves);
    for (auto& arg : command) arg = detail::rewrite_paths(arg, relocation.moves);
    host_of = [](const std::string& p) { return p; };
  }

  auto wd = resolve(working_dir, host_of);
  if (!wd || !S_ISDIR(wd->st.st_mode))
    return unexpected(ErrorCode::not_found,
                      "working directory " + working_dir + " does not exist in the image");
  ENVD_TRY(command.front(), find_command(command.front(), *env.get("PATH"), working_dir, host_of));

  for (const auto& [key, value] : env.entries()) {
    if (plan.isolation == Isolation::bwrap && key.starts_with("LD_"))
      args.insert(args.end(), {"--setenv", key, value});
    else
      plan.env.push_back(key + "=" + value);
  }
  if (plan.isolation == Isolation::bwrap) {
    args.insert(args.end(), {"--chdir", working_dir, "--"});
    args.insert(args.end(), command.begin(), command.end());
    plan.argv = std::move(args);
    plan.cwd = "/";
  } else {
    plan.argv = std::move(command);
    plan.cwd = working_dir;
  }
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  log::debug("sandbox", "launch planned",
             {{"isolation", std::string(to_string(plan.isolation))},
              {"rootfs", rootfs.string()},
              {"ms", std::to_string(ms)}});
  return plan;
}

}  // namespace envd::node
