// Overlay mounts of layers in a private mount namespace. Entering a namespace changes the whole
// process (and a user namespace needs a single-threaded one), so every scenario that enters runs
// in a fork()ed child: it checks with plain C++ and reports what it found wrong through a pipe,
// and the parent asserts with doctest. Only children ever mount: the test process's namespace is
// left as it was.
#include "envd/node/overlay_mount.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/scratch_dir.hpp"

namespace envd::node {
namespace {

namespace fs = std::filesystem;
using test::ScratchDir;
using test::tree_listing;
using test::write_file;

constexpr uid_t k_nobody = 65534;
constexpr gid_t k_nogroup = 65534;

// ---- running a scenario in a child ----

std::string errno_text(int err) {
  return std::string(std::strerror(err)) + " (" + std::to_string(err) + ")";
}

// What a child found wrong, one line per finding; empty when all was as expected.
class Findings {
 public:
  void expect(bool ok, const std::string& what) {
    if (!ok) m_text += what + "\n";
  }
  const std::string& text() const { return m_text; }

 private:
  std::string m_text;
};

// In the child: tells the parent a point was reached (e.g. a mount is up) and waits until the
// parent has looked, so the parent can inspect its own namespace while the child's mount exists.
class Checkpoint {
 public:
  Checkpoint(int to_parent, int from_parent) : m_to_parent(to_parent), m_from_parent(from_parent) {}
  void reached() {
    char c = 'r';
    (void)!::write(m_to_parent, &c, 1);
    (void)!::read(m_from_parent, &c, 1);  // a byte or EOF: the parent is done looking
  }

 private:
  int m_to_parent;
  int m_from_parent;
};

struct ChildReport {
  int exit_code = -1;   // 128+N when killed by signal N
  std::string message;  // the child's findings, or what stopped it
  bool ok() const { return exit_code == 0 && message.empty(); }
};

std::string read_all(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return out;
    out.append(buf, static_cast<std::size_t>(n));
  }
}

// A pipe whose ends close when it goes out of scope (or one by one, earlier).
class Pipe {
 public:
  Pipe() {
    if (::pipe2(m_fd, O_CLOEXEC) != 0) throw std::runtime_error("pipe: " + errno_text(errno));
  }
  ~Pipe() {
    close_read();
    close_write();
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
  int read_end() const { return m_fd[0]; }
  int write_end() const { return m_fd[1]; }
  void close_read() { close_end(0); }
  void close_write() { close_end(1); }

 private:
  void close_end(int i) {
    if (m_fd[i] >= 0) ::close(m_fd[i]);
    m_fd[i] = -1;
  }
  int m_fd[2] = {-1, -1};
};

// Runs `body` in a fork()ed child. The child _exit()s without running destructors or atexit
// handlers: the scratch dirs and doctest's state belong to the parent. When the body reaches its
// checkpoint, `at_checkpoint` runs in the parent, then the child goes on. No doctest here, so a
// child can run a child of its own.
ChildReport run_in_child(const std::function<std::string(Checkpoint&)>& body,
                         const std::function<void()>& at_checkpoint = {}) {
  Pipe report, reached, release;
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork: " + errno_text(errno));
  if (pid == 0) {
    report.close_read();
    reached.close_read();
    release.close_write();
    std::string message;
    try {
      Checkpoint checkpoint(reached.write_end(), release.read_end());
      message = body(checkpoint);
    } catch (const std::exception& e) {
      message = std::string("exception: ") + e.what();
    } catch (...) {
      message = "an exception that is not a std::exception";
    }
    (void)!::write(report.write_end(), message.data(), message.size());
    ::_exit(message.empty() ? 0 : 1);
  }
  report.close_write();
  reached.close_write();
  release.close_read();
  // Release and reap the child however the parent's checks end (a failed REQUIRE throws).
  ChildReport out;
  int status = 0;
  auto finish = [&] {
    release.close_write();
    out.message = read_all(report.read_end());
    ::waitpid(pid, &status, 0);
  };
  char c;
  try {
    if (::read(reached.read_end(), &c, 1) == 1 && at_checkpoint) at_checkpoint();
  } catch (...) {
    finish();
    throw;
  }
  finish();
  out.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return out;
}

void check_child(const ChildReport& r) {
  INFO("child exit code " << r.exit_code);
  CHECK_MESSAGE(r.ok(), r.message);
}

// ---- in the child ----

// Drops every privilege to nobody/nogroup, as a rootless node daemon runs. setresuid from root
// makes the process non-dumpable, which makes its /proc/self files root's: a daemon started as
// nobody by execve is dumpable, so this one is made dumpable again to be like it.
std::string drop_to_nobody() {
  if (::setgroups(0, nullptr) != 0) return "setgroups: " + errno_text(errno);
  if (::setresgid(k_nogroup, k_nogroup, k_nogroup) != 0) return "setresgid: " + errno_text(errno);
  if (::setresuid(k_nobody, k_nobody, k_nobody) != 0) return "setresuid: " + errno_text(errno);
  if (::prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) != 0) return "PR_SET_DUMPABLE: " + errno_text(errno);
  return "";
}

// Enters the namespace; a failure is reported with a hint at its likely cause.
std::string enter() {
  auto r = enter_private_mount_namespace();
  if (r && in_private_mount_namespace()) return "";
  if (r) return "entered, but in_private_mount_namespace() is false";
  return std::string(::geteuid() == 0 ? "" : "user namespaces not permitted here? ") +
         "enter_private_mount_namespace: " + r.error().message();
}

// The file's bytes, or a text saying why it could not be read (never equal to real content).
std::string slurp(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "<cannot open " + path.string() + ": " + errno_text(errno) + ">";
  std::string out = read_all(fd);
  ::close(fd);
  return out;
}

// Whether `dir` is a mount point listed in this process's /proc/self/mountinfo (field 5).
bool mountinfo_lists(const fs::path& dir) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, dev, root, mount_point;
    fields >> id >> parent >> dev >> root >> mount_point;
    if (mount_point == dir.string()) return true;
  }
  return false;
}

std::size_t open_fd_count() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

// ---- the layers ----

// Three layers, lowest first, each case of merging once:
//   same       a file in every layer: the top one's
//   mid        a file in l0 and l1: l1's
//   shared/    a directory in every layer: merged (a from l0, b from l1, c from l2)
//   over       a directory in l0 (over/inner), a file in l2: the file
//   link       a symlink in l1 to "same"; dangling: a symlink to a path that does not exist
struct Layers {
  std::vector<fs::path> dirs;  // lowest first
  fs::path target;             // an empty directory to mount on
};

// Everything world-readable and traversable (dirs 0755, files 0644), the scratch root included:
// nobody must be able to read the layers in the rootless case.
void make_world_readable(const fs::path& root) {
  fs::permissions(root, fs::perms(0755));
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    if (e.is_symlink()) continue;
    fs::permissions(e.path(), fs::perms(e.is_directory() ? 0755 : 0644));
  }
}

Layers make_layers(const ScratchDir& scratch) {
  Layers out;
  const fs::path l0 = scratch / "l0", l1 = scratch / "l1", l2 = scratch / "l2";
  write_file(l0 / "same", "same from l0");
  write_file(l1 / "same", "same from l1");
  write_file(l2 / "same", "same from l2");
  write_file(l0 / "mid", "mid from l0");
  write_file(l1 / "mid", "mid from l1");
  write_file(l0 / "shared" / "a", "a from l0");
  write_file(l1 / "shared" / "b", "b from l1");
  write_file(l2 / "shared" / "c", "c from l2");
  write_file(l0 / "over" / "inner", "inner from l0");
  write_file(l2 / "over", "over from l2");
  fs::create_symlink("same", l1 / "link");
  fs::create_symlink("/nonexistent/envd-overlay-test", l1 / "dangling");
  out.dirs = {l0, l1, l2};
  out.target = scratch / "merged";
  fs::create_directory(out.target);
  make_world_readable(scratch.path());
  return out;
}

// What the merged tree at `target` must show (run in the child that mounted it).
void check_merged_view(const fs::path& target, Findings& f) {
  f.expect(slurp(target / "same") == "same from l2", "same: " + slurp(target / "same"));
  f.expect(slurp(target / "mid") == "mid from l1", "mid: " + slurp(target / "mid"));
  f.expect(slurp(target / "shared" / "a") == "a from l0",
           "shared/a: " + slurp(target / "shared/a"));
  f.expect(slurp(target / "shared" / "b") == "b from l1",
           "shared/b: " + slurp(target / "shared/b"));
  f.expect(slurp(target / "shared" / "c") == "c from l2",
           "shared/c: " + slurp(target / "shared/c"));
  struct stat st {};
  f.expect(::lstat((target / "over").c_str(), &st) == 0 && S_ISREG(st.st_mode),
           "over is not a regular file");
  f.expect(slurp(target / "over") == "over from l2", "over: " + slurp(target / "over"));
  f.expect(::lstat((target / "over" / "inner").c_str(), &st) != 0,
           "over/inner of the lower directory shows through");
  for (const char* name : {"link", "dangling"})
    f.expect(::lstat((target / name).c_str(), &st) == 0 && S_ISLNK(st.st_mode),
             std::string(name) + " is not shown as a symlink");
  std::error_code ec;
  f.expect(fs::read_symlink(target / "link", ec) == "same", "link does not point at same");
  f.expect(slurp(target / "link") == "same from l2", "link resolves to: " + slurp(target / "link"));
}

// Read only: no new entry, no write to an existing file.
void check_read_only(const fs::path& target, Findings& f) {
  int fd = ::open((target / "new").c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  int err = errno;
  if (fd >= 0) ::close(fd);
  f.expect(fd < 0 && err == EROFS, "creating a file: " + (fd >= 0 ? "succeeded" : errno_text(err)));
  fd = ::open((target / "same").c_str(), O_WRONLY | O_CLOEXEC);
  err = errno;
  if (fd >= 0) ::close(fd);
  f.expect(fd < 0 && err == EROFS,
           "opening a file for writing: " + (fd >= 0 ? "succeeded" : errno_text(err)));
}

// Enters, mounts `layers` at `target` and checks what every mount must show.
std::string mount_and_check(const Layers& layers, Findings& f) {
  if (auto e = enter(); !e.empty()) return e;
  auto mounted = mount_overlay(layers.dirs, layers.target);
  if (!mounted) return "mount_overlay: " + mounted.error().message();
  f.expect(is_mount_point(layers.target), "is_mount_point(target) is false after mounting");
  check_merged_view(layers.target, f);
  check_read_only(layers.target, f);
  return "";
}

// ---- the tests ----

TEST_CASE("mount_overlay refuses without a private mount namespace, mounting nothing") {
  ScratchDir scratch;
  Layers layers = make_layers(scratch);
  REQUIRE_FALSE(in_private_mount_namespace());  // the test process never enters one
  auto r = mount_overlay(layers.dirs, layers.target);
  REQUIRE_FALSE(r);
  CHECK(r.error().code() == ErrorCode::failed_precondition);
  CHECK(r.error().message().find(layers.target.string()) != std::string::npos);
  CHECK_FALSE(is_mount_point(layers.target));
  CHECK(fs::is_empty(layers.target));
  CHECK_FALSE(mountinfo_lists(fs::canonical(layers.target)));
}

TEST_CASE("is_mount_point: the root and a mount are, a plain directory, a file or nothing not") {
  ScratchDir scratch;
  write_file(scratch / "dir" / "file", "x");
  fs::create_directory_symlink("/", scratch / "link-to-root");
  CHECK(is_mount_point("/"));
  CHECK(is_mount_point("/proc"));  // a file system of its own
  CHECK_FALSE(is_mount_point(scratch / "dir"));
  CHECK_FALSE(is_mount_point(scratch / "dir" / "file"));
  CHECK_FALSE(is_mount_point(scratch / "missing"));
  CHECK_FALSE(is_mount_point(scratch / "link-to-root"));  // a symlink is not followed
}

TEST_CASE("as root: layers merge read only in the child's namespace, never in the host's") {
  if (::geteuid() != 0) {
    MESSAGE("not root: skipped (rootless mounts are tested separately)");
    return;
  }
  ScratchDir scratch;
  Layers layers = make_layers(scratch);
  const fs::path target = fs::canonical(layers.target);
  const auto layers_before = tree_listing(scratch.path());
  auto report = run_in_child(
      [&](Checkpoint& checkpoint) {
        Findings f;
        if (auto e = mount_and_check(layers, f); !e.empty()) return e;
        // The mount is in the child's table: the parent's check below can see one if it leaks.
        f.expect(mountinfo_lists(target), "the child's mountinfo does not list the target");
        checkpoint.reached();
        f.expect(is_mount_point(target), "the mount went away while the parent looked");
        return f.text();
      },
      [&] {
        // The child's mount is up now: the host's namespace (ours) must not show it.
        CHECK_FALSE(is_mount_point(target));
        CHECK(fs::is_empty(target));
        CHECK_FALSE(mountinfo_lists(target));
      });
  check_child(report);
  // Gone with the child's namespace; and nothing was written into the layers.
  CHECK_FALSE(is_mount_point(target));
  CHECK(fs::is_empty(target));
  CHECK_FALSE(mountinfo_lists(target));
  CHECK(tree_listing(scratch.path()) == layers_before);
}

TEST_CASE(
    "as root under shared mounts (systemd's default): ours never propagate back, the host's do") {
  if (::geteuid() != 0) {
    MESSAGE("not root: skipped");
    return;
  }
  ScratchDir scratch;
  Layers layers = make_layers(scratch);
  const fs::path target = fs::canonical(layers.target);
  const fs::path later = scratch / "later";  // the "host" mounts here after the mount is up
  fs::create_directory(later);
  // The "host" is a child with a namespace of its own whose mounts are all shared, as on a systemd
  // machine (this test's own root mount may be private, which would hide a missing MS_SLAVE); a
  // grandchild enters from there and mounts.
  auto report = run_in_child([&](Checkpoint&) -> std::string {
    if (::unshare(CLONE_NEWNS) != 0) return "unshare(CLONE_NEWNS): " + errno_text(errno);
    // Private first: cut from the real host's peer groups (where / may be shared), so our own
    // "host" mounts below cannot reach the test process; then shared among our copies only.
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
      return "make / private: " + errno_text(errno);
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_SHARED, nullptr) != 0)
      return "make / shared: " + errno_text(errno);
    Findings host;
    auto inner = run_in_child(
        [&](Checkpoint& checkpoint) -> std::string {
          Findings f;
          if (auto e = mount_and_check(layers, f); !e.empty()) return e;
          checkpoint.reached();
          f.expect(is_mount_point(later), "a host mount made after entering does not show");
          return f.text();
        },
        [&] {
          host.expect(!is_mount_point(target), "the overlay propagated to the host");
          host.expect(!mountinfo_lists(target), "the host's mountinfo lists the overlay");
          host.expect(::mount("tmpfs", later.c_str(), "tmpfs", 0, "size=4k") == 0,
                      "host mount at " + later.string() + ": " + errno_text(errno));
        });
    host.expect(inner.ok(), "in the private namespace: " + inner.message);
    return host.text();
  });
  check_child(report);
  CHECK_FALSE(is_mount_point(target));
  CHECK_FALSE(is_mount_point(later));
}

TEST_CASE("rootless: nobody mounts readable layers in a user namespace of its own") {
  if (::geteuid() != 0) {
    MESSAGE("not root: cannot drop to nobody; skipped");
    return;
  }
  ScratchDir scratch;
  Layers layers = make_layers(scratch);
  auto report = run_in_child([&](Checkpoint&) -> std::string {
    if (auto e = drop_to_nobody(); !e.empty()) return e;
    if (::access(layers.dirs[0].c_str(), R_OK | X_OK) != 0)
      return "nobody cannot read " + layers.dirs[0].string() + ": is $TMPDIR traversable?";
    Findings f;
    if (auto e = mount_and_check(layers, f); !e.empty()) return e;
    // Mapped to itself: nobody is still nobody inside.
    f.expect(::getuid() == k_nobody && ::geteuid() == k_nobody,
             "uid in the namespace: " + std::to_string(::getuid()));
    f.expect(::getgid() == k_nogroup, "gid in the namespace: " + std::to_string(::getgid()));
    return f.text();
  });
  check_child(report);
  CHECK_FALSE(is_mount_point(layers.target));
  CHECK(fs::is_empty(layers.target));
}

TEST_CASE("a non-root process running threads cannot enter: failed_precondition naming threads") {
  if (::geteuid() != 0) {
    MESSAGE("not root: cannot drop to nobody; skipped");
    return;
  }
  auto report = run_in_child([](Checkpoint&) -> std::string {
    if (auto e = drop_to_nobody(); !e.empty()) return e;
    int gate[2];
    if (::pipe2(gate, O_CLOEXEC) != 0) return "pipe: " + errno_text(errno);
    // A second thread, alive (blocked on the pipe) while entering is tried.
    std::thread waiting([fd = gate[0]] {
      char c;
      (void)!::read(fd, &c, 1);
    });
    auto r = enter_private_mount_namespace();
    ::close(gate[1]);
    waiting.join();
    Findings f;
    f.expect(!r, "entered although a second thread was running");
    if (!r) {
      f.expect(r.error().code() == ErrorCode::failed_precondition,
               "code: " + std::string(to_string(r.error().code())));
      f.expect(r.error().message().find("thread") != std::string::npos,
               "message does not mention threads: " + r.error().message());
    }
    f.expect(!in_private_mount_namespace(), "in_private_mount_namespace() after a failure");
    return f.text();
  });
  check_child(report);
}

TEST_CASE("mount_overlay: a missing layer is not_found naming it; too many layers do not fit") {
  ScratchDir scratch;
  Layers layers = make_layers(scratch);
  // 400 layers: 400 "/proc/self/fd/N" names overflow the one page mount(2) takes.
  std::vector<fs::path> many;
  for (int i = 0; i < 400; ++i) {
    many.push_back(scratch / "many" / std::to_string(i));
    fs::create_directories(many.back());
  }
  auto report = run_in_child([&](Checkpoint&) -> std::string {
    if (auto e = enter(); !e.empty()) return e;
    Findings f;
    const std::size_t fds_before = open_fd_count();
    // Lowest: opened last (top first), after the others were opened, which must be closed again.
    std::vector<fs::path> with_missing = layers.dirs;
    with_missing.insert(with_missing.begin(), scratch / "no-such-layer");
    auto missing = mount_overlay(with_missing, layers.target);
    f.expect(!missing, "mounted with a missing layer");
    if (!missing) {
      f.expect(missing.error().code() == ErrorCode::not_found,
               "missing layer code: " + std::string(to_string(missing.error().code())));
      f.expect(
          missing.error().message().find((scratch / "no-such-layer").string()) != std::string::npos,
          "missing layer message does not name it: " + missing.error().message());
    }
    auto too_many = mount_overlay(many, layers.target);
    f.expect(!too_many, "mounted 400 layers");
    if (!too_many) {
      f.expect(too_many.error().code() == ErrorCode::failed_precondition,
               "400 layers code: " + std::string(to_string(too_many.error().code())));
      f.expect(too_many.error().message().find("400 layers do not fit") != std::string::npos,
               "400 layers message: " + too_many.error().message());
    }
    f.expect(open_fd_count() == fds_before, "layer descriptors left open after the failures");
    f.expect(!is_mount_point(layers.target), "the target was mounted after the failures");
    return f.text();
  });
  check_child(report);
}

TEST_CASE("mount_overlay: a repeated layer counts at its highest place; one layer is refused") {
  ScratchDir scratch;
  Layers layers = make_layers(scratch);
  auto report = run_in_child([&](Checkpoint&) -> std::string {
    if (auto e = enter(); !e.empty()) return e;
    Findings f;
    // l0 l2 l1 l2: the lower l2 adds nothing the upper one does not show, so the view is that of
    // l0 l1 l2 (which the kernel would refuse as a repeated lower directory).
    auto repeated = layers;
    repeated.dirs = {layers.dirs[0], layers.dirs[2], layers.dirs[1], layers.dirs[2]};
    auto mounted = mount_overlay(repeated.dirs, repeated.target);
    if (!mounted) return "mount_overlay with a repeated layer: " + mounted.error().message();
    check_merged_view(repeated.target, f);
    detach_mount(repeated.target);
    for (const auto& one : {std::vector<fs::path>{layers.dirs[1]},
                            std::vector<fs::path>{layers.dirs[1], layers.dirs[1]}}) {
      auto single = mount_overlay(one, layers.target);
      f.expect(!single, "mounted a single distinct layer");
      if (!single)
        f.expect(single.error().code() == ErrorCode::failed_precondition &&
                     single.error().message().find("two") != std::string::npos,
                 "single layer: " + single.error().message());
    }
    f.expect(!is_mount_point(layers.target), "the target was mounted by a refused call");
    return f.text();
  });
  check_child(report);
}

TEST_CASE("mount_overlay: 200 layers fit in one mount, the top one winning") {
  ScratchDir scratch;
  std::vector<fs::path> layers;
  for (int i = 0; i < 200; ++i) {
    layers.push_back(scratch / "layers" / std::to_string(i));
    write_file(layers.back() / ("only-" + std::to_string(i)), std::to_string(i));
    write_file(layers.back() / "top", std::to_string(i));
  }
  const fs::path target = scratch / "merged";
  fs::create_directory(target);
  auto report = run_in_child([&](Checkpoint&) -> std::string {
    if (auto e = enter(); !e.empty()) return e;
    auto mounted = mount_overlay(layers, target);
    if (!mounted) return "mount_overlay of 200 layers: " + mounted.error().message();
    Findings f;
    f.expect(slurp(target / "top") == "199", "top: " + slurp(target / "top"));
    f.expect(slurp(target / "only-0") == "0", "only-0: " + slurp(target / "only-0"));
    f.expect(slurp(target / "only-137") == "137", "only-137: " + slurp(target / "only-137"));
    return f.text();
  });
  check_child(report);
  CHECK(fs::is_empty(target));
}

TEST_CASE("detach_mount: harmless where nothing is mounted, unmounts a mounted target") {
  ScratchDir scratch;
  Layers layers = make_layers(scratch);
  write_file(scratch / "plain" / "kept", "kept");
  auto report = run_in_child([&](Checkpoint&) -> std::string {
    if (auto e = enter(); !e.empty()) return e;
    Findings f;
    detach_mount(scratch / "plain");  // not a mount point
    f.expect(slurp(scratch / "plain" / "kept") == "kept", "a plain directory lost its file");
    auto mounted = mount_overlay(layers.dirs, layers.target);
    if (!mounted) return "mount_overlay: " + mounted.error().message();
    detach_mount(layers.target / "shared");  // inside the mount, not its root
    f.expect(is_mount_point(layers.target), "detaching a subdirectory unmounted the target");
    f.expect(slurp(layers.target / "shared" / "a") == "a from l0", "shared/a gone after detach");
    detach_mount(layers.target);
    f.expect(!is_mount_point(layers.target), "still a mount point after detach_mount");
    f.expect(fs::is_empty(layers.target), "the target is not the empty directory again");
    detach_mount(layers.target);  // twice: nothing left to detach, still harmless
    f.expect(fs::is_directory(layers.target), "the target went away");
    return f.text();
  });
  check_child(report);
  CHECK(test::read_file(scratch / "plain" / "kept") == "kept");
}

}  // namespace
}  // namespace envd::node
